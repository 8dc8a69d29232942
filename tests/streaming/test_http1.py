"""The upstream HTTP client: connection reuse only at a clean boundary, capped heads, and an exchange that is over cannot touch the next one."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import httpx
import pytest

from app.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from app.mock import MockModel
from app.streaming.upstreams.http1 import MAX_HEAD_BYTES, MAX_HEADERS, Client, Exchange, Origin, _Connection, _HeadDeadline
from tests.hostile import Conn, HostileUpstream
from tests.servers import mock_server


class Collect:
    def __init__(self) -> None:
        self.status = 0
        self.body = bytearray()
        self.ended = anyio.Event()
        self.lost: Exception | None = None

    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_end(self) -> None:
        self.ended.set()

    def on_lost(self, exc: Exception) -> None:
        self.lost = exc
        self.ended.set()


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.0, tokens=3) as served:
        yield served


BODY = b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "stream": true}'


async def _exchange(client: Client, origin: Origin, model: str = "mock") -> Collect:
    handler = Collect()
    body = BODY.replace(b'"mock"', f'"{model}"'.encode())
    exchange = await client.request(origin, "POST", "/chat/completions", [("Content-Type", "application/json")], body, handler,
                                    connect_timeout=5, head_timeout=5)
    with anyio.fail_after(5):
        await handler.ended.wait()
    exchange.close()
    return handler


async def test_a_finished_exchange_returns_its_connection_for_reuse(upstream: tuple[MockModel, str]) -> None:
    client = Client()
    origin = Origin(upstream[1])
    first = await _exchange(client, origin)
    second = await _exchange(client, origin)
    idle = list(client._idle[origin.key])
    await client.aclose()
    assert first.status == second.status == 200
    assert first.body.endswith(b"data: [DONE]\n\n") and second.body.endswith(b"data: [DONE]\n\n")
    assert len(idle) == 1 and idle[0].serial == 2, "both exchanges should have used one connection"
    assert idle[0].closed


async def _held(client: Client, origin: Origin, ttft: float) -> tuple[Exchange, Collect]:
    """An exchange whose connection stays busy for ``ttft`` seconds after its head."""
    handler = Collect()
    exchange = await client.request(origin, "POST", "/chat/completions", [("x-mock-ttft", str(ttft))], BODY, handler, connect_timeout=10, head_timeout=10)
    return exchange, handler


async def test_the_pool_keeps_every_connection_of_a_burst_that_ends_together(upstream: tuple[MockModel, str]) -> None:
    """260 streams at once (more than the pool's former 256) end with no request waiting to take their connections: all are kept."""
    client = Client()
    origin = Origin(upstream[1])
    held = await asyncio.gather(*(_held(client, origin, 1.0) for _ in range(260)))
    with anyio.fail_after(10):
        for exchange, handler in held:
            await handler.ended.wait()
            exchange.close()
    idle = list(client._idle[origin.key])
    await client.aclose()
    assert all(handler.status == 200 for _, handler in held)
    assert len(idle) == 260 and all(connection.serial == 1 for connection in idle), "each stream had a connection of its own, and each is kept"


async def test_past_its_cap_the_pool_closes_the_longest_idle(upstream: tuple[MockModel, str]) -> None:
    client = Client(max_idle_per_origin=2)
    origin = Origin(upstream[1])
    await asyncio.gather(*(_exchange(client, origin) for _ in range(3)))
    kept = list(client._idle[origin.key])
    closed = [connection for connection in client._open if connection not in kept]
    await client.aclose()
    assert len(kept) == 2 and all(connection.closed for connection in closed)


async def test_closing_a_finished_exchange_leaves_the_reused_connection_alone(upstream: tuple[MockModel, str]) -> None:
    client = Client()
    origin = Origin(upstream[1])
    handler = Collect()
    old = await client.request(origin, "POST", "/chat/completions", [], BODY.replace(b"true", b"false"), handler,
                               connect_timeout=5, head_timeout=5)
    with anyio.fail_after(5):
        await handler.ended.wait()
    # The connection is back in the pool; a new exchange takes it, then the old owner closes late.
    slow = Collect()
    await client.request(origin, "POST", "/chat/completions", [("x-mock-interval", "0.05"), ("x-mock-tokens", "20")], BODY, slow,
                         connect_timeout=5, head_timeout=5)
    old.close()
    with anyio.fail_after(5):
        await slow.ended.wait()
    await client.aclose()
    assert slow.lost is None
    assert slow.body.endswith(b"data: [DONE]\n\n")


async def test_closing_the_client_closes_a_connection_still_in_an_exchange(upstream: tuple[MockModel, str]) -> None:
    """One whose response has not ended (a relay's stream past its end marker, say) must not outlive the client."""
    client = Client()
    handler = Collect()
    await client.request(Origin(upstream[1]), "POST", "/chat/completions", [("x-mock-interval", "0.05"), ("x-mock-tokens", "1000")], BODY, handler,
                         connect_timeout=5, head_timeout=5)
    await client.aclose()
    with anyio.fail_after(5):
        await handler.ended.wait()
    assert handler.lost is not None


async def test_the_relay_reuses_its_upstream_connection_across_requests(client: httpx.AsyncClient) -> None:
    """Even when the body's end arrives after the model's [DONE], in its own packet."""
    from tests.servers import relay_server
    from tests.sse import post_stream

    with mock_server(ttft=0.0, interval=0.0, tokens=3) as (model, upstream), relay_server(upstream, default_model="mock") as url:
        for sent in range(1, 4):
            _, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True})
            assert events[-1].event == "done"
            # The body ends 2 ms after [DONE], as with a real server: let it, so the connection is free.
            await anyio.to_thread.run_sync(model.wait_for_completed, sent, 5)
        response = await client.post(url + "/v1/generate", json={"prompt": "x"})
        assert response.status_code == 200
    assert len(model.peers) == 4
    assert len(set(model.peers)) == 1, "each request opened a new upstream connection"


