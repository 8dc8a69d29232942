"""A hostile model server cannot make one client read another's answer, nor grow the relay's memory with a head.

The relay keeps its upstream connections in a pool shared by every client, so each
cross-client case runs two clients whose requests overlap in time: the first client's
connection is poisoned (an interim head, a 204, bytes after the answer), and the second
client's request must not be sent on it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

import anyio
import httpx
import pytest

from tests.hostile import LAST_CHUNK, Conn, HostileUpstream, Probe, chunk, chunked_head, chunked_response, probing, sse
from tests.servers import TRANSPORTS, relay_server
from tests.sse import data, post_stream

ALPHA = "alpha: the first client's answer"
BETA = "beta: the second client's answer"
STOLEN = "stolen: bytes nobody asked for"
MB = 1024 * 1024


class Overlap:
    """Connection 0 writes ``first`` for the first request; once the second client's request has
    arrived, on this connection or another, it writes ``then``. Every other request gets BETA."""

    def __init__(self, first: bytes, then: bytes) -> None:
        self.first = first
        self.then = then
        self.first_written = threading.Event()
        self._second: asyncio.Event | None = None

    def second(self) -> asyncio.Event:
        if self._second is None:
            self._second = asyncio.Event()
        return self._second

    async def __call__(self, conn: Conn) -> None:
        if conn.index > 0:
            while await conn.read_request():
                self.second().set()
                await conn.write(chunked_response(sse(BETA)))
            return
        if not await conn.read_request():
            return
        await conn.write(self.first)
        self.first_written.set()
        reused = asyncio.ensure_future(conn.read_request())
        arrived = asyncio.ensure_future(self.second().wait())
        await asyncio.wait([reused, arrived], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        arrived.cancel()
        await conn.write(self.then)
        if not reused.done():
            reused.cancel()
            return
        if reused.result():  # the second client's request came on this connection: answer it too, after
            await conn.write(chunked_response(sse(BETA)))


async def generate(http: httpx.AsyncClient, url: str, prompt: str = "x") -> tuple[str, str | None]:
    """One streamed answer: its text and its error code (``None`` when it ended well), with exactly one terminal event."""
    _, events = await post_stream(http, url + "/v1/generate", {"prompt": prompt, "stream": True}, seconds=30)
    terminal = [event.event for event in events if event.event in ("done", "error")]
    assert len(terminal) == 1 and events[-1].event == terminal[0], [event.event for event in events]
    text = "".join(data(event)["text"] for event in events if event.event == "token")
    return text, data(events[-1])["code"] if terminal[0] == "error" else None


async def two_clients(script: Overlap, transport: str = "http1") -> tuple[tuple[str, str | None], tuple[str, str | None], HostileUpstream]:
    """The first client's request, then the second's once the upstream has written its ``first`` bytes, over ``transport``."""
    upstream = HostileUpstream(script)
    answers: dict[str, tuple[str, str | None]] = {}
    with upstream.serving() as base, relay_server(base, default_model="m", first_token_timeout=5, idle_timeout=5, transport=transport) as url:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:

            async def first() -> None:
                answers["first"] = await generate(http, url)

            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(first)
                    assert await anyio.to_thread.run_sync(script.first_written.wait, 5)
                    answers["second"] = await generate(http, url)
    return answers["first"], answers["second"], upstream


def assert_not_reused(upstream: HostileUpstream) -> None:
    assert len(upstream.conns[0].requests) == 1, "the poisoned connection served another request"


# The cases of a poisoned connection run over both transports: httpx, the reference, must not lend one either.
over_both = pytest.mark.parametrize("transport", TRANSPORTS)


@over_both
@pytest.mark.parametrize("interim", [
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="100"),
    pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n", id="103"),
])
async def test_an_interim_head_is_skipped_and_the_final_answer_reaches_its_own_client(interim: bytes, transport: str) -> None:
    first, second, upstream = await two_clients(Overlap(interim, chunked_response(sse(ALPHA))), transport)
    assert second == (BETA, None)
    assert_not_reused(upstream)
    assert first == (ALPHA, None)


@over_both
async def test_switching_protocols_is_one_clean_error_and_no_fatal_transport_error(caplog: pytest.LogCaptureFixture, transport: str) -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        first, second, upstream = await two_clients(Overlap(switch, chunked_response(sse(ALPHA))), transport)
    fatal = [record.getMessage() for record in caplog.records if record.name == "asyncio" and "Fatal error" in record.getMessage()]
    assert fatal == []
    assert first == ("", "upstream_switched_protocols")
    assert second == (BETA, None)
    assert_not_reused(upstream)


@over_both
@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_a_response_without_a_body_is_not_followed_by_bytes_for_another_client(status: bytes, transport: str) -> None:
    first, second, upstream = await two_clients(Overlap(b"HTTP/1.1 %b\r\n\r\n" % status, chunked_response(sse(ALPHA))), transport)
    assert second == (BETA, None)
    assert_not_reused(upstream)
    assert first == ("", f"upstream_status_{status[:3].decode()}")


@over_both
async def test_bytes_after_the_last_chunk_in_the_same_write_discard_the_connection(transport: str) -> None:
    """The stray bytes begin a head; its rest comes once another request could be on the connection."""
    rest = b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(sse(STOLEN)) + LAST_CHUNK
    script = Overlap(chunked_response(sse(ALPHA)) + b"HTTP/1.1 200 OK\r\n", rest)
    first, second, upstream = await two_clients(script, transport)
    assert second == (BETA, None)
    assert_not_reused(upstream)
    assert first == (ALPHA, None)


async def test_unsolicited_bytes_on_an_idle_connection_discard_it() -> None:
    hung_up = threading.Event()

    async def script(conn: Conn) -> None:
        while await conn.read_request():
            if conn.index > 0:
                await conn.write(chunked_response(sse(BETA)))
                continue
            await conn.write(chunked_response(sse(ALPHA)))
            await conn.write(chunked_response(sse(STOLEN)))
            if await conn.closed_by_peer():
                hung_up.set()
            return

    upstream = HostileUpstream(script)
    with upstream.serving() as base, relay_server(base, default_model="m") as url:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
            assert await generate(http, url) == (ALPHA, None)
            assert await anyio.to_thread.run_sync(hung_up.wait, 5), "the relay kept the connection"
            assert await generate(http, url) == (BETA, None)
    assert_not_reused(upstream)


async def _normal_answer(conn: Conn) -> None:
    """NORMAL's ten tokens, one event per write, over about 0.2 s."""
    await conn.write(chunked_head())
    for event in sse(*TOKENS).split(b"\n\n")[:-1]:
        await conn.write(chunk(event + b"\n\n"))
        await asyncio.sleep(0.02)
    await conn.write(LAST_CHUNK)


