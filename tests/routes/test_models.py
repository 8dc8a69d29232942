"""``GET /v1/models`` and ``/v1/models/{id}``: the configured names, else the upstream's own list, read by the OpenAI SDK."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest

from app.catalog import MAX_LIST_BYTES
from app.mock import MODELS, MockModel, mock_text
from app.types import Receive, Scope, Send
from tests.servers import relay_server, serve_in_thread


class ListingUpstream:
    """A model server that answers ``GET …/models`` with ``body`` (``None``: never) and counts the questions."""

    def __init__(self, status: int = 200, body: bytes | None = b'{"object":"list","data":[{"id":"served-a"},{"id":"served-b"}]}') -> None:
        self.status = status
        self.body = body
        self.asked = 0
        self.heard: list[tuple[str, dict[str, str]]] = []  # each question's path and headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.asked += 1
        self.heard.append((scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else ""),
                           {name.decode(): value.decode() for name, value in scope["headers"]}))
        if self.body is None:
            await anyio.sleep_forever()
        assert self.body is not None
        await send({"type": "http.response.start", "status": self.status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": self.body})

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        with serve_in_thread(self, lifespan="off") as url:
            yield url + "/v1"


async def _get(url: str) -> httpx.Response:
    with anyio.fail_after(15):
        async with httpx.AsyncClient() as client:
            return await client.get(url)


def _sdk_list(base_url: str) -> list[Any]:
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=10) as client:
        return list(client.models.list())


def _sdk_retrieve(base_url: str, model: str) -> Any:
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=10) as client:
        return client.models.retrieve(model)


async def test_with_the_embedded_mock_the_sdk_lists_and_retrieves_the_mocks_names() -> None:
    with relay_server(None, mock_ttft=0) as url:
        with anyio.fail_after(20):
            listed = await anyio.to_thread.run_sync(_sdk_list, url + "/v1")
            retrieved = await anyio.to_thread.run_sync(_sdk_retrieve, url + "/v1", "mock-reasoning")
            with pytest.raises(openai.NotFoundError):
                await anyio.to_thread.run_sync(_sdk_retrieve, url + "/v1", "no-such-model")
    assert [model.id for model in listed] == list(MODELS)
    assert all(model.object == "model" and model.owned_by == "token-relay" and model.created > 0 for model in listed)
    assert (retrieved.id, retrieved.object) == ("mock-reasoning", "model")


async def test_routes_and_relay_models_are_listed_with_the_default_first(mock: tuple[MockModel, str]) -> None:
    with relay_server(mock[1], models=("small", "large"), default_model="large", routes={"org/fast": ("default:mock",)}) as url:
        listed = (await _get(url + "/v1/models")).json()
        slashed = await _get(url + "/v1/models/org/fast")
        with anyio.fail_after(15):
            retrieved = await anyio.to_thread.run_sync(_sdk_retrieve, url + "/v1", "org/fast")
    assert retrieved.id == "org/fast"
    assert listed["object"] == "list"
    assert [entry["id"] for entry in listed["data"]] == ["large", "org/fast", "small"]
    assert slashed.status_code == 200 and slashed.json()["id"] == "org/fast"


@pytest.mark.parametrize(("protocol", "expected"), [
    ("openai", list(MODELS)), ("ollama", list(MODELS)), ("anthropic", list(MODELS)), ("tgi", [MODELS[0]]),
])
async def test_with_no_names_configured_the_single_upstreams_own_list_is_asked(mock: tuple[MockModel, str], protocol: str, expected: list[str]) -> None:
    base = mock[1] if protocol == "openai" else mock[1].removesuffix("/v1")
    with relay_server(base, protocol=protocol) as url:
        listed = await anyio.to_thread.run_sync(_sdk_list, url + "/v1")
    assert [model.id for model in listed] == expected


async def test_the_upstreams_list_is_kept_for_a_while_and_passes_its_fields_on() -> None:
    upstream = ListingUpstream(body=b'{"object":"list","data":[{"id":"served-a","created":1700000000,"owned_by":"lab"},{"id":"served-b"}]}')
    with upstream.serving() as base, relay_server(base) as url:
        first = (await _get(url + "/v1/models")).json()
        second = (await _get(url + "/v1/models")).json()
        one = (await _get(url + "/v1/models/served-a")).json()
    assert second == first and upstream.asked == 1
    assert first["data"][0] == {"id": "served-a", "created": 1700000000, "owned_by": "lab", "object": "model"}
    assert first["data"][1]["owned_by"] == "default"
    assert one == first["data"][0]


@pytest.mark.parametrize(("protocol", "path", "sent"), [
    ("openai", "/v1/models", {"authorization": "Bearer sk-up"}),
    ("anthropic", "/v1/models?limit=1000", {"x-api-key": "sk-up", "anthropic-version": "2023-06-01"}),
])
async def test_the_upstreams_list_is_asked_with_its_key_as_its_protocol_sends_it(protocol: str, path: str, sent: dict[str, str]) -> None:
    upstream = ListingUpstream()
    with upstream.serving() as base, relay_server(base, protocol=protocol, upstream_api_key="sk-up") as url:
        listed = await _get(url + "/v1/models")
    assert [entry["id"] for entry in listed.json()["data"]] == ["served-a", "served-b"]
    [(asked, headers)] = upstream.heard
    assert asked == path and sent.items() <= headers.items()


@pytest.mark.parametrize(("upstream", "reason"), [
    (ListingUpstream(status=401, body=b'{"error":{"message":"no key"}}'), "it answered HTTP 401"),
    (ListingUpstream(body=b'{"object":"list","data":[]}'), "its answer names no model"),
    (ListingUpstream(body=b"<html>"), "its answer is not JSON"),
    (ListingUpstream(body=b"[" + b" " * MAX_LIST_BYTES + b"]"), f"the answer is over {MAX_LIST_BYTES} bytes"),
    (ListingUpstream(body=None), "no whole answer within 0.5 s"),
], ids=["status", "empty", "not-json", "too-large", "stalled"])
async def test_a_failed_upstream_list_is_a_502_that_says_why_and_what_to_set(upstream: ListingUpstream, reason: str) -> None:
    with upstream.serving() as base, relay_server(base, first_token_timeout=0.5) as url:
        listed = await _get(url + "/v1/models")
        again = await _get(url + "/v1/models")  # within the failure's short cache: not asked again
        generated = await _get_generated(url)
    assert listed.status_code == 502
    error = listed.json()["error"]
    assert error["code"] == "upstream_models_unavailable"
    assert reason in error["message"] and "GET /v1/models on upstream 'default'" in error["message"] and "RELAY_MODELS" in error["message"]
    assert again.json() == listed.json() and upstream.asked == 1
    assert generated.status_code == 422
    assert "RELAY_DEFAULT_MODEL" in generated.json()["error"]["message"]


async def _get_generated(url: str) -> httpx.Response:
    with anyio.fail_after(15):
        async with httpx.AsyncClient() as client:
            return await client.post(url + "/v1/generate", json={"prompt": "hi", "max_tokens": 2})


async def test_with_no_default_model_generate_uses_the_upstreams_first(mock: tuple[MockModel, str]) -> None:
    model, base = mock
    with relay_server(base) as url:
        with anyio.fail_after(15):
            async with httpx.AsyncClient() as client:
                answered = await client.post(url + "/v1/generate", json={"prompt": "which model", "max_tokens": 3}, headers={"x-request-id": "first-model"})
                created = await client.post(url + "/v1/streams", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert answered.status_code == 200, answered.text
    assert answered.json()["output"] == "".join(mock_text("which model", 3))
    assert b'"model":"mock"' in (model.body_of("first-model") or b"")
    assert created.status_code == 201, created.text


async def test_readyz_counts_requests_in_flight_as_an_int(mock: tuple[MockModel, str]) -> None:
    with relay_server(mock[1], default_model="mock") as url:
        ready = (await _get(url + "/readyz")).json()
    assert ready["in_flight"] == 0 and type(ready["in_flight"]) is int


async def test_an_unknown_v1_path_names_the_model_endpoints(mock: tuple[MockModel, str]) -> None:
    with relay_server(mock[1], default_model="mock") as url:
        error = (await _get(url + "/v1/model")).json()["error"]
    assert "GET /v1/models," in error["message"] and "GET /v1/models/{model}," in error["message"]
