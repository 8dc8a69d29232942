"""A body nested deeper than the relay decodes is refused with a 400, wherever the nesting sits."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.mock import MockModel
from app.routes.http import MAX_JSON_DEPTH
from tests.servers import relay_server


@pytest.fixture(scope="module")
def relay(mock: tuple[MockModel, str]) -> Iterator[tuple[MockModel, str]]:
    with relay_server(mock[1], models=("mock",), stream_secret="s" * 32) as url:
        yield mock[0], url


def _nested(depth: int) -> str:
    """A JSON value ``depth`` levels deep, alternating arrays and objects."""
    opening = "".join('{"k":' if level % 2 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 else "]" for level in reversed(range(depth)))
    return opening + "1" + closing


# Where a free-form value may sit in a request, with the depth the rest of the body adds around it.
PLACES = {
    "content part": ('{"model":"mock","messages":[{"role":"user","content":[{"type":"text","text":"hi","x":%s}]}]}', 5),
    "message field": ('{"model":"mock","messages":[{"role":"user","content":"hi","name":%s}]}', 3),
    "extra parameter": ('{"model":"mock","messages":[{"role":"user","content":"hi"}],"metadata":%s}', 1),
    "tools": ('{"model":"mock","stream":true,"messages":[{"role":"user","content":"hi"}],"tools":%s}', 1),
    "the whole body": ("%s", 0),
}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/streams"])
@pytest.mark.parametrize("place", list(PLACES))
async def test_a_body_a_thousand_levels_deep_is_a_400(relay: tuple[MockModel, str], client: httpx.AsyncClient, path: str, place: str) -> None:
    model, url = relay
    before = model.requests
    template, _ = PLACES[place]
    response = await client.post(url + path, content=(template % _nested(1000)).encode())
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("too_deeply_nested", "invalid_request_error")
    assert str(MAX_JSON_DEPTH) in error["message"]
    assert model.requests == before


@pytest.mark.parametrize("place", [place for place in PLACES if place != "the whole body"])
async def test_the_depth_limit_counts_the_whole_body(relay: tuple[MockModel, str], client: httpx.AsyncClient, place: str) -> None:
    _, url = relay
    template, around = PLACES[place]
    deepest = (template % _nested(MAX_JSON_DEPTH - around)).encode()
    accepted = await client.post(url + "/v1/chat/completions", content=deepest.replace(b'"stream":true,', b""))
    assert accepted.status_code == 200, accepted.text
    refused = await client.post(url + "/v1/chat/completions", content=(template % _nested(MAX_JSON_DEPTH - around + 1)).encode())
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "too_deeply_nested")


async def test_a_deep_native_body_is_a_clear_error_too(relay: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    _, url = relay
    deep = _nested(1000)
    for body in (deep, '{"prompt":' + deep + "}", '{"prompt":"x","model":' + deep + "}"):
        response = await client.post(url + "/v1/generate", content=body.encode())
        assert 400 <= response.status_code < 500
        assert response.json()["error"]["type"] == "invalid_request_error"
