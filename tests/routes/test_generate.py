"""POST /v1/generate: the native API, streamed as token/done/error events with ids, or as JSON."""

from __future__ import annotations

import httpx

from app.mock import mock_text
from tests.servers import under_every_server
from tests.sse import data, post_stream
from tests.usage import mock_usage


@under_every_server
async def test_streams_tokens_then_one_done_event_each_with_an_id(relay_url: str, client: httpx.AsyncClient) -> None:
    response, events = await post_stream(client, relay_url + "/v1/generate", {"prompt": "tell me", "max_tokens": 10, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert [e.event for e in events] == ["token"] * (len(events) - 1) + ["done"]
    assert "".join(data(e)["text"] for e in events[:-1]) == "".join(mock_text("tell me", 10))
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    done = data(events[-1])
    assert done["finish_reason"] == "length"
    assert done["usage"] == mock_usage(2, 10)


async def test_natural_end_finishes_with_stop(relay_url: str, client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, relay_url + "/v1/generate", {"prompt": "short", "stream": True})
    assert data(events[-1])["finish_reason"] == "stop"
    assert "".join(data(e)["text"] for e in events[:-1]) == "".join(mock_text("short", 16))


@under_every_server
async def test_non_streaming_answers_json(relay_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(relay_url + "/v1/generate", json={"prompt": "tell me", "max_tokens": 5})
    assert response.status_code == 200
    assert response.json() == {
        "output": "".join(mock_text("tell me", 5)),
        "tokens_used": 7,
        "finish_reason": "length",
        "usage": mock_usage(2, 5),
        "reasoning": None, "refusal": None, "tool_calls": [], "logprobs": None,
    }


async def test_request_id_is_echoed_and_forwarded(mock: tuple, relay_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(relay_url + "/v1/generate", json={"prompt": "x", "max_tokens": 1}, headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


async def test_upstream_error_without_stream_is_a_502_with_the_error(relay_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(relay_url + "/v1/generate", json={"prompt": "x", "model": "mock-fault-http-500"})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_status_500"
    assert error["type"] == "upstream_error"
