"""A small HTTP/1.1 client for streaming responses from model servers.

Why not httpx: with 1,000 open streams httpx spends most of its time in its connection
pool, which it scans on every chunk read (bench/RESULTS.md has the comparison). Here each
connection is an ``asyncio.Protocol`` whose bytes go through httptools (C) straight into a
``ResponseHandler``'s callbacks: no task switch, no queue, no pool work per chunk. Idle
connections are kept per origin (with the proxy and TLS settings it is reached with: ``Origin``)
in a LIFO list and reused; a reused connection that turns out to be closed before answering is
retried once on a new one. Through a proxy, the tunnel (or the absolute-form request line) is
set up once per connection: nothing of it is in the path of a chunk.

A pooled connection is shared by every client, so it goes back to the pool only at a clean
message boundary: after a final response whose end the parser saw, with keep-alive, with no
byte after it (a byte that begins another message, in the same read or later, discards the
connection, as does one waiting unread in the socket when the connection is taken again).
Interim ``1xx`` heads are skipped (RFC 9110 §15.2); a ``101``, an interim head with a body, a
head over ``MAX_HEAD_BYTES`` or ``MAX_HEADERS`` (or as many bytes of chunk framing and
trailers with no content between), and a ``204`` or ``304`` (which no model
server sends to a streaming POST) end the exchange and the connection with it.

``Client.request`` connects, sends the request and waits for the response head; the body
then arrives through the handler. It raises ``UpstreamConnectError`` when the model server
cannot be reached, ``UpstreamTimeout`` when connecting or waiting for the head takes too
long, ``UpstreamProtocolError`` when the connection breaks or the server breaks HTTP before
the head, and is cancellable at every await.

No exception is ever kept on a future or on the connection once raised: one would hold its
traceback, the traceback its frames, and a frame the connection, a cycle that only the
collector frees (and until then everything the connection holds).
"""

from __future__ import annotations

import asyncio
import functools
import select
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, cast
from urllib.parse import urlsplit

import anyio
import httptools

from app.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from app.streaming.upstreams.egress import TLS, Proxy

# A response head (its interim heads included) past these ends the exchange: a peer cannot
# make the relay keep more of it than this.
MAX_HEAD_BYTES = 65_536
MAX_HEADERS = 100

# A read this large may have left more in the socket, which uvloop (libuv) would read at once, up
# to 32 times in the same pass of the loop: a flood of tiny SSE lines then held every other client
# for a second. Past it, reading pauses until the loop's next pass (``_Connection.data_received``).
LARGE_READ = 65_536

_FRAMING = (b"content-length", b"transfer-encoding")
_NO_BODY = (204, 304)


class ResponseHandler(Protocol):
    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
    def on_lost(self, exc: Exception) -> None: ...


class Origin:
    """Scheme, host and port of an upstream, with the path prefix of its base URL, and how it is reached.

    ``proxy`` (app/streaming/upstreams/egress.py): an ``https`` origin is reached through a
    CONNECT tunnel, an ``http`` one by requests in absolute form (``POST http://host/path``),
    as every HTTP client does with ``HTTP_PROXY``: proxies commonly allow CONNECT to port 443
    only, and the request is in clear text either way. ``tls``: the context an ``https`` origin
    is verified with (else the system's). ``key`` is everything that makes two connections
    differ, so the pool never lends one to an upstream it was not made for.
    """

    __slots__ = ("base_path", "host", "host_header", "key", "port", "proxy", "proxy_headers", "scheme", "target", "tls")

    def __init__(self, url: str, proxy: Proxy | None = None, tls: TLS | None = None) -> None:
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
        self.proxy = proxy
        self.tls = tls
        forwarded = proxy is not None and self.scheme == "http"
        # What precedes a request's path on its request line, and what follows its Host header: built once.
        self.target = (f"http://{self.host_header}" if forwarded else "") + self.base_path
        authorization = proxy.authorization if forwarded and proxy is not None else None
        self.proxy_headers = f"Proxy-Authorization: {authorization}\r\n" if authorization else ""
        self.key = (self.scheme, self.host, self.port, proxy.key if proxy else None, tls.key if tls else None)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.base_path}"


class _Stop(Exception):
    """Raised from a parser callback once the exchange has failed, so that the parser reads no further."""


