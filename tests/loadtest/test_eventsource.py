"""GET EventSource URLs: native events, plain data lines, and streams that just stop."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.loadtest.stream import ERROR, NO_TERMINAL, OK
from app.types import Receive, Scope, Send
from tests.loadtest.conftest import load
from tests.servers import serve_in_thread

BODIES = {
    "/native": b'id: 1\nevent: token\ndata: {"text": "a"}\n\nid: 2\nevent: token\ndata: {"text": "b"}\n\n'
               b': ping\n\nid: 3\nevent: done\ndata: {"finish_reason": "stop", "usage": {"completion_tokens": 2}}\n\n',
    "/plain": b"data: one\r\n\r\ndata: two\r\n\r\ndata: [DONE]\r\n\r\n",
    "/error": b'event: token\ndata: {"text": "a"}\n\nevent: error\ndata: {"type": "upstream_error", "code": "x"}\n\n',
    "/endless": b"data: one\n\ndata: two\n\n",
}


async def sse_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers GET with a fixed SSE body, split into small chunks anywhere, and records the request."""
    assert scope["type"] == "http"
    headers = dict(scope["headers"])
    if scope["method"] != "GET" or headers.get(b"accept") != b"text/event-stream":
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = BODIES[scope["path"]]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(0, len(body), 7):
        await send({"type": "http.response.body", "body": body[i : i + 7], "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def sse_url() -> Iterator[str]:
    with serve_in_thread(sse_app, lifespan="off") as url:
        yield url


async def test_native_events_on_get_are_read_with_their_usage(sse_url: str) -> None:
    runner = await load(sse_url + "/native")
    assert {r["outcome"] for r in runner.records} == {OK}
    assert runner.content_events == 3 * 2
    assert runner.tokens == 3 * 2
    assert runner.events == 3 * 3  # the comment is not an event


async def test_plain_data_lines_are_content_and_done_ends_them(sse_url: str) -> None:
    runner = await load(sse_url + "/plain")
    assert {r["outcome"] for r in runner.records} == {OK}
    assert runner.content_events == 3 * 2


async def test_an_error_event_on_get_is_a_failure(sse_url: str) -> None:
    runner = await load(sse_url + "/error")
    assert {r["outcome"] for r in runner.records} == {ERROR}


async def test_a_get_stream_that_ends_without_a_terminal_event_is_a_failure(sse_url: str) -> None:
    runner = await load(sse_url + "/endless")
    assert {r["outcome"] for r in runner.records} == {NO_TERMINAL}
    assert runner.content_events == 3 * 2


async def test_many_eventsource_readers_of_one_resumable_stream_of_the_relay_are_ok(relay: str) -> None:
    """GET the relay's events URL of one resumable stream with several readers at once: each reads it all, replay included."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        response = await client.post(relay + "/v1/streams", json={"prompt": "hello", "max_tokens": 12})
    assert response.status_code == 201, response.text
    events_url = response.json()["events_url"]
    url = events_url if events_url.startswith("http") else relay + events_url
    runner = await load(url, streams=4)
    assert all(target.api == "eventsource" and target.method == "GET" for target in runner.targets)
    assert {r["outcome"] for r in runner.records} == {OK}
    assert [r["tokens"] for r in runner.records] == [12] * 4  # from each reader's done event
    assert all(r["content_events"] >= 1 for r in runner.records)  # a replay may come coalesced into fewer events
