"""A reader slower than the model gets coalesced events; one that stops reading is cut off, and so is its upstream."""

from __future__ import annotations

import json

import anyio
import httpx

from app.mock import mock_text
from app.streaming.sse import SSEParser
from tests.hostile import Conn, HostileUpstream, chunked_response, probing, sse
from tests.rawhttp import Response, open_post, read_until
from tests.servers import mock_server, relay_server, under_every_server
from tests.sse import post_stream

TOKENS = 60_000
ENDLESS = 10_000_000


@under_every_server
async def test_a_lagging_reader_gets_fewer_larger_events_with_all_the_text(asgi_server: str) -> None:
    with mock_server(ttft=0.0, interval=0.0, tokens=TOKENS) as (_, upstream), \
            relay_server(upstream, server=asgi_server, slow_consumer_lag_bytes=50_000_000, max_tokens_limit=ENDLESS) as url:
        with anyio.fail_after(30):
            body = {"prompt": "lag", "stream": True, "model": "mock", "max_tokens": TOKENS}
            stream = await open_post(url, "/v1/generate", body, receive_buffer=262_144)
            response = Response()
            await read_until(stream, response, body_contains=b"event: token")
            await anyio.sleep(1.0)  # the reader falls behind while the model keeps writing
            await read_until(stream, response)
            await stream.aclose()
    events = SSEParser().feed(bytes(response.body))
    tokens = [event for event in events if event.event == "token"]
    assert events[-1].event == "done"
    assert len(tokens) < TOKENS / 2, "deltas were not coalesced"
    assert "".join(json.loads(event.data)["text"] for event in tokens) == "".join(mock_text("lag", TOKENS))


@under_every_server
async def test_a_reader_that_stops_is_ended_with_slow_consumer_and_the_upstream_closed(asgi_server: str) -> None:
    with mock_server(ttft=0.0, interval=0.0, tokens=ENDLESS) as (model, upstream), \
            relay_server(upstream, server=asgi_server, slow_consumer_lag_bytes=20_000, slow_consumer_grace=10, max_tokens_limit=ENDLESS) as url:
        with anyio.fail_after(30):
            body = {"prompt": "stop", "stream": True, "model": "mock", "max_tokens": ENDLESS}
            stream = await open_post(url, "/v1/generate", body, receive_buffer=262_144, request_id="stops-reading")
            response = Response()
            await read_until(stream, response, body_contains=b"event: token")
            # The reader stops here; the relay must give up on it and close the upstream by itself.
            record = await anyio.to_thread.run_sync(model.wait_for_disconnect, "stops-reading", 20)
            await read_until(stream, response)
            await stream.aclose()
    assert record["tokens_sent"] < ENDLESS
    events = SSEParser().feed(bytes(response.body))
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["code"] == "slow_consumer"


@under_every_server
async def test_a_reader_that_never_comes_back_is_dropped_after_the_grace_period(asgi_server: str) -> None:
    with mock_server(ttft=0.0, interval=0.0, tokens=ENDLESS) as (model, upstream), \
            relay_server(upstream, server=asgi_server, slow_consumer_lag_bytes=20_000, slow_consumer_grace=0.2, max_tokens_limit=ENDLESS) as url:
        with anyio.fail_after(30):
            body = {"prompt": "gone", "stream": True, "model": "mock", "max_tokens": ENDLESS}
            stream = await open_post(url, "/v1/generate", body, receive_buffer=262_144, request_id="never-reads")
            response = Response()
            await read_until(stream, response, body_contains=b"event: token")
            await anyio.to_thread.run_sync(model.wait_for_disconnect, "never-reads", 20)
            async with httpx.AsyncClient(timeout=5) as client:
                # The relay's in-flight count drops to zero once the stuck writer is cancelled; it lives
                # in another server, with nothing to await but its /readyz answer.
                while (await client.get(url + "/readyz")).json()["in_flight"] != 0:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            await stream.aclose()


async def test_one_upstream_read_past_the_lag_limit_reaches_a_fast_reader_whole() -> None:
    """The lag counts only while a send waits: one ~300 KiB event is not a reader falling behind."""
    big = "x" * 300_000

    async def script(conn: Conn) -> None:
        while await conn.read_request():
            await conn.write(chunked_response(sse(big)))

    upstream = HostileUpstream(script)
    with upstream.serving() as base, relay_server(base, default_model="m") as url, anyio.fail_after(20):
        async with probing(url) as probe, httpx.AsyncClient() as http:
            _, events = await post_stream(http, url + "/v1/generate", {"prompt": "x", "stream": True})
    assert events[-1].event == "done", events[-1].data[:200]
    assert "".join(json.loads(event.data)["text"] for event in events if event.event == "token") == big
    assert probe.slowest < 0.5