async def test_after_a_head_timeout_the_handler_hears_nothing_more(upstream: tuple[MockModel, str]) -> None:
    """The caller may have moved on to another upstream: the abandoned exchange must not report its end."""
    client = Client()
    handler = Collect()
    with pytest.raises(UpstreamTimeout):
        await client.request(Origin(upstream[1]), "POST", "/chat/completions", [("x-mock-fault", "stall-head")], BODY, handler,
                             connect_timeout=5, head_timeout=0.1)
    # The aborted connection's loss is delivered by the loop soon after the abort (call_soon): let it run.
    for _ in range(5):
        await anyio.lowlevel.checkpoint()
    await client.aclose()
    assert handler.lost is None and not handler.ended.is_set()


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
async def test_a_head_timeout_never_fires_before_its_deadline(upstream: tuple[MockModel, str]) -> None:
    """uvloop runs timers up to half a millisecond early: a head timeout bounded by the total deadline must wait for it."""
    client = Client()
    origin = Origin(upstream[1])
    early = []
    with anyio.fail_after(10):
        for _ in range(20):
            seconds = 0.0104  # not a whole number of milliseconds, which uvloop would round down
            started = anyio.current_time()
            with pytest.raises(UpstreamTimeout):
                await client.request(origin, "POST", "/chat/completions", [("x-mock-fault", "stall-head")], BODY, Collect(),
                                     connect_timeout=5, head_timeout=seconds)
            waited = anyio.current_time() - started
            if waited < seconds:
                early.append(waited)
    await client.aclose()
    assert early == []


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


async def test_bytes_after_the_head_deadline_reach_no_handler() -> None:
    """The deadline fired, and the head arrives in the same loop pass, before the waiting task resumes."""
    connection = _Connection(Client(), Origin("http://127.0.0.1:9/v1"))
    transport = _Transport()
    connection.connection_made(transport)
    handler = Collect()
    connection.start(b"POST /v1/chat/completions HTTP/1.1\r\n\r\n", handler)
    head = connection.head
    _HeadDeadline(asyncio.get_running_loop(), 0.001, functools.partial(connection.time_out, connection.serial, 0.001))
    with anyio.fail_after(5):
        assert await head is None
    assert isinstance(connection.take_failure(), UpstreamTimeout)
    connection.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
    assert transport.aborted
    assert handler.status == 0 and not handler.body and not handler.ended.is_set()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


async def _answered(answer: bytes) -> tuple[Collect | UpstreamError, bool, HostileUpstream]:
    """One request to a server that answers ``answer``: what the caller got, and whether the connection is pooled."""
    async def script(conn: Conn) -> None:
        while await conn.read_request():
            await conn.write(answer)

    upstream = HostileUpstream(script)
    client = Client()
    with upstream.serving() as base:
        origin = Origin(base)
        try:
            outcome: Collect | UpstreamError = await _exchange(client, origin)
        except UpstreamError as exc:
            outcome = exc
        pooled = any(not connection.closed for connection in client._idle.get(origin.key, ()))
        await client.aclose()
    return outcome, pooled, upstream