def flooding(flood: Callable[[Conn], Awaitable[None]]) -> Callable[[Conn], Awaitable[None]]:
    """A model server that floods a request whose prompt is ``flood`` and answers the others normally."""
    async def script(conn: Conn) -> None:
        while request := await conn.read_request():
            if b'"flood"' in request:
                await flood(conn)
                return
            await _normal_answer(conn)

    return script


async def under_flood(flood: Callable[[Conn], Awaitable[None]]) -> tuple[tuple[str, str | None], tuple[str, str | None], Probe]:
    """The flooded request beside a normal one, both through the relay, with its health and memory watched."""
    answers: dict[str, tuple[str, str | None]] = {}
    with HostileUpstream(flooding(flood)).serving() as base, relay_server(base, default_model="m", first_token_timeout=5) as url:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http, probing(url) as probe:

            async def ask(prompt: str) -> None:
                answers[prompt] = await generate(http, url, prompt)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ask, "flood")
                    tg.start_soon(ask, "normal")
            await anyio.sleep(0.2)  # lets the allocator settle before the probe's last reading
    return answers["flood"], answers["normal"], probe


TOKENS = [f"t{index} " for index in range(10)]
NORMAL = ("".join(TOKENS), None)


async def test_a_flood_of_small_headers_ends_the_request_and_keeps_no_memory() -> None:
    """20 MB of tiny headers: one clean error naming the cause, and no more memory than the cap costs."""
    block = b"".join(b"X-Flood-%04d: v\r\n" % index for index in range(4096))  # 68 KB

    async def flood(conn: Conn) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        for _ in range(20 * MB // len(block)):
            await conn.write(block)
        await conn.write(b"Transfer-Encoding: chunked\r\n\r\n" + chunked_response(sse("flooded"))[len(chunked_head()):])

    flooded, normal, probe = await under_flood(flood)
    assert probe.peak_growth < 50 * MB, f"peak RSS growth {probe.peak_growth / MB:.0f} MB"
    assert flooded == ("", "upstream_head_too_large")
    assert normal == NORMAL
    assert probe.left < 20 * MB
    assert probe.checks > 0 and probe.slowest < 0.5


@pytest.mark.parametrize(("start", "answer"), [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Endless: ", ("", "upstream_head_too_large"), id="header"),
    pytest.param(chunked_head() + chunk(sse("flooded", done=False)) + b"0\r\nX-Endless: ", ("flooded", "upstream_malformed_http"), id="trailer"),
])
async def test_a_never_ending_field_value_ends_the_request_without_stalling_the_relay(start: bytes, answer: tuple[str, str]) -> None:
    """50 MB of one header's (or trailer's) value, in 64 KiB writes: httptools would join them, again and again."""
    block = b"v" * 65_536

    async def flood(conn: Conn) -> None:
        await conn.write(start)
        for _ in range(50 * MB // len(block)):
            await conn.write(block)

    flooded, normal, probe = await under_flood(flood)
    assert probe.slowest < 0.5, f"the slowest /healthz took {probe.slowest:.2f} s"
    assert probe.peak_growth < 50 * MB, f"peak RSS growth {probe.peak_growth / MB:.0f} MB"
    assert flooded == answer
    assert normal == NORMAL
    assert probe.left < 20 * MB


@pytest.mark.parametrize("line", [
    pytest.param(b"\r", id="blank-lines-ended-by-CR"), pytest.param(b":\n", id="comments"), pytest.param(b"x\n", id="unknown-fields"),
])
async def test_a_flood_of_tiny_lines_keeps_the_loop_responsive(line: bytes) -> None:
    """30 MB of lines of a byte or two: each costs the parser a little, and uvloop reads a socket up to
    32 times in one pass of the loop, so without a pause between reads one pass would take seconds."""
    block = chunk(line * (65_536 // len(line)))

    async def flood(conn: Conn) -> None:
        await conn.write(chunked_head())
        for _ in range(30 * MB // len(block)):
            await conn.write(block)

    flooded, normal, probe = await under_flood(flood)
    assert probe.slowest < 0.5, f"the slowest /healthz took {probe.slowest:.2f} s"
    assert flooded[1] in ("upstream_disconnected", "first_token_timeout")
    assert normal == NORMAL
    assert probe.peak_growth < 50 * MB, f"peak RSS growth {probe.peak_growth / MB:.0f} MB"
