"""How the relay treats connections: deadlines for a request's head and body, and a cap per process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketStream
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.connections import RelayProtocol
from app.mock import mock_text
from app.server import RelayConfig
from tests.hostile import probing
from tests.rawhttp import Response
from tests.servers import mock_server, relay_server, relay_settings
from tests.sse import data, post_stream

HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
# What a deadline may overrun by on a loaded machine.
MARGIN = 1.5
MB = 1024 * 1024


@pytest.fixture(scope="module")
def relay_url() -> Iterator[str]:
    """A relay with short deadlines, before a mock whose answers last longer than them."""
    with mock_server(ttft=0.0, interval=0.1, tokens=35) as (_, upstream), \
            relay_server(upstream, default_model="mock", request_head_timeout=HEAD_TIMEOUT, request_body_timeout=BODY_TIMEOUT) as url:
        yield url


async def _connect(url: str) -> SocketStream:
    host, port = url.removeprefix("http://").split(":")
    return await anyio.connect_tcp(host, int(port))


async def _read_until_closed(stream: SocketStream) -> bytes:
    received = bytearray()
    while True:
        try:
            received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return bytes(received)


async def _closed_after(stream: SocketStream, bound: float) -> tuple[bytes, float]:
    """What the relay sent before closing the connection, and how long after now it closed it."""
    began = time.monotonic()
    with anyio.fail_after(bound):
        received = await _read_until_closed(stream)
    return received, time.monotonic() - began


async def _trickle(stream: SocketStream, data: bytes, pause: float) -> None:
    for byte in data:
        try:
            await stream.send(bytes([byte]))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        await anyio.sleep(pause)


def _generate(body: dict[str, object], *, length: int | None = None) -> tuple[bytes, bytes]:
    data = json.dumps(body).encode()
    head = f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length or len(data)}\r\n\r\n"
    return head.encode(), data


async def test_a_connection_that_sends_half_a_request_head_gets_408_and_is_closed(relay_url: str) -> None:
    async with await _connect(relay_url) as stream:
        await stream.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        received, elapsed = await _closed_after(stream, HEAD_TIMEOUT + MARGIN)
    assert elapsed > HEAD_TIMEOUT - 0.2
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close\r\n" in received
    assert json.loads(received.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(relay_url: str) -> None:
    async with await _connect(relay_url) as stream:
        received, elapsed = await _closed_after(stream, HEAD_TIMEOUT + MARGIN)
    assert (received, elapsed > HEAD_TIMEOUT - 0.2) == (b"", True)


async def test_a_head_trickled_byte_by_byte_is_cut_off_at_the_deadline_counted_from_the_connection(relay_url: str) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: a-slow-one\r\n\r\n"  # 11 s at this pace
    async with await _connect(relay_url) as stream, anyio.create_task_group() as tg:
        tg.start_soon(_trickle, stream, head, 0.2)
        received, elapsed = await _closed_after(stream, HEAD_TIMEOUT + MARGIN)
        tg.cancel_scope.cancel()
    assert received.startswith(b"HTTP/1.1 408 ")
    assert elapsed > HEAD_TIMEOUT - 0.2


async def test_a_body_that_never_completes_is_cut_off(relay_url: str) -> None:
    head, body = _generate({"prompt": "hi"}, length=100)
    async with await _connect(relay_url) as stream:
        await stream.send(head + body)
        received, elapsed = await _closed_after(stream, BODY_TIMEOUT + MARGIN)
    assert (received, elapsed > BODY_TIMEOUT - 0.2) == (b"", True)


async def test_a_body_trickled_byte_by_byte_is_cut_off_at_its_total_deadline(relay_url: str) -> None:
    head, body = _generate({"prompt": "hi there, this is a body sent slowly"})
    async with await _connect(relay_url) as stream, anyio.create_task_group() as tg:
        await stream.send(head)
        tg.start_soon(_trickle, stream, body, 0.1)  # 4 s at this pace, though no pause is long
        received, elapsed = await _closed_after(stream, BODY_TIMEOUT + MARGIN)
        tg.cancel_scope.cancel()
    assert (received, elapsed > BODY_TIMEOUT - 0.2) == (b"", True)


async def _flood(stream: SocketStream, start: bytes, piece: bytes, size: int) -> None:
    """``start``, then ``piece`` until ``size`` bytes, or until the relay hangs up."""
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
        await stream.send(start)
        for _ in range(size // len(piece)):
            await stream.send(piece)


HEADERS = b"".join(b"X-%04d: v\r\n" % index for index in range(4096))  # 45 KB of tiny headers


@pytest.mark.parametrize(("start", "piece"), [
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ", b"v" * 65_536, id="a-never-ending-value"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", HEADERS, id="many-tiny-headers"),
    pytest.param(b"GET /healthz?", b"a" * 65_536, id="a-never-ending-target"),
])
async def test_a_request_head_past_its_cap_gets_431_and_is_closed_at_once(relay_url: str, start: bytes, piece: bytes) -> None:
    """httptools joins a head's pieces by concatenation and uvicorn bounds neither the head nor its headers:
    within the head's deadline, four such connections took the process from 37 MB to 2 GB."""
    async with probing(relay_url) as probe:
        async with await _connect(relay_url) as stream, anyio.create_task_group() as tg:
            tg.start_soon(_flood, stream, start, piece, 8 * MB)
            received, elapsed = await _closed_after(stream, HEAD_TIMEOUT + MARGIN)
            tg.cancel_scope.cancel()
    assert received.startswith(b"HTTP/1.1 431 "), received[:80]
    assert json.loads(received.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_head_too_large"
    assert elapsed < HEAD_TIMEOUT / 2
    assert probe.peak_growth < 50 * MB, f"peak RSS growth {probe.peak_growth / MB:.0f} MB"


async def test_request_trailers_past_the_heads_cap_close_the_connection_at_once(relay_url: str) -> None:
    """A chunked body's trailers are joined and kept as a head's are, for as long as the body's deadline."""
    head = b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with probing(relay_url) as probe:
        async with await _connect(relay_url) as stream, anyio.create_task_group() as tg:
            tg.start_soon(_flood, stream, head + b'10\r\n{"prompt": "hi"}\r\n0\r\n', HEADERS, 8 * MB)
            received, elapsed = await _closed_after(stream, BODY_TIMEOUT + MARGIN)
            tg.cancel_scope.cancel()
    assert received == b""
    assert elapsed < BODY_TIMEOUT / 2
    assert probe.peak_growth < 50 * MB, f"peak RSS growth {probe.peak_growth / MB:.0f} MB"


async def _exchange(stream: SocketStream, request: bytes) -> Response:
    response = Response()
    await stream.send(request)
    with anyio.fail_after(10):
        while not response.complete:
            response.parser.feed_data(await stream.receive())
    return response


async def test_a_keep_alive_client_pausing_between_requests_longer_than_the_head_timeout_is_not_cut_off(relay_url: str) -> None:
    head, body = _generate({"prompt": "hi", "max_tokens": 1})
    async with await _connect(relay_url) as stream:
        for _ in range(3):
            assert (await _exchange(stream, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")).status == 200
            await anyio.sleep(HEAD_TIMEOUT + 0.5)  # below uvicorn's keep-alive timeout (5 s)
            await stream.send(head)
            await anyio.sleep(0.5)  # a body that comes a little after its head, well within its deadline
            response = await _exchange(stream, body)
            assert (response.status, json.loads(response.body)["output"]) == (200, "".join(mock_text("hi", 1)))


async def test_a_stream_longer_than_both_deadlines_is_not_cut_off(relay_url: str, client: httpx.AsyncClient) -> None:
    began = time.monotonic()
    _, events = await post_stream(client, relay_url + "/v1/generate", {"prompt": "hi", "stream": True, "max_tokens": 35})
    assert time.monotonic() - began > HEAD_TIMEOUT + BODY_TIMEOUT
    assert [event.event for event in events] == ["token"] * (len(events) - 1) + ["done"]
    assert "".join(data(event)["text"] for event in events[:-1]) == "".join(mock_text("hi", 35))


CAP = 20
ANSWERED_PAST_THE_CAP = 128  # app/connections.py
CAP_HEAD_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def capped_url() -> Iterator[str]:
    with relay_server(None, max_connections=CAP, request_head_timeout=CAP_HEAD_TIMEOUT, stream_busy_retry_ms=7000, mock_ttft=0) as url:
        yield url


async def _until_refused(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """Ask on new connections until one is refused: the idle ones opened before must all have been accepted first."""
    with anyio.fail_after(CAP_HEAD_TIMEOUT / 2):
        while (response := await client.get(url + "/readyz", headers={"connection": "close"})).status_code == 200:
            pass
    return response


async def test_past_the_cap_a_request_gets_503_and_an_eventsource_a_retry_until_idle_connections_time_out(capped_url: str, client: httpx.AsyncClient) -> None:
    idle = [await _connect(capped_url) for _ in range(CAP)]
    try:
        refused = await _until_refused(client, capped_url)
        assert refused.status_code == 503
        assert refused.json()["error"] == {
            "message": f"the relay is at its limit of {CAP} connections; retry shortly", "type": "invalid_request_error",
            "code": "too_many_connections", "param": None,
        }
        assert (refused.headers["retry-after"], refused.headers["connection"]) == ("1", "close")
        # Alive, though full: a liveness probe must not have it restarted (and every stream it holds dropped).
        alive = await client.get(capped_url + "/healthz", headers={"connection": "close"})
        assert (alive.status_code, alive.json(), alive.headers["connection"]) == (200, {"status": "ok"}, "close")
        # A browser's EventSource gives up for good on a 503: it gets a retry hint instead, as when readers are at their limit.
        async with client.stream("GET", capped_url + "/v1/streams/some-stream/events", headers={"accept": "text/event-stream"}) as busy:
            assert (busy.status_code, busy.headers["content-type"]) == (200, "text/event-stream; charset=utf-8")
            assert await busy.aread() == b"retry: 7000\n: busy\n\n"
        with anyio.fail_after(CAP_HEAD_TIMEOUT + MARGIN):
            for stream in idle:
                assert await _read_until_closed(stream) == b""
        assert (await client.get(capped_url + "/healthz")).status_code == 200
        created = await client.post(capped_url + "/v1/streams", json={"prompt": "hi", "max_tokens": 2})
        async with client.stream("GET", created.json()["events_url"]) as reader:
            assert reader.status_code == 200 and b"event: done" in await reader.aread()
    finally:
        for stream in idle:
            await stream.aclose()


async def test_past_the_cap_and_the_connections_answered_there_a_connection_is_closed_at_once(capped_url: str) -> None:
    idle = [await _connect(capped_url) for _ in range(CAP + ANSWERED_PAST_THE_CAP)]
    try:
        with anyio.fail_after(CAP_HEAD_TIMEOUT / 2):
            while True:  # until the ones above are all accepted: then the next is closed unread
                async with await _connect(capped_url) as extra:
                    with contextlib.suppress(anyio.BrokenResourceError):
                        await extra.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    if await _read_until_closed(extra) == b"":
                        break
    finally:
        for stream in idle:
            await stream.aclose()


class _CountingLoop:
    """The running loop, counting the deadlines a ``RelayProtocol`` arms (uvicorn's keep-alive timer is not counted)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.armed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        if getattr(callback, "__name__", "") == "_expire":
            self.armed += 1
        return self.loop.call_later(delay, callback)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.answers = 0
        self.answered = asyncio.Event()
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith((b'{"status":"ok"}', b"\r\n\r\n")):  # the end of a /healthz answer, or of a 405's head
            self.answers += 1
            self.answered.set()

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)


async def test_a_request_that_arrives_in_one_read_arms_no_deadline_and_one_in_two_reads_arms_one() -> None:
    loop = _CountingLoop(asyncio.get_running_loop())
    config = RelayConfig(relay_settings(None), log_config=None)
    config.load()
    protocol = RelayProtocol(config, ServerState(), {}, _loop=loop)  # type: ignore[arg-type]
    transport = protocol.transport = _Transport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    assert loop.armed == 1  # the first head's
    with anyio.fail_after(5):
        for answers in range(1, 4):
            protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            while transport.answers < answers:
                transport.answered.clear()
                await transport.answered.wait()
        assert loop.armed == 1
        protocol.data_received(b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n")
        protocol.data_received(b"{}")
        assert loop.armed == 2  # the body's
        while transport.answers < 4:
            transport.answered.clear()
            await transport.answered.wait()
    protocol.connection_lost(None)


def _traced_bytes_each(make: Callable[[], object], count: int = 200) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        made = [make() for _ in range(count)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del made
    return grown / count


async def test_a_connection_costs_little_more_than_under_uvicorns_own_protocol() -> None:
    """The deadlines' few fields live in slots: past 30 attributes an instance dict stops sharing its
    keys with the class's, which would cost every open connection, a waiting stream's included, 1.3 KB more."""
    loop = asyncio.get_running_loop()
    config = RelayConfig(relay_settings(None), log_config=None)
    config.load()
    state = ServerState()
    uvicorns = _traced_bytes_each(lambda: HttpToolsProtocol(config, state, {}, _loop=loop))
    relays = _traced_bytes_each(lambda: RelayProtocol(config, state, {}, _loop=loop))
    assert relays - uvicorns < 128, (relays, uvicorns)
