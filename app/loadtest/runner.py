"""The runner: opens the streams of a load test and keeps the books.

``streams`` slots are started over ``ramp`` seconds (slot i at ``i * ramp / streams``);
when a slot's stream ends, the slot starts the next one at once, until ``requests`` streams have been started, or, with
``duration``, until that many seconds have passed (the streams still open then are closed
and counted as ``cut``). Stream i goes to target i modulo their count.

One sweeper task wakes every ``tick`` seconds: it ends the streams that passed a limit
(``timeout``), samples the series that ``--plot`` draws, and calls ``on_tick`` (the live
progress line). All the rest happens in the streams' protocol callbacks. The connection
attempts are tasks of one task group; ``stop()`` ends the run early, and cleanly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from app.loadtest.histogram import Histogram
from app.loadtest.stream import CONNECT_ERROR, CUT, FAILURES, OUTCOMES, TIMEOUT, Stream
from app.loadtest.target import Target

_SAMPLE_DETAILS = 20  # failure details kept for the report


class LoadConfig(msgspec.Struct, frozen=True):
    streams: int = 10  # concurrent streams
    requests: int | None = None  # streams in all (default: ``streams``); ignored with ``duration``
    duration: float | None = None  # seconds to keep the slots busy
    ramp: float = 0.0  # seconds over which the slots start
    connect_timeout: float = 10.0
    head_timeout: float = 30.0  # from the request's write to the response head
    first_timeout: float = 60.0  # from the request's write to the first output of any kind (stream.py)
    idle_timeout: float = 30.0  # between two outputs of any kind
    stream_timeout: float = 0.0  # the whole stream; 0 for no limit
    close_after: int = 0  # close each stream ourselves after this many content events; 0 never
    id_prefix: str | None = None  # send X-Request-Id: PREFIX-<index>
    verify_tls: bool = True
    keep_records: bool = False  # keep one record per stream (``per_stream`` in the summary)
    tick: float = 0.5


class Runner:
    """Runs one load test against one or more targets; ``run()`` once, then read the books."""

    def __init__(self, targets: list[Target], config: LoadConfig, on_tick: Callable[[Runner], None] | None = None) -> None:
        if not targets:
            raise ValueError("no target")
        if config.streams < 1:
            raise ValueError("streams must be at least 1")
        self.targets = targets
        self.config = config
        self.total = None if config.duration is not None else (config.requests or config.streams)
        self._on_tick = on_tick
        self._ssl = [target.ssl_context(config.verify_tls) for target in targets]
        self.live: set[Stream] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._done: asyncio.Future[None] | None = None
        self._ramping = True
        self._slots = 0  # slots the ramp has started so far
        self.stopping = False
        self.t0 = 0.0
        self.t_end = 0.0
        self.cpu0 = 0.0
        self.cpu_s = 0.0  # this process's CPU time over the run: is the tester itself the bottleneck?
        # the books
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.statuses: dict[int, int] = {}
        self.details: list[dict[str, Any]] = []
        self.content_events = 0
        self.events = 0
        self.tokens = 0
        self.bytes = 0
        self.ttft = Histogram()
        self.gaps = Histogram()
        self.series: list[tuple[float, int, int, int, int]] = []  # (t, open, content events so far, finished, failed)
        self.records: list[dict[str, Any]] = []

    @property
    def open(self) -> int:
        return len(self.live)

    @property
    def elapsed(self) -> float:
        return (self.t_end or time.monotonic()) - self.t0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self._sample()
        config = self.config
        first = config.streams if self.total is None else min(config.streams, self.total)
        step = config.ramp / first if config.ramp else 0.0
        deadline = loop.call_later(config.duration, self.stop) if config.duration is not None else None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                sweeper = tg.create_task(self._sweep())
                for i in range(first):
                    delay = self.t0 + i * step - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self._slots = i + 1
                    self._fill()
                self._ramping = False
                self._check_done()
                await self._done
                sweeper.cancel()
                for task in self._connecting:
                    task.cancel()
        finally:
            if deadline is not None:
                deadline.cancel()
            self.stopping = True
            for stream in list(self.live):
                stream.finish(CUT, "the run ended")
            self.t_end = time.monotonic()
            self.cpu_s = time.process_time() - self.cpu0
            self._sample()

    def stop(self) -> None:
        """End the run now: start nothing more, and cut the streams still open."""
        if self.stopping:
            return
        self.stopping = True
        for stream in list(self.live):
            stream.finish(CUT, "the run ended")
        self._check_done()

    def _fill(self) -> None:
        while len(self.live) < self._slots and not self.stopping and (self.total is None or self.started < self.total):
            self._start()

    def _start(self) -> None:
        assert self._tg is not None
        index = self.started
        self.started += 1
        stream = self.make_stream(index)
        self.live.add(stream)
        task = self._tg.create_task(self._connect(stream, self.targets[index % len(self.targets)], self._ssl[index % len(self.targets)]))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def make_stream(self, index: int) -> Stream:
        target = self.targets[index % len(self.targets)]
        request_id = f"{self.config.id_prefix}-{index}" if self.config.id_prefix is not None else None
        return Stream(self, target, index, request_id, self.config.close_after or -1)

    async def _connect(self, stream: Stream, target: Target, context: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.connect_timeout or None):
                await loop.create_connection(lambda: stream, target.host, target.port, ssl=context, server_hostname=target.host if context else None)
        except TimeoutError:
            stream.finish(CONNECT_ERROR, f"no connection within {self.config.connect_timeout:g} s")
        except OSError as exc:
            stream.finish(CONNECT_ERROR, str(exc) or type(exc).__name__)

    # Sink

    def on_content(self, stream: Stream, now: float, gap: float, text: str) -> None:
        self.content_events += 1
        if gap >= 0:
            self.gaps.add(gap)

    def on_finish(self, stream: Stream) -> None:
        self.live.discard(stream)
        self.finished += 1
        outcome = stream.outcome
        self.outcomes[outcome] += 1
        if stream.status:
            self.statuses[stream.status] = self.statuses.get(stream.status, 0) + 1
        if outcome in FAILURES:
            self.failed += 1
            if len(self.details) < _SAMPLE_DETAILS:
                self.details.append({"index": stream.index, "outcome": outcome, "status": stream.status or None, "detail": stream.detail})
        ttft = stream.ttft
        if ttft is not None:
            self.ttft.add(ttft)
        self.events += stream.events
        self.tokens += stream.tokens
        self.bytes += stream.bytes
        if self.config.keep_records:
            self.records.append(stream.record(self.t0))
        self._fill()  # the slot goes on
        self._check_done()

    def _check_done(self) -> None:
        if self._done is None or self._done.done() or self.live:
            return
        if self.stopping or (not self._ramping and self.total is not None and self.started >= self.total):
            self._done.set_result(None)

    async def _sweep(self) -> None:
        config = self.config
        while True:
            await asyncio.sleep(config.tick)
            now = time.monotonic()
            for stream in list(self.live):
                reason = stream.overdue(now, config.head_timeout, config.first_timeout, config.idle_timeout, config.stream_timeout)
                if reason is not None:
                    stream.finish(TIMEOUT, reason)
            self._sample()
            if self._on_tick is not None:
                self._on_tick(self)

    def _sample(self) -> None:
        self.series.append((time.monotonic() - self.t0, len(self.live), self.content_events, self.finished, self.failed))
