"""A hostile model server for the tests, and a probe of the relay's health while it misbehaves.

``HostileUpstream`` is a raw TCP server on a free loopback port, in a thread with its own
event loop. Each accepted connection is handed to the test's ``script``: an async function
of ``(conn)`` that reads requests and writes whatever bytes it likes, well-formed or not. It
records every request head it read, per connection, so a test can tell which connection
served which client.

``Probe`` runs beside a hostile exchange: it polls the relay's ``/healthz`` and samples this
process's resident memory, so a test can say that the loop stayed responsive (the slowest
health check) and that memory stayed bounded (the peak over the start, and what is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import httpx

from tests.threaded import server_in_thread

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class Conn:
    """One connection to the hostile upstream, as its script sees it."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.requests: list[bytes] = []

    async def read_request(self) -> bytes:
        """Read one request (head and ``Content-Length`` body); ``b""`` if the peer closed first."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return b""
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await self.reader.readexactly(length) if length else b""
        self.requests.append(head + body)
        return head + body

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed_by_peer(self) -> bool:
        """Wait until the relay closes this connection (``True``), or sends more bytes (``False``)."""
        try:
            data = await self.reader.read(1)
        except ConnectionError:
            return True
        return not data


Script = Callable[[Conn], Awaitable[None]]


class HostileUpstream:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.conns: list[Conn] = []
        self._loop = asyncio.new_event_loop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(len(self.conns), reader, writer)
        self.conns.append(conn)
        try:
            await self.script(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the relay hung up on it: that is often the point
        finally:
            writer.transport.abort()

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the upstream's loop (a script's state lives there)."""
        self._loop.call_soon_threadsafe(fn)

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """Serve in a thread; yield the OpenAI-style base URL (``http://127.0.0.1:PORT/v1``)."""

        def stop(server: asyncio.Server) -> None:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        with server_in_thread(self._loop, self._handle, stop, "hostile upstream") as port:
            yield f"http://127.0.0.1:{port}/v1"


def sse(*chunks: str, done: bool = True) -> bytes:
    """An OpenAI chat-completions stream body: one chunk of content per string, then ``[DONE]``."""
    events = [b'data: {"choices":[{"index":0,"delta":{"content":%b}}]}\n\n' % json.dumps(text).encode() for text in chunks]
    events.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    if done:
        events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def chunked_head(status: int = 200, reason: str = "OK", content_type: str = "text/event-stream") -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def chunked_response(body: bytes, status: int = 200) -> bytes:
    """A whole chunked response carrying ``body`` in one chunk."""
    return chunked_head(status) + chunk(body) + LAST_CHUNK


class Probe:
    """What a hostile exchange did to the relay: the slowest ``/healthz`` and the memory it took.

    ``peak_growth`` is the highest RSS seen over the RSS at the start; ``left`` is what
    remains after the block (and a settling pause), over the start.
    """

    def __init__(self) -> None:
        self.slowest = 0.0
        self.checks = 0
        self.start_rss = 0
        self.peak_rss = 0
        self.end_rss = 0

    @property
    def peak_growth(self) -> int:
        return self.peak_rss - self.start_rss

    @property
    def left(self) -> int:
        return self.end_rss - self.start_rss


@contextlib.asynccontextmanager
async def probing(relay_url: str, interval: float = 0.02) -> AsyncIterator[Probe]:
    """Poll ``/healthz`` and sample RSS while the block runs."""
    probe = Probe()
    probe.start_rss = probe.peak_rss = rss()

    async def poll(http: httpx.AsyncClient) -> None:
        while True:
            began = time.monotonic()
            response = await http.get(relay_url + "/healthz")
            assert response.status_code == 200
            probe.slowest = max(probe.slowest, time.monotonic() - began)
            probe.checks += 1
            probe.peak_rss = max(probe.peak_rss, rss())
            await anyio.sleep(interval)

    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http, anyio.create_task_group() as tg:
        tg.start_soon(poll, http)
        try:
            yield probe
        finally:
            tg.cancel_scope.cancel()
    probe.peak_rss = max(probe.peak_rss, rss())
    probe.end_rss = rss()


class Flood:
    """A script for a flood: ``head``, then ``piece`` until ``size`` bytes of pieces, then ``end``, to any request
    but one for the model ``normal``, which gets a short stream (``"one two"``) on the same server.

    It records the bytes of pieces sent, and whether the relay closed the connection (during the
    flood, or after its end); ``done`` is set once that is known.
    """

    def __init__(self, head: bytes, piece: bytes, size: int, end: bytes = LAST_CHUNK) -> None:
        self.head = head
        self.piece = piece
        self.size = size
        self.end = end
        self.sent = 0
        self.closed = False
        self.done = threading.Event()

    async def script(self, conn: Conn) -> None:
        while request := await conn.read_request():
            if b'"model":"normal"' in request:
                await conn.write(chunked_response(sse("one", " two")))
                continue
            try:
                await conn.write(self.head)
                while self.sent < self.size:
                    await conn.write(self.piece)
                    self.sent += len(self.piece)
                await conn.write(self.end)
                self.closed = await conn.closed_by_peer()
            except ConnectionError:
                self.closed = True
            finally:
                self.done.set()
            return
