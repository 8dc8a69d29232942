"""The fast HTTP/1.1 client against httpx, its reference: fed the same hostile responses, they give the same events and outcomes.

Each case is one scripted answer of a raw TCP model server (tests/hostile.py) to a chat
stream request, read through the OpenAI adapter's handler over each transport. An outcome is
what the request raised, or the events the handler emitted (errors by type, code and phase:
the messages quote each client's own words). Where the two legitimately differ (httpx's own
limits, which app/streaming/upstreams/httpx_transport.py lists), the case says what each gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

from app.errors import UpstreamError
from app.streaming.events import Error, Event, Finish
from app.streaming.upstreams.adapters import ADAPTERS
from app.streaming.upstreams.http1 import MAX_HEAD_BYTES, MAX_HEADERS, Client, Origin
from app.streaming.upstreams.httpx_transport import HttpxTransport
from app.streaming.upstreams.transport import Transport
from tests.hostile import LAST_CHUNK, Conn, HostileUpstream, chunk, chunked_head, chunked_response, sse

TEXT = sse("one ", "two")
READ = [("delta", "one "), ("delta", "two"), ("finish", "stop")]
UNDONE = sse("one ", done=False)
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
BIG_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Big: %b\r\nTransfer-Encoding: chunked\r\n\r\n"
MANY_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + b"X-A: b\r\n" * (MAX_HEADERS + 1) + b"Transfer-Encoding: chunked\r\n\r\n"


def _error(code: str, phase: str, type_: str = "upstream_error") -> list[tuple[str, ...]]:
    return [("error", type_, code, phase)]


# answer: the same outcome over both transports.
SAME = {
    "chunked": (chunked_response(TEXT), READ),
    "content-length": ((LENGTH % len(TEXT)) + TEXT, READ),
    "until-close": (CLOSE + TEXT, READ),
    "split-in-bytes": (chunked_head() + b"".join(chunk(TEXT[i:i + 1]) for i in range(len(TEXT))) + LAST_CHUNK, READ),
    "100-continue": (b"HTTP/1.1 100 Continue\r\n\r\n" + chunked_response(TEXT), READ),
    "103-early-hints": (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + chunked_response(TEXT), READ),
    "bytes-after-the-response": (chunked_response(TEXT) + b"HTTP/1.1 200 OK\r\n", READ),
    "error-status": (chunked_response(b'{"error": {"message": "boom", "type": "server_error"}}', status=500), _error("upstream_status_500", "first_token")),
    "204": (b"HTTP/1.1 204 No Content\r\n\r\n", _error("upstream_status_204", "first_token")),
    "not-a-stream": (chunked_response(b"<html>hi</html>").replace(b"text/event-stream", b"text/html"), _error("upstream_malformed", "first_token")),
    "cut-in-a-chunk": (chunked_head() + b"40\r\n" + TEXT[:20], _error("upstream_disconnected", "first_token")),
    "cut-before-the-last-chunk": (chunked_head() + chunk(UNDONE), [("delta", "one "), *_error("upstream_disconnected", "stream")]),
    "short-content-length": ((LENGTH % (len(UNDONE) + 10)) + UNDONE, [("delta", "one "), *_error("upstream_disconnected", "stream")]),
    "bad-chunk-size": (chunked_head() + chunk(UNDONE) + b"zz\r\n", [("delta", "one "), *_error("upstream_malformed_http", "stream")]),
    "closed-without-an-answer": (b"", [("raised", "upstream_disconnected", "first_token")]),
    "garbage-status-line": (b"HTTP/1.1 abc\r\n\r\n", [("raised", "upstream_malformed_http", "first_token")]),
    "head-over-both-caps": (BIG_HEAD % (b"v" * 300_000) + chunk(TEXT) + LAST_CHUNK, [("raised", "upstream_head_too_large", "first_token")]),
    "101-switching-protocols": (b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                                [("raised", "upstream_switched_protocols", "first_token")]),
    "304": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", _error("upstream_status_304", "first_token")),
    "no-head-in-time": (None, [("raised", "first_token_timeout", "first_token")]),
}

# answer: (over http1, over httpx), each documented in httpx_transport.py's docstring.
DIFFERENT = {
    # h11 bounds a head at 100 KiB and counts no fields; the fast client stops at 64 KiB and at 100 fields.
    "head-between-the-caps": (BIG_HEAD % (b"v" * (MAX_HEAD_BYTES + 1000)) + chunk(TEXT) + LAST_CHUNK,
                              [("raised", "upstream_head_too_large", "first_token")], READ),
    # An interim head has no content (RFC 9110 §15.2): h11 ignores its Content-Length, the fast client refuses the response.
    "interim-with-a-body": (b"HTTP/1.1 150 Odd\r\nContent-Length: 7\r\n\r\n" + chunked_response(TEXT),
                            [("raised", "upstream_malformed_http", "first_token")], READ),
    "too-many-headers": (MANY_HEADERS + chunk(TEXT) + LAST_CHUNK, [("raised", "upstream_head_too_large", "first_token")], READ),
}


def _outcome(events: list[Event]) -> list[tuple[str, ...]]:
    seen: list[tuple[str, ...]] = []
    for event in events:
        if isinstance(event, Error):
            seen.append(("error", event.type, event.code, event.phase))
        elif isinstance(event, Finish):
            seen.append(("finish", event.reason))
        else:
            seen.append(("delta", event.text))  # type: ignore[union-attr]
    return seen


@contextlib.asynccontextmanager
async def transport_named(name: str) -> AsyncIterator[Transport]:
    if name == "http1":
        client = Client()
        try:
            yield client
        finally:
            await client.aclose()
        return
    async with anyio.create_task_group() as tg:
        transport = HttpxTransport(tg)
        try:
            yield transport.for_http2(False)
        finally:
            await transport.aclose()
            tg.cancel_scope.cancel()


async def answered(name: str, answer: bytes | None) -> list[tuple[str, ...]]:
    """What a chat stream request gets from a server that answers ``answer`` (``None``: never), over transport ``name``."""
    async def script(conn: Conn) -> None:
        if await conn.read_request() and answer is not None:
            await conn.write(answer)
            return
        await conn.closed_by_peer()

    events: list[Event] = []
    ended = anyio.Event()

    def emit(event: Event) -> None:
        events.append(event)
        if isinstance(event, Error | Finish):
            ended.set()

    with HostileUpstream(script).serving() as base:
        async with transport_named(name) as transport:
            handler = ADAPTERS["openai"].handler(emit, lambda: None)
            try:
                with anyio.fail_after(10):
                    exchange = await transport.request(Origin(base), "POST", "/chat/completions", [("Content-Type", "application/json")],
                                                       b"{}", handler, connect_timeout=5, head_timeout=0.5)
                    await ended.wait()
            except UpstreamError as exc:
                return [("raised", exc.code, exc.phase)]
            exchange.close()
    return _outcome(events)


@pytest.mark.parametrize("case", sorted(SAME))
async def test_both_transports_read_a_response_the_same_way(case: str) -> None:
    answer, expected = SAME[case]
    fast, reference = await answered("http1", answer), await answered("httpx", answer)
    assert fast == reference
    assert fast == expected


@pytest.mark.parametrize("case", sorted(DIFFERENT))
async def test_where_httpx_has_limits_of_its_own_each_transport_does_as_documented(case: str) -> None:
    answer, over_http1, over_httpx = DIFFERENT[case]
    assert await answered("http1", answer) == over_http1
    assert await answered("httpx", answer) == over_httpx
