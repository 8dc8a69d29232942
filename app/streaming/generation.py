"""One generation: a request to a route's model servers, turned into normalised events for a sink.

``Generation`` is the orchestrator: the failover loop over the route's targets, the commit
boundary, and the one terminal event. Each try at one upstream is an ``Attempt``
(app/streaming/attempt.py: the exchange, its deadlines, its verdict); the generation only
decides which upstream comes next, and what the sink gets when none is left. It guarantees
that its sink receives exactly one terminal event, whatever happens: end of stream,
upstream fault, timeout, ``fail()`` or ``close()``. It never raises a relay error to its
caller: failures become the terminal ``Error``.

Failover: a route may list several upstreams. Until the first event reaches the sink (the
first part of any kind: content, reasoning, a tool call, a refusal; or a finish or an error
that is not the upstream's fault) nothing the client can tell apart has been sent: the
response head and heartbeat comments carry no content. Up to that point an upstream fault
(connect error or timeout, 5xx, 429, first-token timeout, a stream that breaks or errs
before its first part) sends the request to the next upstream of the route instead of to
the client. From the first event on, the generation belongs to that upstream and a failure
is the terminal ``Error``. Upstreams whose circuit is open, or at their concurrency limit,
are skipped.

The events themselves go from the adapter to the attempt to the sink: the generation is on
nobody's per-event path, and holds no reference its attempt would need back (no cycle).
"""

from __future__ import annotations

import asyncio
import logging
import math

from app.streaming.attempt import UNWATCHED, Attempt, Sink, Watcher
from app.streaming.events import Error, Terminal, Usage
from app.streaming.request import GenerationRequest
from app.streaming.routing import Route, Timeouts, Upstream

__all__ = ["Generation", "Route", "Sink", "Timeouts", "Upstream"]

logger = logging.getLogger("token_relay")


class Generation:
    __slots__ = ("_attempt", "_ended", "_request", "_route", "_sink", "_starting", "_terminal", "watcher")

    def __init__(self, route: Route | Upstream, request: GenerationRequest, sink: Sink) -> None:
        self._route = route if isinstance(route, Route) else Route.to(route)
        self._request: GenerationRequest | None = request  # dropped once sent for good: a waiting stream keeps no prompt
        self._sink = sink
        self._attempt: Attempt | None = None  # the current one: live, ended, or failed over until the next one starts
        self._ended = False  # closed, or ended by the generation itself (no attempt had the stream)
        self._terminal: Error | None = None  # its own terminal event, when no attempt had the stream
        self.watcher: Watcher = UNWATCHED  # told of the first event: set by the request's record before the start
        self._starting: asyncio.Task[None] | None = None  # ``start``'s task, while it runs

    async def start(self) -> None:
        """Connect and send the request (to the next upstream, while one fails before its first event).

        With a fallback left, this returns once the first event went to the sink; on the last
        upstream, once its response head has arrived: events then flow to the sink by callback.
        """
        if self._ended:  # ended before it started (a shutdown, a client already gone)
            return
        assert self._request is not None
        request_id = self._request.request_id
        targets = self._route.targets
        total = targets[0].upstream.timeouts.total
        total_deadline = math.inf if total is None else asyncio.get_running_loop().time() + total
        failure: Error | None = None
        for number, target in enumerate(targets, 1):
            circuit = target.upstream.circuit
            probe = circuit.acquire()
            if probe is None:
                logger.debug("request %s: upstream %s skipped (circuit %s, %d in flight)", request_id, target.upstream.name,
                             circuit.state, circuit.in_flight)
                continue
            fallback = number < len(targets)
            attempt = self._attempt = Attempt(target, self._sink, number=number, request_id=request_id, probe=probe,
                                              total_deadline=total_deadline, watcher=self.watcher)
            # Passed, not kept in a local: on the last upstream nothing here holds the prompt while the stream waits.
            failure = await attempt.run(self._request if fallback else self._take_request(), fallback=fallback)
            if failure is None or self.done:
                self._request = None
                return
        self._request = None
        if failure is None:
            logger.warning("request %s: no upstream of its route can take it now", request_id)
            failure = Error("upstream_error", "upstream_unavailable", "no upstream of this model can take the request now", "connect")
        self._end(failure)

    def start_soon(self) -> None:
        """Run ``start`` on a task of its own (``cancel_start`` cancels it while it connects or waits for the head).

        The task is held only while it runs: a stream waits for its first token long after its
        start has returned, and a finished task keeps its coroutine (about 700 bytes a stream).
        """
        task = self._starting = asyncio.get_running_loop().create_task(self.start())
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        """``start`` turns every failure into the terminal event: anything it raises is a defect, and still ends the stream."""
        self._starting = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("generation failed to start", exc_info=exc)
            self.fail(Error("relay_error", "internal_error", f"the relay failed: {type(exc).__name__}", self.phase))

    def cancel_start(self) -> None:
        """Cancel ``start`` if it still runs (connecting, or waiting for the head)."""
        if self._starting is not None:
            self._starting.cancel()

    def _take_request(self) -> GenerationRequest:
        request, self._request = self._request, None
        assert request is not None
        return request

    @property
    def done(self) -> bool:
        """The terminal event went to the sink, or the generation was closed."""
        return self._ended or (self._attempt is not None and self._attempt.ended)

    @property
    def tokens(self) -> int:
        """The parts the sink got (all from one attempt: failover ends before the first)."""
        return 0 if self._attempt is None else self._attempt.tokens

    @property
    def terminal(self) -> Terminal | None:
        """The terminal event the sink got, if it got one."""
        if self._terminal is not None or self._attempt is None:
            return self._terminal
        return self._attempt.terminal

    @property
    def attempts(self) -> int:
        return 0 if self._attempt is None else self._attempt.number

    @property
    def upstream_name(self) -> str | None:
        """The upstream that has (or last had) the request; ``None`` if none was tried."""
        return None if self._attempt is None else self._attempt.upstream_name

    @property
    def usage(self) -> Usage | None:
        """The model server's usage, when it reported it."""
        return None if self._attempt is None else self._attempt.usage

    @property
    def phase(self) -> str:
        return "first_token" if self._attempt is None else self._attempt.phase

    def close(self) -> None:
        """Abandon the generation: close the upstream now; the sink gets nothing more."""
        self._ended = True
        if self._attempt is not None:
            self._attempt.close()

    def fail(self, error: Error) -> None:
        """End the generation with ``error`` (sent to the sink) and close the upstream."""
        attempt = self._attempt
        if attempt is not None and attempt.live:
            attempt.end(error)
        elif not self.done:
            self._end(error)

    def _end(self, error: Error) -> None:
        """The terminal event when no attempt has the stream: before the first, between two, or after the last."""
        self._ended = True
        self._terminal = error
        self._sink.push(error)
