"""One generation: a request to a model server, turned into normalised events for a sink.

``Generation`` owns the upstream exchange and the phase deadlines (connect, first token,
idle between tokens, optional total) and guarantees that its sink receives exactly one
terminal event, whatever happens: end of stream, upstream fault, timeout or ``close()``.
It never raises a relay error to its caller: failures become the terminal ``Error``.

Deadlines after the response head use one timer per generation, re-armed lazily: each
event only stores the new idle deadline, and the timer, when it fires early, moves itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from app.errors import UpstreamError, UpstreamTimeout
from app.streaming.events import Delta, Error, Event, Finish
from app.streaming.request import GenerationRequest
from app.streaming.upstreams.adapters import ADAPTERS
from app.streaming.upstreams.http1 import Client, Exchange, Origin

logger = logging.getLogger("token_relay")

# Seconds an upstream body may take to end after the model's end marker before its connection is dropped.
END_OF_BODY_GRACE = 1.0


class Sink(Protocol):
    def push(self, event: Event) -> None: ...

    def flush(self) -> None:
        """The events pushed since the last flush arrived together: send them now."""


class Timeouts:
    __slots__ = ("connect", "first_token", "idle", "total")

    def __init__(self, connect: float, first_token: float, idle: float, total: float | None) -> None:
        self.connect = connect
        self.first_token = first_token
        self.idle = idle
        self.total = total


class Upstream:
    """A configured model server: where it is, how to talk to it, with which key."""

    def __init__(
        self, name: str, base_url: str, client: Client, timeouts: Timeouts, api_key: str | None = None, protocol: str = "openai",
    ) -> None:
        self.name = name
        self.adapter = ADAPTERS[protocol]
        self.origin = Origin(base_url)
        self.client = client
        self.timeouts = timeouts
        self.api_key = api_key


class Generation:
    __slots__ = (
        "_deadline", "_exchange", "_finished", "_loop", "_phase", "_request", "_request_id", "_sink", "_timer",
        "_total_deadline", "_upstream", "done", "tokens",
    )

    def __init__(self, upstream: Upstream, request: GenerationRequest, sink: Sink) -> None:
        self._upstream = upstream
        self._request: GenerationRequest | None = request  # dropped once sent: a waiting stream keeps no prompt
        self._request_id = request.request_id
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._exchange: Exchange | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._phase = "first_token"
        self._deadline = 0.0
        self._total_deadline = float("inf")
        self.done = False
        self._finished = False
        self.tokens = 0

    async def start(self) -> None:
        """Connect and send the request; events then flow to the sink until the terminal one."""
        if self.done:  # ended before it started (a shutdown, a client already gone)
            return
        timeouts = self._upstream.timeouts
        started = self._loop.time()
        if timeouts.total is not None:
            self._total_deadline = started + timeouts.total
        assert self._request is not None
        adapter = self._upstream.adapter
        path, headers, body = adapter.build_request(self._request, self._upstream.api_key)
        self._request = None
        handler = adapter.handler(self._emit, self._sink.flush)
        try:
            exchange = await self._upstream.client.request(
                self._upstream.origin, "POST", path, headers, body, handler,
                connect_timeout=min(timeouts.connect, self._total_left()),
                head_timeout=min(timeouts.first_token, self._total_left()),
            )
        except UpstreamTimeout as exc:
            fired = UpstreamTimeout("total", timeouts.total or 0.0) if self._total_left() <= 0 else exc
            self._emit(fired.event())
            return
        except UpstreamError as exc:
            self._emit(exc.event())
            return
        except Exception as exc:  # a defect here must still end the stream with its terminal event
            logger.exception("generation %s failed to start", self._request_id)
            self._emit(Error("relay_error", "internal_error", f"the relay failed: {type(exc).__name__}", self._phase))
            return
        self._exchange = exchange
        if self.done:  # the whole answer arrived with the head
            self._release(finished=self._finished)
            return
        if self._phase == "first_token":
            self._deadline = started + timeouts.first_token
        self._arm(min(self._deadline, self._total_deadline))

    @property
    def phase(self) -> str:
        return self._phase

    def close(self) -> None:
        """Abandon the generation: close the upstream now; the sink gets nothing more."""
        self.done = True
        self._release()

    def fail(self, error: Error) -> None:
        """End the generation with ``error`` (sent to the sink) and close the upstream."""
        self._emit(error)

    def _total_left(self) -> float:
        return max(self._total_deadline - self._loop.time(), 0.0)

    def _emit(self, event: Event) -> None:
        if self.done:
            return
        if isinstance(event, Delta):
            self.tokens += 1
            self._phase = "stream"
            self._deadline = self._loop.time() + self._upstream.timeouts.idle
        elif isinstance(event, (Finish, Error)):
            self.done = True
            self._finished = type(event) is Finish
            self._release(finished=self._finished)
        self._sink.push(event)

    def _release(self, *, finished: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        exchange, self._exchange = self._exchange, None
        if exchange is None:
            return
        if finished:
            # The model's end marker usually comes just before the end of the HTTP body, often
            # in a later packet: give it a moment, so the connection goes back to the pool. If
            # the body has ended by then, close() does nothing.
            self._loop.call_later(END_OF_BODY_GRACE, exchange.close)
        else:
            exchange.close()

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.done:
            return
        now = self._loop.time()
        timeouts = self._upstream.timeouts
        if now >= self._total_deadline:
            self._emit(UpstreamTimeout("total", timeouts.total or 0.0).event())
        elif now >= self._deadline:
            seconds = timeouts.first_token if self._phase == "first_token" else timeouts.idle
            self._emit(UpstreamTimeout(self._phase, seconds).event())
        else:
            self._arm(min(self._deadline, self._total_deadline))
