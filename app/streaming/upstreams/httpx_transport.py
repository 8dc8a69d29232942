"""The second transport: httpx (HTTP/1.1, or HTTP/2 with ``http2 = true``), for what the fast client does not do.

Which HTTP: with ``http2``, HTTP/2 only (chosen by ALPN over TLS, by prior knowledge over
``http://``), its connections pooled and shared by concurrent streams: HTTP/2's framing
keeps every stream's bytes apart. Without it, HTTP/1.1 on a new connection per request,
never pooled: httpx (h11) takes bytes after a response (after a ``204`` or ``304``, or past
the last chunk in the same read) for the beginning of the next one, so a pooled connection
could hand one client bytes the server wrote for nobody, or for another
(tests/streaming/test_hostile_upstream.py shows it). The fast client pools only at a clean
boundary; it remains the way to reuse HTTP/1.1 connections.

It feeds an adapter's handler exactly as ``http1`` does (``on_response``, ``on_body`` per
piece read, then ``on_end`` or ``on_lost``) and gives ``Generation`` the same exchange:
``status`` and ``close()``. So it is also the reference the fast client is tested against
(tests/streaming/test_transports.py).

Phases: one deadline per request, ``connect_timeout`` until the request's head goes out (the
TCP connection, a proxy's tunnel and TLS, or a pooled connection), then ``head_timeout`` from
there to the response head: the same two phases and errors as ``http1``. httpx's own
timeouts are off; the relay's phase timers (``Generation``) own the body.

The request is sent and its body read by a task of the transport's task group (the
lifespan's), since httpx reads a response by awaiting it; ``close()`` cancels that task,
which closes the response at once: the connection (HTTP/1.1), or the stream (HTTP/2).
httpcore does not reset an HTTP/2 stream closed before its end (encode/httpcore#943, closed
unfixed): the server would go on generating, and the connection's flow-control window would
shrink for good. So
``_reset`` sends the ``RST_STREAM (CANCEL)`` itself, through the h2 connection httpcore holds;
if httpcore's insides ever change shape, it closes the whole connection instead. A request
closed before its head cannot be reached that way (httpcore holds it alone until the head):
on HTTP/2 it runs on to its head, then is reset; one whose head does not come before its
deadline is cancelled, and its stream is left to the server.

What httpx decides here and the fast client does differently (each asserted by the
differential test, tests/streaming/test_transports.py): a response head may grow to 100 KiB
while incomplete, with no cap on the number of fields (h11's bound; ``http1``: 64 KiB and 100
fields); an interim (1xx) head's ``Content-Length`` is ignored, where ``http1`` refuses the
response. A reused connection that the server had closed is not retried by httpx.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import anyio
import h2.errors
import httpcore
import httpx
from anyio.abc import TaskGroup

from app.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from app.streaming.upstreams.http1 import Origin, ResponseHandler

logger = logging.getLogger("token_relay")

MAX_IDLE_PER_ORIGIN = 256
IDLE_EXPIRY = 4.0


class _Phase:
    """Which phase a request is in; the trace callback moves it to ``first_token`` as the request's head goes out."""

    __slots__ = ("deadline", "head_timeout", "name")

    def __init__(self, head_timeout: float) -> None:
        self.deadline: asyncio.Timeout | None = None
        self.head_timeout = head_timeout
        self.name = "connect"

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        if self.name == "connect" and event.endswith("send_request_headers.started") and info["request"].method != b"CONNECT":
            self.name = "first_token"
            assert self.deadline is not None
            self.deadline.reschedule(asyncio.get_running_loop().time() + self.head_timeout)


