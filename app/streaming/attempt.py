"""One attempt: one exchange with one upstream, its deadlines, and its verdict.

An ``Attempt`` builds the request for its target, sends it, and turns what the upstream
answers into events for the sink, ending with exactly one terminal event (unless it fails
over, below). It owns what lives as long as the exchange: the exchange itself, the one
timer that guards its deadlines, and the slot it holds in its upstream's circuit.

Its verdict comes with its first event (app/streaming/generation.py waits for it while
another upstream may follow):

- the first event of any kind (a part, a ``Finish``, or an error that is not the upstream's
  fault) commits the attempt: from then on the stream is this upstream's, and every event
  goes to the sink;
- an upstream fault before it, while a fallback is left, fails the attempt over instead: the
  exchange is closed, the circuit told, the slot given back, nothing reaches the sink, and
  the fault is handed back so that the next upstream may try.

Faults are types (app/errors.py): an ``UpstreamError`` says whether it is the upstream's
``fault``; an ``Error`` event from the adapter is, unless the model server ``rejected`` the
request itself; the attempt's own timer knows which deadline passed (``TotalTimeout`` is the
request's budget, not the upstream's fault); an error from outside (``end``) never is.

Deadlines: one timer, re-armed lazily. Each part only stores the new idle deadline, and the
timer, when it fires early, moves itself. Every part counts as progress, for the first-token
deadline as for the idle one: a model that reasons (or writes a tool call's arguments)
longer than the first-token timeout is alive.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol, assert_never

import msgspec

from app.errors import TotalTimeout, UpstreamError, UpstreamTimeout
from app.streaming.events import Delta, Error, Event, Finish, Logprobs, Reasoning, RedactedReasoning, Refusal, Terminal, ToolCall, Usage
from app.streaming.request import GenerationRequest
from app.streaming.routing import Target
from app.streaming.upstreams.transport import Exchange

__all__ = ["Attempt", "Sink", "Watcher"]

logger = logging.getLogger("token_relay")

# Seconds an upstream body may take to end after the model's end marker before its connection is dropped.
END_OF_BODY_GRACE = 1.0

# An attempt's states. Pending: nothing sent to the sink yet. Streaming: committed, events flow.
# Finished, failed: its terminal event went to the sink. Dropped: failed over, or closed; nothing more goes out.
_PENDING, _STREAMING, _FINISHED, _FAILED, _DROPPED = "pending", "streaming", "finished", "failed", "dropped"


class Sink(Protocol):
    def push(self, event: Event) -> None: ...

    def flush(self) -> None:
        """The events pushed since the last flush arrived together: send them now."""

    def opened(self) -> None:
        """The upstream's head has arrived with a good status: a client may now be told that its stream has begun."""


class Watcher(Protocol):
    """Who is told of a generation's first event (the request's record, app/ops/record.py, times it).

    An object with a method, not a callback: a waiting stream holds its record anyway, and a bound method would be one more object each.
    """

    def first_event(self) -> None: ...


class _Unwatched:
    def first_event(self) -> None:
        pass


UNWATCHED: Watcher = _Unwatched()


