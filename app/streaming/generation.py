"""One generation: a request to a model server, turned into normalised events for a sink.

``Generation`` owns the upstream exchange and the phase deadlines (connect, first token,
idle between tokens, optional total) and guarantees that its sink receives exactly one
terminal event, whatever happens: end of stream, upstream fault, timeout or ``close()``.
It never raises a relay error to its caller: failures become the terminal ``Error``.

Failover: a route may list several upstreams. Until the first event reaches the sink (the
first part of any kind: content, reasoning, a tool call, a refusal; or a finish or an error
that is not the upstream's fault) nothing the client can tell apart has been sent: the
response head and heartbeat comments carry no content. Up to that point an upstream fault
(connect error or timeout, 5xx, 429, first-token timeout, a stream that breaks or errs
before its first part) sends the request to the next upstream of the route instead of to
the client. From the first event on, the generation belongs to that upstream and a failure
is the terminal ``Error``. Upstreams whose circuit is open, or at their concurrency limit,
are skipped.

Deadlines after the response head use one timer per generation, re-armed lazily: each
event only stores the new idle deadline, and the timer, when it fires early, moves itself.
Every part counts as progress, for the first-token deadline as for the idle one: a model
that reasons (or writes a tool call's arguments) longer than the first-token timeout is alive.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, assert_never

import msgspec

from app.errors import UpstreamError, UpstreamTimeout
from app.streaming.events import Delta, Error, Event, Finish, Logprobs, Reasoning, RedactedReasoning, Refusal, ToolCall, Usage
from app.streaming.request import GenerationRequest
from app.streaming.routing import Circuit, Route, Target, Timeouts, Upstream
from app.streaming.upstreams.transport import Exchange

__all__ = ["Generation", "Route", "Sink", "Timeouts", "Upstream", "upstream_fault"]

logger = logging.getLogger("token_relay")

# Seconds an upstream body may take to end after the model's end marker before its connection is dropped.
END_OF_BODY_GRACE = 1.0


class Sink(Protocol):
    def push(self, event: Event) -> None: ...

    def flush(self) -> None:
        """The events pushed since the last flush arrived together: send them now."""

    def opened(self) -> None:
        """The upstream's head has arrived with a good status: a client may now be told that its stream has begun."""


def upstream_fault(error: Error) -> bool:
    """Whether ``error`` is the upstream's failure (another upstream may do better), not the request's or the relay's."""
    if error.type == "timeout":
        return error.code != "total_timeout"
    return error.type == "upstream_error" and not error.rejected


