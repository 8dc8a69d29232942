"""How the relay's server takes connections: a deadline for each request's head and body, and a cap per process.

uvicorn closes a connection that idles between requests (``timeout_keep_alive``), but not one
that is slow to send a request: a client that never finishes its head keeps its socket for
ever, and enough of them use up the process's file descriptors. ``RelayProtocol`` is uvicorn's
httptools protocol with one timer per connection, armed only while the client owes part of a
request:

- its head, for ``request_head_timeout`` from the accept (or, on a kept-alive connection, from
  the first byte of the next request); past it the connection is closed, after a 408 if part of
  a head came;
- its body, for ``request_body_timeout`` in all from the end of the head (a total, so that a
  body trickled byte by byte is cut off too); past it the connection is closed, and the route
  that reads the body sees the client gone.

Neither httptools nor uvicorn bounds a request's head: httptools joins the pieces of a header
by concatenation, and uvicorn keeps every header it is given (a chunked body's trailers too).
So what arrives while the client owes a head, and, in a body, what arrives with no byte of the
body (chunk framing, trailers), is capped at ``max_request_head_bytes``: past it a head gets a
431 (where a 408 would get one) and the connection is closed.

While the app has the whole request (a stream may last minutes), nothing is armed. A request
that arrives whole in one read, the usual case, arms nothing either: the callbacks only count
the changes of phase, and the timer is reconsidered after a read in which they moved. While
uvicorn itself has stopped reading (flow control, a pipelined request waiting its turn), an
expired deadline starts again: that wait is not the client's.

Past ``max_connections`` open connections, a new one never reaches the relay: its request is
answered at once, 503 ``too_many_connections``, or, for an EventSource reader, 200 with only a
``retry:`` hint (a browser's EventSource gives up for good on anything but a 200), and it is
closed. Past the cap and ``ANSWERED_PAST_THE_CAP`` more, a connection is closed unread, so that
whatever the flood the process keeps the file descriptors it answers with.

On a graceful shutdown (uvicorn's, on SIGTERM or SIGINT, in one process or in each of
``--workers``), uvicorn stops accepting, calls ``shutdown()`` on every open connection, and
waits up to its graceful-shutdown timeout (``drain_timeout``) for responses to finish: a stream
would only be cut when that time ran out. The first ``shutdown()`` therefore calls the app's
``shut_down`` hook (in its lifespan state), which ends every generation in flight with a
``shutting_down`` error: each upstream is closed, each writer sends its terminal event, and a
generation that starts later (a request still being read) is refused with 503. Signals stay
uvicorn's: the app installs no handler. A resumable stream nobody is reading has no connection;
the lifespan's end cancels it, and its log gets the same ``shutting_down`` terminal event.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Protocol, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.errors import RequestError
from app.routes.http import SSE_HEADERS, send_error, send_json
from app.schemas import ErrorBody, ErrorEnvelope, encoder
from app.settings import Settings
from app.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("token_relay")

# Connections past the cap that are still read and answered; they take their files from the
# spare ones of app/runtime.py.
ANSWERED_PAST_THE_CAP = 128

# Seconds a refused connection stays open after its answer, half-closed and no longer read: closed
# with unread bytes, a socket sends a reset, which destroys an answer the client has not read yet.
LINGER = 2.0

# What the client owes on a connection: a request head, the rest of a body, or nothing.
_HEAD, _BODY, _NOTHING = 0, 1, 2

_EVENTS = re.compile(r"^/v1/streams/[^/]+/events$")
_CLOSE = (b"connection", b"close")


class OverCapacity:
    """The app of a connection past the cap: a ``retry:`` hint for an EventSource reader, 503 for the rest.

    ``/healthz`` still answers 200: the process is alive and serving the connections it has, and
    a liveness probe that failed here would have a flooded but healthy relay restarted, dropping
    every stream it holds. ``/readyz`` answers 503, so a balancer sends new clients elsewhere.
    """

    def __init__(self, max_connections: int, busy_retry_ms: int) -> None:
        self.busy = b"retry: %d\n: busy\n\n" % busy_retry_ms
        self.refusal = RequestError(
            503, "too_many_connections", f"the relay is at its limit of {max_connections} connections; retry shortly",
            headers={"Retry-After": "1", "Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "GET" and _EVENTS.match(scope["path"]):
            await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, _CLOSE]})
            await send({"type": "http.response.body", "body": self.busy})
            return
        if scope["path"] == "/healthz":
            await send_json(send, 200, b'{"status":"ok"}', [_CLOSE])
            return
        await send_error(send, self.refusal)


class ConnectionGuard:
    """One process's limits on its connections, and the app that answers those past the cap (``over_capacity``)."""

    def __init__(self, settings: Settings, max_connections: int, over_capacity: ASGIApp, access_log: logging.Logger | None = None) -> None:
        self.head_timeout = settings.request_head_timeout
        self.body_timeout = settings.request_body_timeout
        self.max_head_bytes = settings.max_request_head_bytes
        self.max_connections = max_connections
        self.over_capacity = over_capacity
        self.access_log = access_log  # what writes the access line in uvicorn's logger's stead (app/access_log.py), if anything
        self.timed_out = _refusal(408, f"the request head did not arrive within {self.head_timeout:g} s", "request_timeout")
        self.too_large = _refusal(431, f"the request head is larger than {self.max_head_bytes} bytes", "request_head_too_large")