class Attempt:
    __slots__ = (
        "_deadline", "_exchange", "_first", "_first_deadline", "_idle", "_loop", "_number", "_probe", "_request_id", "_sink", "_state", "_target",
        "_timer", "_total_deadline", "_watcher", "terminal", "tokens", "usage",
    )

    def __init__(self, target: Target, sink: Sink, *, number: int, request_id: str, probe: bool, total_deadline: float,
                 watcher: Watcher) -> None:
        """An attempt on ``target``, holding the slot of its circuit that was taken for it (``probe``: as the probe).

        ``watcher`` is told when its first event goes to the sink.
        """
        self._watcher = watcher
        self._target = target
        self._sink = sink
        self._number = number
        self._request_id = request_id
        self._probe: bool | None = probe  # None once the slot is given back
        self._total_deadline = total_deadline
        self._idle = target.upstream.timeouts.idle  # read by every part: one lookup, not three
        self._loop = asyncio.get_running_loop()
        self._exchange: Exchange | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # the idle deadline, once a part has come
        self._first_deadline = math.inf  # the first part's, once the head has come
        self._first: asyncio.Future[Error | None] | None = None  # set while the attempt may still fail over
        self._state = _PENDING  # the only thing a part checks: whether it is _STREAMING
        # Read at the end by the request's record (app/ops/record.py): nothing more is done per event.
        self.tokens = 0  # generated parts (content, reasoning, refusal, tool-call fragments)
        self.usage: Usage | None = None  # the model server's, when it reported it
        self.terminal: Terminal | None = None

    @property
    def live(self) -> bool:
        """Neither its terminal event nor its failover has happened, and it was not closed."""
        return self._state is _PENDING or self._state is _STREAMING

    @property
    def ended(self) -> bool:
        """Its terminal event went to the sink."""
        return self._state is _FINISHED or self._state is _FAILED

    async def run(self, request: GenerationRequest, *, fallback: bool) -> Error | None:
        """Send ``request``; its verdict: ``None`` once it has the stream (or ended it), else its fault, for the next upstream.

        Without a ``fallback`` this returns at the upstream's head, and a fault is its terminal
        event; with one, it returns at the first event. The caller's ``request`` is not kept.
        """
        upstream = self._target.upstream
        started = self._loop.time()
        path, headers, body = self._build(request)
        del request
        handler = upstream.adapter.handler(self._emit, self._sink.flush)
        first: asyncio.Future[Error | None] | None = self._loop.create_future() if fallback else None
        self._first = first
        timeouts = upstream.timeouts
        left = self._total_left()
        try:
            exchange = await upstream.client.request(
                upstream.origin, "POST", path, headers, body, handler,
                connect_timeout=min(timeouts.connect, left), head_timeout=min(timeouts.first_token, left),
            )
        except UpstreamError as exc:
            if isinstance(exc, UpstreamTimeout):
                # Told by the timer that fired, not by the clock: a timer may fire a little before its time (uvloop's count milliseconds).
                cut_short = left <= (timeouts.connect if exc.phase == "connect" else timeouts.first_token)  # the total set that timer
                if cut_short or self._total_left() <= 0:
                    exc = TotalTimeout(timeouts.total or 0.0)
            self._raised(exc)
            return _verdict(first)
        except Exception as exc:  # a defect here must still end the stream with its terminal event
            logger.exception("generation %s failed to start", self._request_id)
            self.end(Error("relay_error", "internal_error", f"the relay failed: {type(exc).__name__}", self.phase))
            return None
        if self._state is _DROPPED:  # failed over along with its head, or closed meanwhile
            exchange.close()
            return _verdict(first)
        self._exchange = exchange
        if exchange.status == 200:
            self._sink.opened()
        if not self.live:  # the whole answer arrived with the head
            self._release(finished=self._state is _FINISHED)
            return _verdict(first)
        self._first_deadline = started + timeouts.first_token  # until the first part; then ``_deadline``, which each part moves
        self._arm(min(self._deadline or self._first_deadline, self._total_deadline))
        if first is None or first.done():
            return _verdict(first)
        return await first

    def _build(self, request: GenerationRequest) -> tuple[str, list[tuple[str, str]], bytes]:
        """The request as this target's upstream takes it, under the model name the route gives it."""
        target = self._target
        if target.model is not None:
            request = msgspec.structs.replace(request, model=target.model)
        return target.upstream.adapter.build_request(request, target.upstream.api_key)

    @property
    def number(self) -> int:
        """Its place among the generation's attempts, from 1."""
        return self._number

    @property
    def upstream_name(self) -> str:
        return self._target.upstream.name

    @property
    def phase(self) -> str:
        return "stream" if self._deadline else "first_token"

    def end(self, error: Error, *, fault: bool = False) -> None:
        """End the attempt with ``error``: its terminal event, or, for a ``fault`` before the first event with a fallback left, its failover."""
        if self._state is _PENDING:
            if fault and self._first is not None:
                self._fail_over(error)
                return
            self._commit(error, fault=fault)
        elif self._state is not _STREAMING:
            return
        self._conclude(error, fault=fault)

    def _raised(self, exc: UpstreamError) -> None:
        """End with a relay error of the exchange's or of a deadline's: its type says whether it is the upstream's fault."""
        self.end(exc.event(), fault=exc.fault)

    def close(self) -> None:
        """Abandon the attempt: close the upstream now; the sink gets nothing more."""
        if self.live:
            self._state = _DROPPED
        self._release()
        first, self._first = self._first, None
        if first is not None and not first.done():
            first.set_result(None)

    def _emit(self, event: Event) -> None:
        """The adapter's callback, once per event: the hot path."""
        if self._state is not _STREAMING:
            if self._state is not _PENDING:
                return
            if type(event) is Error:
                self.end(event, fault=not event.rejected)
                return
            self._commit(event, fault=False)
        kind = type(event)
        if kind is Delta or kind is ToolCall:  # a stream's usual kinds, told by their type: a class pattern that fails costs ~75 ns on a Struct
            self.tokens += 1
            self._deadline = self._loop.time() + self._idle
            self._sink.push(event)
            return
        match event:
            case Delta() | ToolCall() | Reasoning() | Refusal() | RedactedReasoning():
                # Any progress, not only content: a model may reason, or call a tool, for longer than a first-token timeout.
                self.tokens += 1
                self._deadline = self._loop.time() + self._idle
            case Logprobs() | Usage():  # progress too, but no token of its own
                if type(event) is Usage:
                    self.usage = event
                self._deadline = self._loop.time() + self._idle
            case Finish():
                self._conclude(event, fault=False)
                return
            case Error():
                self._conclude(event, fault=not event.rejected)
                return
            case _:
                assert_never(event)
        self._sink.push(event)

    def _commit(self, event: Event, *, fault: bool) -> None:
        """The first event goes to the sink: the stream belongs to this upstream from now on."""
        self._state = _STREAMING
        self._watcher.first_event()
        first, self._first = self._first, None
        if first is not None and not first.done():
            first.set_result(None)
        upstream = self._target.upstream
        if type(event) is Error:
            logger.log(logging.WARNING if fault else logging.INFO, "request %s: attempt %d on upstream %s failed (%s: %s)",
                       self._request_id, self._number, upstream.name, event.code, event.message)
        else:
            upstream.circuit.succeeded()
            level = logging.INFO if self._number > 1 else logging.DEBUG
            logger.log(level, "request %s: attempt %d on upstream %s is streaming", self._request_id, self._number, upstream.name)

    def _conclude(self, event: Terminal, *, fault: bool) -> None:
        """The terminal event: the upstream's circuit is told of a fault, the exchange ends, the sink gets it."""
        finished = type(event) is Finish
        self._state = _FINISHED if finished else _FAILED
        self.terminal = event
        if fault:
            self._target.upstream.circuit.failed()
        self._release(finished=finished)
        self._sink.push(event)

    def _fail_over(self, error: Error) -> None:
        upstream = self._target.upstream
        first, self._first = self._first, None
        assert first is not None
        self._state = _DROPPED
        upstream.circuit.failed()
        self._release()
        logger.warning("request %s: attempt %d on upstream %s failed (%s: %s); trying the next upstream",
                       self._request_id, self._number, upstream.name, error.code, error.message)
        first.set_result(error)  # the generation goes on to the next upstream

    def _release(self, *, finished: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        probe, self._probe = self._probe, None
        if probe is not None:
            self._target.upstream.circuit.release(probe)
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

    def _total_left(self) -> float:
        return max(self._total_deadline - self._loop.time(), 0.0)

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self.live:
            return
        now = self._loop.time()
        timeouts = self._target.upstream.timeouts
        deadline = self._deadline or self._first_deadline
        if now >= self._total_deadline:
            self._raised(TotalTimeout(timeouts.total or 0.0))
        elif now >= deadline:
            self._raised(UpstreamTimeout(self.phase, timeouts.idle if self._deadline else timeouts.first_token))
        else:  # a part moved the deadline, or the timer fired a little before its time (uvloop's count milliseconds)
            self._arm(min(deadline, self._total_deadline))


def _verdict(first: asyncio.Future[Error | None] | None) -> Error | None:
    """What a run tells the generation once its attempt is decided: its fault if it failed over, else ``None``."""
    return first.result() if first is not None and first.done() else None