class HttpxExchange:
    """One request, sent and read by a task of the transport's; ``close()`` ends it at once if its body has not ended.

    ``head`` resolves to the response's status once ``on_response`` has been called, or to
    ``None`` if the request failed first (``take_failure`` says why). After ``close()`` the
    handler hears nothing more. Closed before its head, an HTTP/2 request is let run until the
    head arrives (or its deadline passes), and its stream is reset then: cancelled on the way,
    httpcore would leave it open on the server.
    """

    __slots__ = ("_complete", "_failure", "_handler", "_http2", "_response", "_scope", "head", "status")

    def __init__(self, handler: ResponseHandler, http2: bool) -> None:
        self._handler: ResponseHandler | None = handler
        self._http2 = http2
        self._scope = anyio.CancelScope()
        self._response: httpx.Response | None = None
        self._complete = False
        self._failure: UpstreamError | None = None
        self.head: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.status = 0

    def close(self) -> None:
        self._handler = None
        if self._response is not None or not self._http2:
            self._scope.cancel()

    def take_failure(self) -> UpstreamError:
        failure, self._failure = self._failure, None
        assert failure is not None
        return failure

    async def run(self, client: httpx.AsyncClient, request: httpx.Request, phase: _Phase, connect_timeout: float) -> None:
        try:
            with self._scope:
                try:
                    async with asyncio.timeout(connect_timeout) as phase.deadline:
                        self._response = await client.send(request, stream=True)
                except TimeoutError:
                    self._failure = UpstreamTimeout(phase.name, connect_timeout if phase.name == "connect" else phase.head_timeout)
                    return
                except httpx.HTTPError as exc:
                    self._failure = _translate(exc, "first_token" if phase.name == "first_token" else "connect")
                    return
                request.extensions.pop("trace", None)  # httpcore reads it at every step: the body's pieces need not call it
                try:
                    await self._read(self._response)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._finish(self._response)
        finally:
            if not self.head.done():
                if self._failure is None:
                    self._failure = UpstreamConnectError("the relay is shutting down")
                self.head.set_result(None)

    async def _read(self, response: httpx.Response) -> None:
        """The head to the handler, then the body; then ``on_end`` or ``on_lost``, unless ``close()`` came first."""
        if self._handler is None:  # closed before its head: nobody waits for the answer
            return
        self._handler.on_response(response.status_code, [(name.lower(), value) for name, value in response.headers.raw])
        self.status = response.status_code
        if not self.head.done():
            self.head.set_result(response.status_code)
        error: UpstreamError | None = None
        try:
            async for piece in response.aiter_raw():
                if self._handler is not None:
                    self._handler.on_body(piece)
            self._complete = True
        except httpx.HTTPError as exc:
            error = _translate(exc, "stream")
        handler = self._handler
        if handler is None:
            return
        if error is None:
            handler.on_end()
        else:
            handler.on_lost(error)

    async def _finish(self, response: httpx.Response) -> None:
        if not self._complete and response.http_version == "HTTP/2":
            await _reset(response)
        await response.aclose()


async def _reset(response: httpx.Response) -> None:
    """Reset the HTTP/2 stream of an unfinished ``response`` (which httpcore does not do: see the module's docstring)."""
    inner = getattr(getattr(getattr(response.stream, "_stream", None), "_httpcore_stream", None), "_stream", None)
    connection = getattr(inner, "_connection", None)
    stream_id = response.extensions.get("stream_id")
    if isinstance(connection, httpcore.AsyncHTTP2Connection) and isinstance(stream_id, int):
        try:
            connection._h2_state.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            await connection._write_outgoing_data(inner._request)  # type: ignore[union-attr]
        except Exception as exc:  # the stream had ended meanwhile, or the connection failed: nothing is left to reset
            logger.debug("HTTP/2 stream %d not reset: %r", stream_id, exc)
        return
    # Not the shape of httpcore this was written for: closing the connection is the one sure way to end the stream.
    network = response.extensions.get("network_stream")
    if network is not None:
        await network.aclose()


