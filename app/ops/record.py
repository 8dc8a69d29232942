"""``RequestRecord``: one request from start to end, as the operators' modules see it.

Filled by the route (dialect, key, model, status) and, at the end, from the ``Generation``
(upstream, attempts, first-token time, terminal event, usage, parts relayed); then handed,
once, to every ``Observer``. The generation is only read at the end: per event the core
counts parts (one increment it already made), nothing more.

Usage: the upstream's own figure when it sent one (the last ``Usage`` wins); otherwise, or
for what it did not count, the completion tokens are the number of generated parts relayed
(content, reasoning, refusal and tool-call fragments: an estimate, one part is about one
token) and the prompt tokens unknown (``None``). ``partial`` is true when the request did
not run to its end (the client left, it was cancelled, it failed after its first part):
its figures then cover what was generated before it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

from app.ops.limits import NO_LIMITS
from app.streaming.events import Error, Finish, Terminal, Usage

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.streaming.generation import Generation
    from app.streaming.relay import DirectStream

logger = logging.getLogger("token_relay")

Outcome = Literal["done", "error", "cancelled", "client_left"]
# Codes a stream's terminal error carries when someone ended it on purpose, not because anything failed.
_CANCELLED = frozenset({"cancelled", "no_readers"})


_T = TypeVar("_T")


class _End:
    """What a record learns after its request has waited: its first event's time, its outcome and its end.

    Made when the first of these is known (its first event, a refusal, or the end): a request
    that waits for its first token holds none of it.
    """

    __slots__ = (
        "attempts", "code", "completion_tokens", "counted", "disconnect_seconds", "duration", "ended", "estimated", "first_event_at", "generated",
        "outcome", "partial", "phase", "prompt_tokens", "relay_latency", "upstream", "usage",
    )

    def __init__(self) -> None:
        self.outcome: Outcome = "error"
        self.code: str | None = None
        self.first_event_at: float | None = None  # from perf_counter
        self.ended = False
        self.upstream: str | None = None
        self.attempts = 0
        self.phase: str | None = None
        self.usage: Usage | None = None  # the upstream's own figures, when it sent them
        self.counted = 0  # generated parts relayed
        self.generated = False  # a generation ran (its counts are known, if only as an estimate)
        self.estimated = False  # the completion tokens are the relay's count, not the upstream's
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.partial = False
        self.relay_latency: float | None = None
        self.disconnect_seconds: float | None = None
        self.duration = 0.0


_NOT_YET = _End()  # every record's end until it has one of its own: read, never written


class _Late(Generic[_T]):
    """A field of the record's ``_End``, read and written as the record's own (a few reads and writes a request)."""

    __slots__ = ("_name",)

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, record: RequestRecord, owner: type | None = None) -> _T:
        value: _T = getattr(record._end, self._name)
        return value

    def __set__(self, record: RequestRecord, value: _T) -> None:
        setattr(record._own_end(), self._name, value)


class RequestRecord:
    """What one request did, in the terms of the log line and the metrics (their names, docs in README.md).

    While the request waits it holds only what the route gave it and its start: what is known
    later lives in an ``_End`` made then (the fields below, read as the record's own).
    """

    __slots__ = (
        "_end",
        "_generation",
        "_operations",
        "_started",
        "_stream",
        "admission",
        "dialect",
        "key",
        "model",
        "request_id",
        "resumable",
        "status",
    )

    outcome: _Late[Outcome] = _Late()
    code: _Late[str | None] = _Late()
    first_event_at: _Late[float | None] = _Late()
    ended: _Late[bool] = _Late()
    upstream: _Late[str | None] = _Late()
    attempts: _Late[int] = _Late()
    phase: _Late[str | None] = _Late()
    usage: _Late[Usage | None] = _Late()
    counted: _Late[int] = _Late()
    generated: _Late[bool] = _Late()
    estimated: _Late[bool] = _Late()
    prompt_tokens: _Late[int | None] = _Late()
    completion_tokens: _Late[int | None] = _Late()
    partial: _Late[bool] = _Late()
    relay_latency: _Late[float | None] = _Late()
    disconnect_seconds: _Late[float | None] = _Late()
    duration: _Late[float] = _Late()

    def __init__(
        self, request_id: str, dialect: str, key: str | None = None, *, resumable: bool = False, operations: Operations | None = None,
    ) -> None:
        self.request_id = request_id
        self.dialect = dialect
        self.key = key  # the key's name (a label derived from the key while keys have no names): never the key itself
        self.resumable = resumable
        self.model: str | None = None
        self.admission = NO_LIMITS  # its hold on its key's limits, ended with its usage (``app.ops.limits.Debits``)
        self.status: int | None = None
        self._operations = operations  # whose gauges count it while it is in flight
        self._end = _NOT_YET
        # Times from perf_counter: uvloop's loop.time() moves in whole milliseconds, coarser than the relay's own latency.
        self._started = time.perf_counter()
        self._generation: Generation | None = None  # a direct stream's, from ``watch`` to ``take``
        self._stream: DirectStream | None = None

    def _own_end(self) -> _End:
        if self._end is _NOT_YET:
            self._end = _End()
        return self._end

    @property
    def ttft(self) -> float | None:
        """Seconds from the start to the first event."""
        first = self.first_event_at
        return None if first is None else first - self._started

    @ttft.setter
    def ttft(self, seconds: float) -> None:
        self.first_event_at = self._started + seconds

    @property
    def waiting(self) -> bool:
        """Whether the request is still waiting for its first event."""
        return self.first_event_at is None and not self.ended

    def refused(self, status: int, code: str) -> None:
        """The request was answered with an error before (or instead of) a generation."""
        self.status, self.code, self.outcome = status, code, "error"

    def first_event(self) -> None:
        """The first event of the generation reached its sink (called once, in the upstream's callback: the record is its ``Watcher``).

        On a direct stream (one the record ``watch``es) the relay's own latency is measured on it:
        from this callback to the end of the loop's turn, during which the event is encoded and
        written to a client that keeps up. One measure per stream, none per event.
        """
        if self.waiting and self._operations is not None:
            self._operations.waiting -= 1
        now = self.first_event_at = time.perf_counter()
        if self._stream is not None:
            asyncio.get_running_loop().call_soon(self._written, now)

    def _written(self, since: float) -> None:
        self.relay_latency = time.perf_counter() - since

    def close(self, generation: Generation, terminal: Terminal | None = None) -> None:
        """Close the generation (its upstream) now; with no ``terminal`` yet the client has left: time how long closing took."""
        seen = time.perf_counter()
        generation.close()
        if terminal is None and generation.terminal is None:
            self.disconnect_seconds = time.perf_counter() - seen

    def watch(self, generation: Generation, stream: DirectStream) -> Callable[[], None]:
        """The stream's ``on_abort``: ``close`` with its terminal. A method of the record, not a partial made per stream.

        The record holds the two (and they it) until ``take`` lets go of them.
        """
        self._generation, self._stream = generation, stream
        return self._aborted

    def _aborted(self) -> None:
        if self._generation is not None and self._stream is not None:
            self.close(self._generation, self._stream.terminal)

    def take(self, generation: Generation, terminal: Terminal | None = None) -> None:
        """Read what the generation did. Its terminal event, else the sink's (``terminal``), sets the outcome; neither: the client left."""
        self._generation = self._stream = None
        end = self._own_end()
        end.upstream = generation.upstream_name
        end.attempts = generation.attempts
        end.usage = generation.usage
        end.counted = generation.tokens
        end.generated = True
        end.phase = generation.phase
        self._terminal(generation.terminal or terminal)

    def _terminal(self, terminal: Terminal | None) -> None:
        match terminal:
            case None:
                self.outcome, self.code = "client_left", None
            case Finish():
                self.outcome, self.code, self.phase = "done", None, None
            case Error():
                self.outcome = "cancelled" if terminal.code in _CANCELLED else "error"
                self.code = terminal.code
                self.phase = terminal.phase

    def end(self) -> bool:
        """Close the record (only the first call counts): the duration, and the usage as it will be reported."""
        if self.ended:
            return False
        if self._operations is not None:
            self._operations.left(self)
        self.ended = True
        self.duration = time.perf_counter() - self._started
        self.partial = self.outcome != "done" and (self.counted > 0 or self.usage is not None)
        usage = self.usage
        self.prompt_tokens = usage.prompt_tokens if usage is not None else None
        reported = usage.completion_tokens if usage is not None else None
        # The upstream's count wins, unless it came before the end (a cancelled stream) and is below what was relayed since.
        if reported is not None and (self.outcome == "done" or reported >= self.counted):
            self.completion_tokens = reported
        elif self.generated:
            self.completion_tokens, self.estimated = self.counted, True
        return True

    @property
    def time_per_output_token(self) -> float | None:
        """Seconds per output token after the first: derived per request, not timed per event."""
        tokens = self.completion_tokens
        if self.ttft is None or tokens is None or tokens < 2:
            return None
        return (self.duration - self.ttft) / (tokens - 1)


class Observer(Protocol):
    """A module that learns of every request's end (metrics, the request log, key limits debiting tokens)."""

    def request_ended(self, record: RequestRecord) -> None: ...


class Operations:
    """The observers, and the counts of the records in flight (for the gauges read at scrape time).

    Counts, not the records: the gauges need no more, and a set would hold an entry per request.
    """

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self.observers: list[Observer] = list(observers or ())
        self.direct = 0  # records in flight that are not resumable streams
        self.waiting = 0  # records in flight still waiting for their first event

    def begin(self, request_id: str, dialect: str, key: str | None = None, *, resumable: bool = False) -> RequestRecord:
        self.direct += not resumable
        self.waiting += 1
        return RequestRecord(request_id, dialect, key, resumable=resumable, operations=self)

    def left(self, record: RequestRecord) -> None:
        """``record`` ends (called once, by ``RequestRecord.end``): it is no longer in flight."""
        self.direct -= not record.resumable
        self.waiting -= record.waiting

    def end(self, record: RequestRecord) -> None:
        """The request is over, whichever way: each observer hears of it once (later calls do nothing)."""
        if not record.end():
            return
        for observer in self.observers:
            try:
                observer.request_ended(record)
            except Exception:  # an observer's defect must not fail the request, nor hide it from the others
                logger.exception("request %s: observer %s failed", record.request_id, type(observer).__name__)
