"""A small HTTP/1.1 client for streaming responses from model servers.

Why not httpx: with 1,000 open streams httpx spends most of its time in its connection
pool, which it scans on every chunk read (bench/RESULTS.md has the comparison). Here each
connection is an ``asyncio.Protocol`` whose bytes go through httptools (C) straight into a
``ResponseHandler``'s callbacks: no task switch, no queue, no pool work per chunk. Idle
connections are kept per origin in a LIFO list and reused; a reused connection that turns
out to be closed before answering is retried once on a new one.

``Client.request`` connects, sends the request and waits for the response head; the body
then arrives through the handler. It raises ``UpstreamConnectError`` when the model server
cannot be reached, ``UpstreamTimeout`` when connecting or waiting for the head takes too
long, ``UpstreamProtocolError`` when the connection breaks before the head, and is
cancellable at every await.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, cast
from urllib.parse import urlsplit

import anyio
import httptools

from app.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout


class ResponseHandler(Protocol):
    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
    def on_lost(self, exc: Exception) -> None: ...


class Origin:
    """Scheme, host and port of an upstream, with the path prefix of its base URL."""

    __slots__ = ("base_path", "host", "host_header", "port", "scheme")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default_port
        self.base_path = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


class _Connection(asyncio.Protocol):
    """One TCP connection; carries one exchange at a time."""

    __slots__ = (
        "_client", "_complete", "_handler", "_head", "_parser", "_received", "_until_eof", "closed",
        "headers", "idle_since", "origin", "reused", "serial", "transport",
    )

    def __init__(self, client: Client, origin: Origin) -> None:
        self._client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.serial = 0  # counts exchanges, so a finished one cannot touch the next
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)  # dropped when the connection is lost
        self._handler: ResponseHandler | None = None
        self._head: asyncio.Future[int] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self._received = False
        self._until_eof = False
        self._complete = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if self._handler is None or parser is None:  # bytes on an idle connection: the server is confused
            self.abort()
            return
        self._received = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._lost(UpstreamProtocolError("upstream_malformed_http", f"malformed HTTP from the model server: {exc}", "stream"))

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._client.forget(self)
        try:
            if self._handler is None or self._complete:
                return
            if exc is None and self._until_eof:
                self.on_message_complete()
                return
            message = "the model server closed the connection" + (f": {exc}" if exc else " before the response ended")
            self._lost(UpstreamProtocolError("upstream_disconnected", message, "first_token" if self._head is not None and not self._head.done() else "stream"))
        finally:
            self._parser = None  # it holds this protocol's callbacks: a cycle that reference counting cannot free

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        headers = self.headers
        names = {name for name, _ in headers}
        self._until_eof = b"content-length" not in names and b"transfer-encoding" not in names
        assert self._parser is not None  # called by the parser itself
        status = self._parser.get_status_code()
        assert self._handler is not None
        self._handler.on_response(status, headers)
        self.headers = []  # the handler has seen them: a long stream need not keep them
        if self._head is not None and not self._head.done():
            self._head.set_result(status)

    def on_body(self, body: bytes) -> None:
        if self._handler is not None:
            self._handler.on_body(body)

    def on_message_complete(self) -> None:
        self._complete = True
        handler, self._handler = self._handler, None
        if self._parser is not None and self._parser.should_keep_alive() and not self.closed:
            self._client._release(self)
        else:
            self.abort()
        if handler is not None:
            handler.on_end()

    # exchange

    def start(self, request: bytes, handler: ResponseHandler) -> asyncio.Future[int]:
        assert self.transport is not None
        self.serial += 1
        self._handler = handler
        self.headers = []
        self._received = False
        self._complete = False
        self._head = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._head

    def _lost(self, exc: Exception) -> None:
        handler, self._handler = self._handler, None
        self.abort()
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        elif handler is not None:
            handler.on_lost(exc)

    @property
    def received_anything(self) -> bool:
        return self._received

    @property
    def complete(self) -> bool:
        return self._complete

    def detach(self, serial: int) -> None:
        """The owner of exchange ``serial`` is done with it: if unfinished, it is aborted."""
        if serial == self.serial and not self._complete:
            self._handler = None
            self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _HeadDeadline:
    """Fails ``head`` with ``UpstreamTimeout`` once ``seconds`` have passed, never before.

    uvloop rounds a timer to whole milliseconds and may run it up to half of one early; a
    head timeout that the total deadline bounds must not fire before it, or it would be
    taken for a first-token timeout (an upstream fault) instead. So an early wake re-arms.
    When it fires, the exchange is abandoned at once (``abandon``): bytes that arrive in
    the same loop pass, before the waiting task resumes, reach no handler.
    """

    __slots__ = ("_abandon", "_deadline", "_handle", "_head", "_loop", "_seconds")

    def __init__(self, loop: asyncio.AbstractEventLoop, head: asyncio.Future[int], seconds: float, abandon: Callable[[], None]) -> None:
        self._loop = loop
        self._head = head
        self._seconds = seconds
        self._abandon = abandon
        self._deadline = loop.time() + seconds
        self._handle = loop.call_at(self._deadline, self._fire)

    def _fire(self) -> None:
        if self._head.done():
            return
        if self._loop.time() < self._deadline:
            self._handle = self._loop.call_at(self._deadline, self._fire)
            return
        self._head.set_exception(UpstreamTimeout("first_token", self._seconds))
        self._abandon()

    def cancel(self) -> None:
        self._handle.cancel()


class Exchange:
    """One request in flight; ``close()`` aborts it if the response has not ended.

    The response's headers went to the handler's ``on_response``; they are not kept.
    """

    __slots__ = ("_connection", "_serial", "status")

    def __init__(self, connection: _Connection, serial: int, status: int) -> None:
        self._connection = connection
        self._serial = serial
        self.status = status

    def close(self) -> None:
        self._connection.detach(self._serial)


class Client:
    """Opens exchanges with upstream origins, keeping idle connections for reuse."""

    def __init__(self, *, max_idle_per_origin: int = 256, idle_expiry: float = 4.0) -> None:
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._open: set[_Connection] = set()  # idle or not: aclose() closes them all
        self._max_idle = max_idle_per_origin
        self._idle_expiry = idle_expiry
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self,
        origin: Origin,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        handler: ResponseHandler,
        *,
        connect_timeout: float,
        head_timeout: float,
    ) -> Exchange:
        lines = [f"{method} {origin.base_path}{path} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        request = "".join(lines).encode("latin-1") + body
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            connection = self._pooled(origin)
            if connection is None:
                try:
                    with anyio.fail_after(connect_timeout):
                        connection = await self._connect(origin)
                except TimeoutError:
                    raise UpstreamTimeout("connect", connect_timeout) from None
            head = connection.start(request, handler)
            # Taken now: once the response ends, the connection may serve another request.
            serial = connection.serial
            # A timer fails the head rather than a cancel scope around the await: nothing to
            # enter, exit or cancel on the way of every request.
            expiry = _HeadDeadline(loop, head, head_timeout, functools.partial(connection.detach, serial))
            try:
                status = await head
            except UpstreamTimeout:
                connection.detach(serial)  # its handler must hear nothing more: the caller may try elsewhere
                raise
            except UpstreamProtocolError:
                connection.abort()
                if attempt == 1 and connection.reused and not connection.received_anything:
                    continue  # the server closed an idle connection as we reused it
                raise
            except BaseException:
                connection.detach(serial)
                raise
            finally:
                expiry.cancel()
            return Exchange(connection, serial, status)
        raise AssertionError("unreachable")

    def _pooled(self, origin: Origin) -> _Connection | None:
        """The most recently idle live connection to ``origin``, if any; dead and expired ones are closed."""
        if self._closed:
            raise UpstreamConnectError("the relay is shutting down")
        idle = self._idle.get(origin.key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._idle_expiry:
                connection.reused = True
                return connection
            connection.abort()
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            _, protocol = await loop.create_connection(
                lambda: _Connection(self, origin), origin.host, origin.port, ssl=context
            )
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to the model server at {origin.host_header}: {exc.strerror or exc}") from exc
        self._open.add(protocol)
        return protocol

    def forget(self, connection: _Connection) -> None:
        self._open.discard(connection)

    def _release(self, connection: _Connection) -> None:
        if self._closed:
            connection.abort()
            return
        idle = self._idle.setdefault(connection.origin.key, deque())
        if len(idle) >= self._max_idle:
            idle.popleft().abort()  # the longest idle
        connection.idle_since = time.monotonic()
        idle.append(connection)

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Close every connection, idle or still finishing a response (one in its end-of-body grace, say)."""
        self._closed = True
        self._idle.clear()
        for connection in list(self._open):
            connection.abort()