def _translate(exc: httpx.HTTPError, phase: str) -> UpstreamError:
    """httpx's error as the relay's, with the codes ``http1`` gives the same fault."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ProxyError):
        return UpstreamConnectError(f"the proxy did not open a tunnel: {text}")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return UpstreamConnectError(f"cannot connect to the model server: {text}")
    if "_SWITCH_UPGRADE" in text:  # h11's word for a 101 nobody asked for
        return UpstreamProtocolError("upstream_switched_protocols", "the model server switched protocols (101) instead of answering", phase)
    if "Receive buffer too long" in text or "line too long" in text:  # h11's bound on a head, or on a chunk's framing
        code = "upstream_head_too_large" if phase == "first_token" else "upstream_malformed_http"
        return UpstreamProtocolError(code, f"the model server's response head or framing is too large: {text}", phase)
    if isinstance(exc, httpx.ReadError | httpx.WriteError) or "peer closed" in text or "disconnected" in text:
        return UpstreamProtocolError("upstream_disconnected", f"the model server closed the connection: {text}", phase)
    return UpstreamProtocolError("upstream_malformed_http", f"malformed HTTP from the model server: {text}", phase)


class HttpxTransport:
    """httpx clients, one per way of reaching upstreams (proxy, TLS, HTTP/2), and the task group their bodies are read in."""

    def __init__(self, tasks: TaskGroup) -> None:
        self.tasks = tasks
        self._clients: dict[tuple[object, ...], httpx.AsyncClient] = {}
        self._closed = False

    def _client(self, origin: Origin, http2: bool) -> httpx.AsyncClient:
        key = (origin.proxy.key if origin.proxy else None, origin.tls.key if origin.tls else None, http2)
        client = self._clients.get(key)
        if client is None:
            proxy = origin.proxy
            headers = {"Proxy-Authorization": proxy.authorization} if proxy is not None and proxy.authorization else None
            verify: ssl.SSLContext | bool = origin.tls.context if origin.tls is not None else True
            # HTTP/2 only, or HTTP/1.1 unpooled: see the module's docstring.
            idle = MAX_IDLE_PER_ORIGIN if http2 else 0
            client = httpx.AsyncClient(
                http1=not http2, http2=http2, verify=verify, trust_env=False, timeout=None, follow_redirects=False,
                proxy=httpx.Proxy(proxy.url, headers=headers) if proxy is not None else None,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=idle, keepalive_expiry=IDLE_EXPIRY),
            )
            for name in list(client.headers):  # no User-Agent, Accept or Accept-Encoding of its own: a gzipped stream would be unreadable
                del client.headers[name]
            self._clients[key] = client
        return client

    def for_http2(self, http2: bool) -> _Bound:
        return _Bound(self, http2)

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(
        self, origin: Origin, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes, handler: ResponseHandler, *,
        connect_timeout: float, head_timeout: float, http2: bool = False,
    ) -> HttpxExchange:
        if self._closed:
            raise UpstreamConnectError("the relay is shutting down")
        client = self._client(origin, http2)
        phase = _Phase(head_timeout)
        request = client.build_request(method, origin.url + path, headers=list(headers), content=body, extensions={"trace": phase.trace})
        exchange = HttpxExchange(handler, http2)
        self.tasks.start_soon(exchange.run, client, request, phase, connect_timeout)
        try:
            status = await asyncio.shield(exchange.head)
        except BaseException:
            exchange.close()
            raise
        if status is None:
            raise exchange.take_failure()
        return exchange

    async def aclose(self) -> None:
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


class _Bound:
    """``HttpxTransport`` with HTTP/2 on or off: the ``Transport`` an upstream holds."""

    __slots__ = ("_http2", "_transport")

    def __init__(self, transport: HttpxTransport, http2: bool) -> None:
        self._transport = transport
        self._http2 = http2

    @property
    def closed(self) -> bool:
        return self._transport.closed

    async def request(
        self, origin: Origin, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes, handler: ResponseHandler, *,
        connect_timeout: float, head_timeout: float,
    ) -> HttpxExchange:
        return await self._transport.request(origin, method, path, headers, body, handler, connect_timeout=connect_timeout,
                                             head_timeout=head_timeout, http2=self._http2)
