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
from typing import TYPE_CHECKING, Literal, Protocol

from app.ops.limits import NO_LIMITS
from app.streaming.events import Error, Finish, Terminal, Usage

if TYPE_CHECKING:
    from app.streaming.generation import Generation

logger = logging.getLogger("token_relay")

Outcome = Literal["done", "error", "cancelled", "client_left"]
# Codes a stream's terminal error carries when someone ended it on purpose, not because anything failed.
_CANCELLED = frozenset({"cancelled", "no_readers"})


class RequestRecord:
    """What one request did, in the terms of the log line and the metrics (their names, docs in README.md)."""

    __slots__ = (
        "_ended",
        "_first_event",
        "_loop",
        "_started",
        "admission",
        "attempts",
        "code",
        "completion_tokens",
        "counted",
        "dialect",
        "disconnect_seconds",
        "duration",
        "estimated",
        "generated",
        "key",
        "model",
        "outcome",
        "partial",
        "phase",
        "prompt_tokens",
        "relay_latency",
        "request_id",
        "resumable",
        "status",
        "ttft",
        "upstream",
        "usage",
    )

    def __init__(self, request_id: str, dialect: str, key: str | None = None, *, resumable: bool = False) -> None:
        self.request_id = request_id
        self.dialect = dialect
        self.key = key  # the key's name (a label derived from the key while keys have no names): never the key itself
        self.resumable = resumable
        self.model: str | None = None
        self.admission = NO_LIMITS  # its hold on its key's limits, ended with its usage (``app.ops.limits.Debits``)
        self.upstream: str | None = None
        self.attempts = 0
        self.outcome: Outcome = "error"
        self.code: str | None = None
        self.phase: str | None = None
        self.status: int | None = None
        self.usage: Usage | None = None  # the upstream's own figures, when it sent them
        self.counted = 0  # generated parts relayed
        self.generated = False  # a generation ran (its counts are known, if only as an estimate)
        self.estimated = False  # the completion tokens are the relay's count, not the upstream's
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.partial = False
        self.ttft: float | None = None
        self.relay_latency: float | None = None
        self.disconnect_seconds: float | None = None
        self.duration = 0.0
        self._loop = asyncio.get_running_loop()
        # Times from perf_counter: uvloop's loop.time() moves in whole milliseconds, coarser than the relay's own latency.
        self._started = time.perf_counter()
        self._first_event: float | None = None
        self._ended = False

    @property
    def waiting(self) -> bool:
        """Whether the request is still waiting for its first event."""
        return self._first_event is None and not self._ended

    def refused(self, status: int, code: str) -> None:
        """The request was answered with an error before (or instead of) a generation."""
        self.status, self.code, self.outcome = status, code, "error"

    def first_event(self) -> None:
        """The first event of the generation reached its sink (called once, in the upstream's callback)."""
        now = time.perf_counter()
        self._first_event = now
        self.ttft = now - self._started

    def first_streamed(self) -> None:
        """``first_event``, for a direct stream: the relay's own latency is measured on it.

        From this callback to the end of the loop's turn, during which the event is encoded and
        written to a client that keeps up: one measure per stream, none per event.
        """
        self.first_event()
        self._loop.call_soon(self._written, time.perf_counter())

    def _written(self, since: float) -> None:
        self.relay_latency = time.perf_counter() - since

    def close(self, generation: Generation, terminal: Terminal | None = None) -> None:
        """Close the generation (its upstream) now; with no ``terminal`` yet the client has left: time how long closing took."""
        seen = time.perf_counter()
        generation.close()
        if terminal is None and generation.terminal is None:
            self.disconnect_seconds = time.perf_counter() - seen

    def take(self, generation: Generation, terminal: Terminal | None = None) -> None:
        """Read what the generation did. Its terminal event, else the sink's (``terminal``), sets the outcome; neither: the client left."""
        self.upstream = generation.upstream_name
        self.attempts = generation.attempts
        self.usage = generation.usage
        self.counted = generation.tokens
        self.generated = True
        self.phase = generation.phase
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
        if self._ended:
            return False
        self._ended = True
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
    """The observers, and the records in flight (for the gauges read at scrape time)."""

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self.observers: list[Observer] = list(observers or ())
        self.live: set[RequestRecord] = set()

    def begin(self, request_id: str, dialect: str, key: str | None = None, *, resumable: bool = False) -> RequestRecord:
        record = RequestRecord(request_id, dialect, key, resumable=resumable)
        self.live.add(record)
        return record

    def end(self, record: RequestRecord) -> None:
        """The request is over, whichever way: each observer hears of it once (later calls do nothing)."""
        self.live.discard(record)
        if not record.end():
            return
        for observer in self.observers:
            try:
                observer.request_ended(record)
            except Exception:  # an observer's defect must not fail the request, nor hide it from the others
                logger.exception("request %s: observer %s failed", record.request_id, type(observer).__name__)