class Generation:
    __slots__ = (
        "_attempt", "_committed", "_deadline", "_exchange", "_finished", "_first", "_held", "_loop", "_phase", "_probe", "_request",
        "_request_id", "_route", "_sink", "_timer", "_total_deadline", "_upstream", "done", "tokens",
    )

    def __init__(self, route: Route | Upstream, request: GenerationRequest, sink: Sink) -> None:
        self._route = route if isinstance(route, Route) else Route.to(route)
        self._upstream = self._route.targets[0].upstream
        self._request: GenerationRequest | None = request  # dropped once sent for good: a waiting stream keeps no prompt
        self._request_id = request.request_id
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._exchange: Exchange | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._phase = "first_token"
        self._deadline = 0.0
        self._total_deadline = float("inf")
        self._first: asyncio.Future[Error | None] | None = None  # set while a failed attempt may still fail over
        self._committed = False  # an event went to the sink: no more failover
        self._held: Circuit | None = None  # the circuit whose slot this generation holds
        self._probe = False
        self._attempt = 0
        self.done = False
        self._finished = False
        self.tokens = 0

    async def start(self) -> None:
        """Connect and send the request (to the next upstream, while one fails before its first token).

        With a fallback left, this returns once the first event went to the sink; on the last
        upstream, once its response head has arrived: events then flow to the sink by callback.
        """
        if self.done:  # ended before it started (a shutdown, a client already gone)
            return
        targets = self._route.targets
        total = targets[0].upstream.timeouts.total
        if total is not None:
            self._total_deadline = self._loop.time() + total
        failure: Error | None = None
        for index, target in enumerate(targets):
            probe = target.upstream.circuit.acquire()
            if probe is None:
                logger.debug("request %s: upstream %s skipped (circuit %s, %d in flight)", self._request_id, target.upstream.name,
                             target.upstream.circuit.state, target.upstream.circuit.in_flight)
                continue
            self._held, self._probe = target.upstream.circuit, probe
            failure = await self._try(target, fallback=index + 1 < len(targets))
            if failure is None or self.done:
                return
        self._first = None
        if failure is None:
            logger.warning("request %s: no upstream of its route can take it now", self._request_id)
            failure = Error("upstream_error", "upstream_unavailable", "no upstream of this model can take the request now", "connect")
        self._emit(failure)

    async def _try(self, target: Target, *, fallback: bool) -> Error | None:
        """One attempt: ``None`` once the upstream has the stream (or it ended), else its error, to try the next."""
        upstream = self._upstream = target.upstream
        timeouts = upstream.timeouts
        self._attempt += 1
        self._phase = "first_token"
        started = self._loop.time()
        assert self._request is not None
        request = self._request if target.model is None else msgspec.structs.replace(self._request, model=target.model)
        path, headers, body = upstream.adapter.build_request(request, upstream.api_key)
        del request
        if not fallback:
            self._request = None
        handler = upstream.adapter.handler(self._emit, self._sink.flush)
        first: asyncio.Future[Error | None] | None = self._loop.create_future() if fallback else None
        self._first = first
        try:
            exchange = await upstream.client.request(
                upstream.origin, "POST", path, headers, body, handler,
                connect_timeout=min(timeouts.connect, self._total_left()),
                head_timeout=min(timeouts.first_token, self._total_left()),
            )
        except UpstreamTimeout as exc:
            return self._failed(UpstreamTimeout("total", timeouts.total or 0.0).event() if self._total_left() <= 0 else exc.event())
        except UpstreamError as exc:
            return self._failed(exc.event())
        except Exception as exc:  # a defect here must still end the stream with its terminal event
            logger.exception("generation %s failed to start", self._request_id)
            self._first = None
            self._emit(Error("relay_error", "internal_error", f"the relay failed: {type(exc).__name__}", self._phase))
            return None
        if first is not None and first.done() and first.result() is not None:  # failed along with its head
            exchange.close()
            return first.result()
        self._exchange = exchange
        if exchange.status == 200:
            self._sink.opened()
        if self.done:  # the whole answer arrived with the head
            self._release(finished=self._finished)
            return None
        if self._phase == "first_token":
            self._deadline = started + timeouts.first_token
        self._arm(min(self._deadline, self._total_deadline))
        if first is None or first.done():
            return None
        return await first

    def _failed(self, error: Error) -> Error | None:
        """An attempt failed before its head: hand ``error`` back to try the next upstream, or end with it."""
        if self._first is not None and upstream_fault(error) and not self.done:
            self._fail_over(error)
            return error
        self._first = None
        self._emit(error)
        return None

    def _fail_over(self, error: Error) -> None:
        self._upstream.circuit.failed()
        self._release()
        logger.warning("request %s: attempt %d on upstream %s failed (%s: %s); trying the next upstream",
                       self._request_id, self._attempt, self._upstream.name, error.code, error.message)

    @property
    def phase(self) -> str:
        return self._phase

    def close(self) -> None:
        """Abandon the generation: close the upstream now; the sink gets nothing more."""
        self.done = True
        self._release()
        first, self._first = self._first, None
        if first is not None and not first.done():
            first.set_result(None)

    def fail(self, error: Error) -> None:
        """End the generation with ``error`` (sent to the sink) and close the upstream."""
        self._emit(error)

    def _total_left(self) -> float:
        return max(self._total_deadline - self._loop.time(), 0.0)

    def _emit(self, event: Event) -> None:
        if self.done:
            return
        if not self._committed:
            first = self._first
            if first is not None and type(event) is Error and upstream_fault(event):
                self._first = None
                self._fail_over(event)
                first.set_result(event)  # start() goes on to the next upstream
                return
            self._commit(event)
        match event:
            case Delta() | Reasoning() | RedactedReasoning() | ToolCall() | Refusal() | Logprobs() | Usage():
                # Any progress, not only content: a model may reason, or call a tool, for longer than a first-token timeout.
                self.tokens += 1
                self._phase = "stream"
                self._deadline = self._loop.time() + self._upstream.timeouts.idle
            case Finish() | Error():
                self.done = True
                self._finished = type(event) is Finish
                if type(event) is Error and upstream_fault(event):
                    self._upstream.circuit.failed()
                self._release(finished=self._finished)
            case _:
                assert_never(event)
        self._sink.push(event)

    def _commit(self, event: Event) -> None:
        """The first event goes to the sink: the generation belongs to this upstream from now on."""
        self._committed = True
        self._request = None
        first, self._first = self._first, None
        if first is not None and not first.done():
            first.set_result(None)
        upstream = self._upstream
        if self._attempt == 0:
            return
        if type(event) is Error:
            level = logging.WARNING if upstream_fault(event) else logging.INFO
            logger.log(level, "request %s: attempt %d on upstream %s failed (%s: %s)", self._request_id, self._attempt, upstream.name,
                       event.code, event.message)
        else:
            upstream.circuit.succeeded()
            level = logging.INFO if self._attempt > 1 else logging.DEBUG
            logger.log(level, "request %s: attempt %d on upstream %s is streaming", self._request_id, self._attempt, upstream.name)

    def _release(self, *, finished: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, None
        if held is not None:
            held.release(self._probe)
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