class _Connection(asyncio.Protocol):
    """One TCP connection; carries one exchange at a time."""

    __slots__ = (
        "_bare", "_client", "_complete", "_failure", "_handler", "_head", "_head_bytes", "_header_bytes", "_header_count", "_parser",
        "_received", "_status", "_until_eof", "closed", "fileno", "headers", "idle_since", "origin", "reused", "serial", "transport",
    )

    def __init__(self, client: Client, origin: Origin) -> None:
        self._client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.fileno = -1
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.serial = 0  # counts exchanges, so a finished one cannot touch the next
        # It holds this protocol's callbacks, a cycle: made once connected, dropped once the connection is lost.
        self._parser: httptools.HttpResponseParser | None = None
        self._handler: ResponseHandler | None = None
        # Pending while the exchange waits for its final head; then (or on failure) dropped.
        self._head: asyncio.Future[int | None] | None = None
        self._failure: UpstreamError | None = None  # why the head failed, until the waiting request takes it
        self.headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # what arrived while the head was incomplete, over whole reads
        self._bare = 0  # what arrived since the last byte of content, over whole reads
        self._header_bytes = 0  # names and values the parser reported, within a read
        self._header_count = 0
        self._status = 0
        self._received = False
        self._until_eof = False
        self._complete = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._parser = httptools.HttpResponseParser(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fileno = sock.fileno()

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if self._handler is None or parser is None:  # bytes on an idle connection: the server is confused
            self.abort()
            return
        self._received = True
        self._bare += len(data)
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # _Stop arrives as a callback error
            self._lost(UpstreamProtocolError("upstream_malformed_http", f"malformed HTTP from the model server: {exc}", self._phase()))
            return
        if len(data) >= LARGE_READ and not self.closed and self.transport is not None:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._resume)
        if self._head is not None:
            # All of it was head. httptools joins the pieces of a header itself and reports it
            # only once whole: a never-ending value must be stopped here, before that.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._lost(_head_too_large())
        elif self._bare > MAX_HEAD_BYTES and self._handler is not None:
            # Chunk framing or trailers with no content: httptools joins the pieces of a trailer
            # as it does a header's, and a chunk extension or size may never end.
            self._lost(UpstreamProtocolError(
                "upstream_malformed_http", f"the model server sent over {MAX_HEAD_BYTES} bytes of chunk framing or trailers without content", "stream",
            ))

    def _resume(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.resume_reading()

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
            self._lost(UpstreamProtocolError("upstream_disconnected", message, self._phase()))
        finally:
            self._parser = None  # it holds this protocol's callbacks: a cycle that reference counting cannot free

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._handler is None:  # a message after the response ended: bytes nobody asked for
            self.abort()
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        self._header_count += 1
        if self._header_count > MAX_HEADERS or self._header_bytes > MAX_HEAD_BYTES:
            self._fail(_head_too_large())
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        headers, self.headers = self.headers, []  # the handler sees them once: a long stream need not keep them
        framed = any(name in _FRAMING for name, _ in headers)
        assert self._parser is not None  # called by the parser itself
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                self._fail(UpstreamProtocolError(
                    "upstream_switched_protocols", "the model server switched protocols (101) instead of answering", "first_token"))
            if framed or status < 100:  # an interim response has no content (RFC 9110 §15.2); the parser would read one
                self._fail(UpstreamProtocolError(
                    "upstream_malformed_http", f"malformed HTTP from the model server: an interim response {status} with a body", "first_token"))
            return  # 100 Continue, 103 Early Hints...: the final head follows
        self._status = status
        self._until_eof = not framed
        self._bare = 0  # the head has its own bound
        assert self._handler is not None and self._head is not None
        self._handler.on_response(status, headers)
        head, self._head = self._head, None
        head.set_result(status)

    def on_body(self, body: bytes) -> None:
        self._bare = 0
        if self._handler is not None:
            self._handler.on_body(body)

    def on_message_complete(self) -> None:
        if self._head is not None:  # an interim response's end
            return
        self._complete = True
        handler, self._handler = self._handler, None
        parser = self._parser
        if handler is not None and parser is not None and parser.should_keep_alive() and not self.closed and self._status not in _NO_BODY:
            # Bytes after this in the same read begin another message: on_message_begin discards the connection.
            self._client._release(self)
        else:
            self.abort()
        if handler is not None:
            handler.on_end()

    # exchange

    def start(self, request: bytes, handler: ResponseHandler) -> None:
        """Send ``request``; ``head`` then resolves to the final status, or to ``None`` if the exchange failed first."""
        assert self.transport is not None
        self.serial += 1
        self._handler = handler
        self.headers = []
        self._head_bytes = self._bare = self._header_bytes = self._header_count = 0
        self._received = False
        self._complete = False
        self._failure = None
        self._head = asyncio.get_running_loop().create_future()
        self.transport.write(request)

    @property
    def head(self) -> asyncio.Future[int | None]:
        assert self._head is not None
        return self._head

    def take_failure(self) -> UpstreamError:
        """Why the head resolved to ``None``; the connection keeps no reference to it."""
        failure, self._failure = self._failure, None
        assert failure is not None
        return failure

    def time_out(self, serial: int, seconds: float) -> None:
        """Exchange ``serial`` waited ``seconds`` for its head: it fails, and bytes that follow reach no handler."""
        if serial == self.serial and self._head is not None:
            self._lost(UpstreamTimeout("first_token", seconds))

    def _fail(self, exc: UpstreamError) -> None:
        """From a parser callback: the exchange ends with ``exc`` and the parser stops here."""
        self._lost(exc)
        raise _Stop

    def _lost(self, exc: UpstreamError) -> None:
        handler, self._handler = self._handler, None
        head, self._head = self._head, None
        self.abort()
        if head is not None:
            self._failure = exc
            head.set_result(None)
        elif handler is not None:
            handler.on_lost(exc)

    def _phase(self) -> str:
        return "first_token" if self._head is not None else "stream"

    @property
    def retriable(self) -> bool:
        """The head failed because a reused connection was closed before it answered anything."""
        return self.reused and not self._received and isinstance(self._failure, UpstreamProtocolError)

    def detach(self, serial: int) -> None:
        """The owner of exchange ``serial`` is done with it: if unfinished, it is aborted."""
        if serial == self.serial and not self._complete:
            self._handler = None
            self._head = None
            self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def discard(self) -> None:
        """Abort, and let go of what would hold this protocol in a cycle: its parser and its transport."""
        self.abort()
        self._parser = None
        self.transport = None


class _HeadDeadline:
    """Calls ``expire`` once ``seconds`` have passed, never before.

    uvloop rounds a timer to whole milliseconds and may run it up to half of one early; a
    head timeout that the total deadline bounds must not fire before it, or it would be
    taken for a first-token timeout (an upstream fault) instead. So an early wake re-arms.
    ``expire`` (``_Connection.time_out``) abandons the exchange at once: bytes that arrive
    in the same loop pass, before the waiting task resumes, reach no handler.
    """

    __slots__ = ("_deadline", "_expire", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float, expire: Callable[[], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._deadline = loop.time() + seconds
        self._handle = loop.call_at(self._deadline, self._fire)

    def _fire(self) -> None:
        if self._loop.time() < self._deadline:
            self._handle = self._loop.call_at(self._deadline, self._fire)
            return
        self._expire()

    def cancel(self) -> None:
        self._handle.cancel()


def _head_too_large() -> UpstreamProtocolError:
    message = f"the model server's response head is over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers"
    return UpstreamProtocolError("upstream_head_too_large", message, "first_token")


class _TunnelHead(asyncio.Protocol):
    """A connection to a proxy until its answer to CONNECT: ``head`` resolves to that head (``b""`` if the proxy hung up)."""

    def __init__(self, request: bytes, head: asyncio.Future[bytes]) -> None:
        self._request = request
        self._head = head
        self._received = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self._request)
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._received += data
        if b"\r\n\r\n" in self._received or len(self._received) > MAX_HEAD_BYTES:
            self._transport.pause_reading()  # what follows is the tunnel's: TLS takes the transport
            if not self._head.done():
                self._head.set_result(bytes(self._received))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._head.done():
            self._head.set_result(b"")


async def _tunnel(loop: asyncio.AbstractEventLoop, origin: Origin, proxy: Proxy, connection: _Connection, context: ssl.SSLContext) -> None:
    """Connect ``connection`` to ``origin`` through a CONNECT tunnel at ``proxy``, then TLS inside it (RFC 9110 §9.3.6).

    A proxy that refuses (any status but 2xx), hangs up, or sends more than its head before
    the TLS handshake fails the connect: ``UpstreamConnectError`` naming the proxy and its answer.
    """
    target = f"[{origin.host}]:{origin.port}" if ":" in origin.host else f"{origin.host}:{origin.port}"
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if proxy.authorization:
        request += f"Proxy-Authorization: {proxy.authorization}\r\n"
    head: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_connection(lambda: _TunnelHead((request + "\r\n").encode("latin-1"), head), proxy.host, proxy.port)
    try:
        answer = await head
        line = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        status = line.split(" ", 2)[1] if line.count(" ") >= 1 else ""
        if not answer.endswith(b"\r\n\r\n") or not (status.isdigit() and 200 <= int(status) < 300):
            said = f"it answered {line!r}" if line else "it closed the connection"
            raise UpstreamConnectError(f"the proxy at {proxy.url} did not open a tunnel to {target}: {said}")
        tls = await loop.start_tls(transport, connection, context, server_hostname=origin.host)
        if tls is None:
            raise UpstreamConnectError(f"the proxy at {proxy.url} closed the tunnel to {target} during the TLS handshake")
    except BaseException:
        transport.abort()
        raise
    connection.connection_made(tls)


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


# Idle connections kept per origin (nginx's upstream ``keepalive`` in bench/ keeps 1,024). When a
# burst of streams ends together, every connection beyond it is closed, and the next wave's
# requests, arriving a moment later, connect again; an idle connection costs a few KB, and none
# lives past ``idle_expiry``.
MAX_IDLE_PER_ORIGIN = 1024


class Client:
    """Opens exchanges with upstream origins, keeping idle connections for reuse."""

    def __init__(self, *, max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN, idle_expiry: float = 4.0) -> None:
        self._idle: dict[tuple[object, ...], deque[_Connection]] = {}
        self._open: set[_Connection] = set()  # idle or not: aclose() closes them all
        self._max_idle = max_idle_per_origin
        self._idle_expiry = idle_expiry
        self._ssl: ssl.SSLContext | None = None
        self._poll = select.poll()
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
        lines = [f"{method} {origin.target}{path} HTTP/1.1\r\nHost: {origin.host_header}\r\n{origin.proxy_headers}"]
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
            connection.start(request, handler)
            # Taken now: once the response ends, the connection may serve another request.
            serial = connection.serial
            # A timer fails the head rather than a cancel scope around the await: nothing to
            # enter, exit or cancel on the way of every request.
            expiry = _HeadDeadline(loop, head_timeout, functools.partial(connection.time_out, serial, head_timeout))
            try:
                status = await connection.head  # not kept in a local: a raise here must find no cycle
            except BaseException:
                connection.detach(serial)
                raise
            finally:
                expiry.cancel()
            if status is not None:
                return Exchange(connection, serial, status)
            if attempt == 1 and connection.retriable:
                continue  # the server closed an idle connection as we reused it
            raise connection.take_failure()
        raise AssertionError("unreachable")

    def _pooled(self, origin: Origin) -> _Connection | None:
        """The most recently idle live connection to ``origin``, if any; dead and expired ones are closed."""
        if self._closed:
            raise UpstreamConnectError("the relay is shutting down")
        idle = self._idle.get(origin.key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._idle_expiry and not self._unread(connection):
                connection.reused = True
                return connection
            connection.abort()
        return None

    def _unread(self, connection: _Connection) -> bool:
        """Bytes (or the end) wait in the socket, not yet read: read now, they would seem the next request's answer."""
        if connection.fileno < 0:
            return False
        self._poll.register(connection.fileno, select.POLLIN)
        try:
            return bool(self._poll.poll(0))
        finally:
            self._poll.unregister(connection.fileno)

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if origin.tls is None and self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = origin.tls.context if origin.tls is not None else self._ssl
        connection = _Connection(self, origin)
        proxy = origin.proxy
        where = f"the model server at {origin.host_header}" + (f" through the proxy at {proxy.url}" if proxy is not None else "")
        try:
            if proxy is None:
                await loop.create_connection(lambda: connection, origin.host, origin.port, ssl=context)
            elif context is None:  # http through a proxy: requests in absolute form, on a connection to the proxy
                await loop.create_connection(lambda: connection, proxy.host, proxy.port)
            else:
                await _tunnel(loop, origin, proxy, connection, context)
        except OSError as exc:
            connection.discard()  # refused or cancelled, its transport may never report the loss
            raise UpstreamConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from exc
        except BaseException:
            connection.discard()
            raise
        self._open.add(connection)
        return connection

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
