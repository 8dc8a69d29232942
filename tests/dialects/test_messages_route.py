"""``POST /v1/messages`` as a route: its heartbeat, its refusals in Anthropic's shape, and a slow reader's coalesced blocks."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import anyio
import httpx
import pytest

from app.mock import MockModel
from app.streaming.sse import SSEParser
from tests.dialects.messages import reassembled
from tests.rawhttp import Response, open_post, read_until
from tests.servers import mock_server, relay_server
from tests.sse import post_stream

TOKENS = 40_000
ASK: Any = {"model": "mock", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


async def test_the_heartbeat_is_a_ping_event_and_the_stream_stays_well_formed(client: httpx.AsyncClient) -> None:
    with mock_server(ttft=0.5, interval=0.001, tokens=4) as (_, upstream), relay_server(upstream, heartbeat_interval=0.1) as url:
        response, events = await post_stream(client, url + "/v1/messages", ASK | {"stream": True})
    assert response.status_code == 200
    assert "ping" in [event.event for event in events]
    assert reassembled(events)["message"]["stop_reason"] == "end_turn"


@pytest.mark.parametrize("protocol", ["tgi", "ollama"])
async def test_an_image_for_a_protocol_that_takes_none_is_refused_before_the_model_server(protocol: str, client: httpx.AsyncClient) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    body = ASK | {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "what is it?"}]}]}
    with mock_server(ttft=0.0) as (model, upstream), relay_server(upstream.removesuffix("/v1"), protocol=protocol) as url:
        response = await client.post(url + "/v1/messages", json=body)
        text_only = await client.post(url + "/v1/messages", json=ASK)
        assert model.requests == 1, "only the request without an image reached the model server"
    assert response.status_code == 400 and text_only.status_code == 200
    assert response.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": f"images cannot go to the model 'mock': its model server speaks {protocol}",
        "code": "invalid_request", "param": "$.messages",
    }}


async def test_refusals_take_the_shape_of_the_paths_dialect(client: httpx.AsyncClient) -> None:
    with mock_server() as (_, upstream), relay_server(upstream, api_keys=("sk-a",), max_body_bytes=2000) as url:
        messages = await client.post(url + "/v1/messages", json=ASK)
        chat = await client.post(url + "/v1/chat/completions", json={"model": "mock", "messages": ASK["messages"]})
        large = await client.post(url + "/v1/messages", json=ASK | {"system": "x" * 3000}, headers={"x-api-key": "sk-a"})
    assert messages.status_code == chat.status_code == 401
    assert messages.json()["type"] == "error" and messages.json()["error"]["type"] == "authentication_error"
    assert chat.json()["error"]["code"] == "invalid_api_key" and "type" not in chat.json()
    assert large.status_code == 413 and large.json()["error"]["type"] == "request_too_large"


async def test_a_request_the_translation_refuses_is_a_400_in_anthropics_shape(client: httpx.AsyncClient) -> None:
    with mock_server() as (model, upstream), relay_server(upstream) as url:
        response = await client.post(url + "/v1/messages", json=ASK | {"tools": [{"name": "web_search", "type": "web_search_20250305"}]})
        assert model.requests == 0
    assert response.status_code == 400
    assert response.json()["error"] | {"message": ""} == {"type": "invalid_request_error", "message": "", "code": "invalid_request",
                                                          "param": "$.tools[0].type"}


@pytest.mark.parametrize(("fault", "error"), [("http-500", anthropic.InternalServerError), ("http-429", anthropic.RateLimitError)])
def test_an_upstream_failure_before_anything_is_an_anthropic_status(fault: str, error: type[anthropic.APIStatusError]) -> None:
    with mock_server() as (_, upstream), relay_server(upstream) as url, anthropic.Anthropic(base_url=url, api_key="k", max_retries=0) as sdk:
        with pytest.raises(error) as raised:
            sdk.messages.create(**ASK | {"model": f"mock-fault-{fault}"})
    body: Any = raised.value.body
    assert body["type"] == "error" and body["error"]["code"] == f"upstream_status_{fault[5:]}"


async def test_a_lagging_reader_gets_fewer_larger_deltas_in_well_formed_blocks(mock_for_lag: tuple[MockModel, str]) -> None:
    _, url = mock_for_lag
    """Reasoning, then two parallel calls whose fragments the mock interleaves."""
    body = {"model": "mock-reasoning", "max_tokens": TOKENS, "stream": True, "messages": [{"role": "user", "content": "lag"}],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}
    with anyio.fail_after(60):
        stream = await open_post(url, "/v1/messages", body, receive_buffer=262_144)
        response = Response()
        await read_until(stream, response, body_contains=b"content_block_delta")
        await anyio.sleep(1.0)  # the reader falls behind while the model keeps writing
        await read_until(stream, response)
        await stream.aclose()
        async with httpx.AsyncClient(timeout=30) as http:
            whole = (await http.post(url + "/v1/messages", json=body | {"stream": False})).json()
    events = SSEParser().feed(bytes(response.body))
    answer = reassembled(events)
    assert [block["type"] for block in answer["content"]] == ["thinking", "tool_use", "tool_use"]
    assert answer["content"] == whole["content"]
    assert sum(event.event == "content_block_delta" for event in events) < TOKENS / 2, "deltas were not coalesced"
    assert json.loads(events[-2].data)["delta"]["stop_reason"] == "tool_use"


@pytest.fixture
def mock_for_lag() -> Any:
    with mock_server(ttft=0.0, interval=0.0, tokens=TOKENS) as (model, upstream), \
            relay_server(upstream, slow_consumer_lag_bytes=50_000_000, max_tokens_limit=TOKENS, max_collected_bytes=50_000_000) as url:
        yield model, url
