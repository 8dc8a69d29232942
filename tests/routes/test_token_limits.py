"""RELAY_MAX_TOKENS_LIMIT bounds every field that sets a generation's length, under any name, on every protocol.

A chat request's unknown fields go to the model server as sent, and model servers read the
length under many names (OpenAI ``max_tokens`` and ``max_completion_tokens``, TGI
``max_new_tokens``, llama.cpp ``n_predict``, Ollama ``num_predict``…). Each is bounded, or
refused; what the model server receives never asks for more than the limit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from app.mock import MockModel
from app.settings import PROTOCOLS
from tests.servers import mock_server, relay_server

LIMIT = 100
# Every name under which a model server reads a generation's length (a floor, for min_tokens).
LENGTH_NAMES = frozenset({"max_tokens", "max_completion_tokens", "max_new_tokens", "max_output_tokens", "n_predict", "num_predict", "min_tokens"})
OVER = 10_000_000


@pytest.fixture(scope="module")
def relay() -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.0, tokens=4) as (model, base):
        upstreams = [{"name": protocol, "protocol": protocol, "base_url": base} for protocol in PROTOCOLS]
        routes = {f"m-{protocol}": [protocol] for protocol in PROTOCOLS}
        with relay_server(None, upstreams=upstreams, routes=routes, max_tokens_limit=LIMIT, stream_secret="s" * 32) as url:
            yield model, url


def _chat(protocol: str = "openai", **fields: Any) -> dict[str, Any]:
    return {"model": f"m-{protocol}", "messages": [{"role": "user", "content": "hello"}], **fields}


async def _received_lengths(model: MockModel, url: str, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Send a chat request; the length fields of what the model server received for it, by path."""
    request_id = uuid.uuid4().hex
    response = await client.post(url + "/v1/chat/completions", json=body, headers={"x-request-id": request_id})
    assert response.status_code == 200, response.text
    received = model.body_of(request_id)
    assert received is not None
    return dict(_lengths(msgspec.json.decode(received)))


def _lengths(value: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    """Every length field anywhere in a JSON value, by its path."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in LENGTH_NAMES or key == "best_of":
                yield f"{path}.{key}", inner
            yield from _lengths(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _lengths(inner, f"{path}[{index}]")


REFUSED = [
    ({"max_completion_tokens": 1, "max_tokens": OVER}, "max_tokens_too_large", "$.max_tokens"),
    ({"max_tokens": 1, "max_completion_tokens": OVER}, "max_tokens_too_large", "$.max_completion_tokens"),
    ({"max_new_tokens": OVER}, "max_tokens_too_large", "$.max_new_tokens"),
    ({"max_output_tokens": OVER}, "max_tokens_too_large", "$.max_output_tokens"),
    ({"n_predict": OVER}, "max_tokens_too_large", "$.n_predict"),
    ({"num_predict": OVER}, "max_tokens_too_large", "$.num_predict"),
    ({"min_tokens": OVER}, "max_tokens_too_large", "$.min_tokens"),
    ({"max_tokens": 5, "options": {"num_predict": OVER}}, "max_tokens_too_large", "$.options.num_predict"),
    ({"parameters": {"max_new_tokens": OVER}}, "max_tokens_too_large", "$.parameters.max_new_tokens"),
    ({"n_predict": -1}, "invalid_request", "$.n_predict"),  # llama.cpp: no limit
    ({"num_predict": -2}, "invalid_request", "$.num_predict"),  # Ollama: fill the context
    ({"options": {"num_predict": -1}}, "invalid_request", "$.options.num_predict"),
    ({"num_predict": str(OVER)}, "invalid_request", "$.num_predict"),  # some servers read a numeric string as a number
    ({"max_new_tokens": float(OVER)}, "invalid_request", "$.max_new_tokens"),
    ({"max_tokens": True}, "invalid_request", "$.max_tokens"),
    ({"options": "num_predict=10000000"}, "invalid_request", "$.options"),
    ({"best_of": 4}, "invalid_request", "$.best_of"),  # best_of candidates, each as long as the limit
    ({"n": 129}, "invalid_request", "$.n"),  # choices, each as long as the limit: OpenAI's own bound
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/streams"])
@pytest.mark.parametrize(("fields", "code", "param"), REFUSED)
async def test_a_length_over_the_limit_is_refused_with_its_field_named(
    relay: tuple[MockModel, str], client: httpx.AsyncClient, path: str, fields: dict[str, Any], code: str, param: str,
) -> None:
    model, url = relay
    before = model.requests
    response = await client.post(url + path, json=_chat(**fields))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert model.requests == before


ACCEPTED = [
    {},
    {"max_tokens": LIMIT},
    {"max_completion_tokens": LIMIT, "max_tokens": 3},
    {"max_tokens": None, "max_completion_tokens": None},
    {
        "n_predict": LIMIT, "num_predict": 30, "max_new_tokens": 20, "max_output_tokens": 10, "min_tokens": 0, "best_of": 1,
        "options": {"num_predict": LIMIT, "num_ctx": 4096}, "parameters": {"max_new_tokens": LIMIT},
    },
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("fields", ACCEPTED)
async def test_what_the_model_server_receives_never_asks_for_more_than_the_limit(
    relay: tuple[MockModel, str], client: httpx.AsyncClient, protocol: str, fields: dict[str, Any],
) -> None:
    lengths = await _received_lengths(*relay, client, _chat(protocol, **fields))
    assert all(value is None or value <= LIMIT for value in lengths.values()), lengths
    assert lengths.get("$.best_of", 1) == 1
    if protocol != "openai":  # a translated request carries one length at most: the smallest the client gave
        assert len(lengths) <= 1, lengths
    if protocol in ("ollama", "anthropic"):  # Ollama would generate without end, Anthropic requires one
        assert len(lengths) == 1 and None not in lengths.values(), lengths


async def test_the_native_api_takes_only_max_tokens(relay: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    _, url = relay
    over = await client.post(url + "/v1/generate", json={"prompt": "x", "max_tokens": LIMIT + 1})
    alias = await client.post(url + "/v1/generate", json={"prompt": "x", "n_predict": 1})
    assert (over.status_code, over.json()["error"]["code"], over.json()["error"]["param"]) == (422, "max_tokens_too_large", "$.max_tokens")
    assert (alias.status_code, alias.json()["error"]["param"]) == (422, "$.n_predict")


@pytest.mark.parametrize(("protocol", "fields", "asked"), [
    *((protocol, {"max_tokens": 50, "n_predict": 7, "options": {"num_predict": 30}}, 7) for protocol in ("tgi", "ollama", "anthropic")),
    ("ollama", {}, LIMIT),  # not Ollama's default, which is to generate until the model stops
    ("anthropic", {}, LIMIT),  # not the adapter's 4096, which is over this relay's limit
])
async def test_a_translated_request_asks_for_the_smallest_length_given_or_the_limit(
    relay: tuple[MockModel, str], client: httpx.AsyncClient, protocol: str, fields: dict[str, Any], asked: int,
) -> None:
    assert list((await _received_lengths(*relay, client, _chat(protocol, **fields))).values()) == [asked]