def _refusal(status: int, message: str, code: str) -> tuple[bytes, bytes]:
    """The status line of a refusal, and what follows uvicorn's own headers (date, server): the rest of its head and its body."""
    body = encoder.encode(ErrorEnvelope(ErrorBody(message=message, type="invalid_request_error", code=code)))
    return STATUS_LINE[status], b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body)


class _Guarded(Protocol):
    guard: ConnectionGuard


class RelayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with deadlines for a request's head and body and the cap on connections.

    Its Config must have a ``guard`` (app/server.py's ``RelayConfig`` has).
    """

    # uvicorn's protocol sets 27 attributes; past 30 an instance's dict no longer shares its keys
    # with the class's and costs every connection 1.3 KB more. The relay's own fields are slots.
    __slots__ = ("_bare", "_deadline", "_lingering", "_moves", "_owes", "_timed", "guard")

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = cast(_Guarded, config).guard
        if self.access_log and self.guard.access_log is not None:
            self.access_logger = self.guard.access_log
        self._owes = _HEAD
        self._moves = 0  # changes of _owes so far
        self._timed = 0  # the value of _moves that the deadline was armed for
        self._bare = 0  # bytes, over whole reads, since the phase began or the body's last byte
        self._lingering = False  # answered and half-closed: nothing more is read
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        past = len(self.connections) - self.guard.max_connections
        if past > ANSWERED_PAST_THE_CAP:
            transport.close()
            return
        if past > 0:
            if past == 1:
                logger.warning("at the limit of %d connections (RELAY_MAX_CONNECTIONS): new ones are refused", self.guard.max_connections)
            self.app = self.guard.over_capacity
        self._deadline = self.loop.call_later(self.guard.head_timeout, self._expire)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        self._bare += len(data)
        super().data_received(data)
        if self._bare > self.guard.max_head_bytes and self._owes != _NOTHING:
            self._refuse(self.guard.too_large)
        elif self._moves != self._timed:
            self._retime()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._bare = 0
        if self._owes == _NOTHING:
            self._owes = _HEAD
            self._moves += 1

    def on_headers_complete(self) -> None:
        self._owes = _BODY
        self._moves += 1
        self._bare = 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._bare = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._owes = _NOTHING
        self._moves += 1
        self._bare = 0
        super().on_message_complete()

    def shutdown(self) -> None:
        # uvicorn's graceful shutdown (on SIGTERM or SIGINT, in each worker) starts here, on every open connection.
        drain = self.app_state.get("shut_down")
        if drain is not None:
            drain()
        super().shutdown()

    def _retime(self) -> None:
        self._timed = self._moves
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._owes != _NOTHING:
            self._deadline = self.loop.call_later(self.guard.head_timeout if self._owes == _HEAD else self.guard.body_timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:  # closed, or upgraded
            return
        if self.flow.read_paused:
            self._retime()
            return
        self._refuse(self.guard.timed_out)

    def _refuse(self, refusal: tuple[bytes, bytes]) -> None:
        """Close the connection, after ``refusal`` if the client owes a head (then it lingers: ``LINGER``)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self.transport.is_closing():
            return
        # An answer only where it cannot be mistaken for part of another: for a head begun
        # (``scope`` is set by its first byte) after the previous response ended.
        if self._owes == _HEAD and self.scope is not None and (self.cycle is None or self.cycle.response_complete):
            status, rest = refusal
            self.transport.write(b"".join([status, *(b"%b: %b\r\n" % header for header in self.server_state.default_headers), rest]))
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.transport.pause_reading()  # a flooding client is held by TCP's flow control, at no cost
                self._lingering = True
                self._deadline = self.loop.call_later(LINGER, self.transport.close)
                return
        self.transport.close()