@pytest.mark.parametrize(("answer", "body"), [
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"hi", id="100"),
    pytest.param(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK, b"hi", id="102-103"),
    pytest.param(b"HTTP/1.1 199 Whatever\r\nX-Hint: 1\r\n\r\n" + OK, b"hi", id="199"),
    pytest.param(OK, b"hi", id="none"),
])
async def test_interim_heads_are_skipped_and_the_connection_is_pooled_after_the_final_answer(answer: bytes, body: bytes) -> None:
    outcome, pooled, _ = await _answered(answer)
    assert isinstance(outcome, Collect) and (outcome.status, bytes(outcome.body), outcome.lost) == (200, body, None)
    assert pooled


@pytest.mark.parametrize("answer", [
    pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", id="204"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", id="304"),
    pytest.param(OK + b"H", id="a byte after"),
    pytest.param(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", id="a response after"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nHTTP/1.1 2", id="a head after the last chunk"),
])
async def test_a_connection_that_may_carry_bytes_for_nobody_is_not_pooled(answer: bytes) -> None:
    outcome, pooled, _ = await _answered(answer)
    assert isinstance(outcome, Collect) and outcome.lost is None
    assert not pooled


@pytest.mark.parametrize(("answer", "code"), [
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", "upstream_switched_protocols", id="101"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "upstream_switched_protocols", id="101-bare"),
    pytest.param(b"HTTP/1.1 150 Odd\r\nContent-Length: 7\r\n\r\n" + OK, "upstream_malformed_http", id="1xx-with-a-body"),
    pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * (MAX_HEADERS + 1) + b"Content-Length: 2\r\n\r\nhi", "upstream_head_too_large", id="headers"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: " + b"b" * MAX_HEAD_BYTES + b"\r\nContent-Length: 2\r\n\r\nhi", "upstream_head_too_large", id="bytes"),
    pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" * MAX_HEADERS + OK, "upstream_head_too_large", id="interim-heads"),
])
async def test_a_head_that_breaks_http_or_the_caps_fails_the_request(answer: bytes, code: str) -> None:
    outcome, pooled, _ = await _answered(answer)
    assert isinstance(outcome, UpstreamProtocolError) and outcome.code == code
    assert not pooled


async def test_a_head_at_the_caps_is_taken() -> None:
    headers = b"".join(b"X-%d: %b\r\n" % (i, b"v" * 600) for i in range(MAX_HEADERS - 1))
    outcome, pooled, _ = await _answered(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\nhi")
    assert isinstance(outcome, Collect) and (outcome.status, bytes(outcome.body)) == (200, b"hi")
    assert pooled


async def test_a_never_ending_header_value_stops_at_the_cap() -> None:
    """httptools reports a header only once whole: the cap must count the bytes as they arrive."""
    hung_up = threading.Event()

    async def script(conn: Conn) -> None:
        await conn.read_request()
        await conn.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        block = b"v" * 16_384
        try:
            for _ in range(1024):  # 16 MiB, more than the socket buffers can hide
                await conn.write(block)
        except ConnectionError:
            hung_up.set()

    upstream = HostileUpstream(script)
    client = Client()
    with upstream.serving() as base:
        with pytest.raises(UpstreamProtocolError) as failed:
            await _exchange(client, Origin(base))
        await client.aclose()
        assert await anyio.to_thread.run_sync(hung_up.wait, 5)
    assert failed.value.code == "upstream_head_too_large"


async def test_bytes_waiting_unread_on_an_idle_connection_discard_it_before_reuse() -> None:
    """The server wrote a response nobody asked for while the connection sat idle, and the loop
    has not read it yet when the next request takes the connection: it would be that request's answer."""
    go, stray_sent = asyncio.Event(), threading.Event()

    async def script(conn: Conn) -> None:
        if conn.index > 0:
            while await conn.read_request():
                await conn.write(OK.replace(b"hi", b"ok"))
            return
        await conn.read_request()
        await conn.write(OK)
        await go.wait()
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nNO")
        stray_sent.set()
        await conn.read_request()

    upstream = HostileUpstream(script)
    client = Client()
    with upstream.serving() as base:
        origin = Origin(base)
        first = await _exchange(client, origin)
        upstream.call(go.set)
        # Blocks this loop on purpose, so that it cannot read the stray bytes before the reuse.
        assert stray_sent.wait(5)
        second = await _exchange(client, origin)
        await client.aclose()
    assert bytes(first.body) == b"hi"
    assert bytes(second.body) == b"ok"
    assert len(upstream.conns[0].requests) == 1
