"""Resumable streams: generations owned by the application, read by any number of readers.

``POST /v1/streams`` starts a ``ResumableStream``: its generation runs on the application's
task group, not on the request, and writes every event into the event log, where each gets
its id. Readers (``GET …/events``, usually ``EventSource``) replay the log after their
``Last-Event-ID`` and then follow it, each at its own pace: the generation never waits for
a reader, and the log's size per stream is capped.

Who ends a generation:
- its own terminal event (end of stream, upstream fault, timeout);
- ``cancel()`` (``DELETE``), at once: readers get ``error`` with code ``cancelled``;
- nobody reading: when the last reader leaves (or nobody came after the ``POST``), a grace
  timer starts; a reader coming back stops it, otherwise the generation ends with
  ``error`` code ``no_readers`` and its upstream is closed;
- the log cap: ``error`` code ``stream_too_long``;
- a shutdown, through ``LiveRequests``: ``shutting_down``.

After its terminal event a stream stays readable for ``retention`` seconds, then the log drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator

import anyio
import anyio.abc
import msgspec

from app.streaming.encoders import error_body, usage_body
from app.streaming.eventlog import EventLog
from app.streaming.events import Delta, Error, Event, Finish, Usage
from app.streaming.generation import Generation, Route, Upstream
from app.streaming.request import GenerationRequest
from app.streaming.respond import LiveRequests

logger = logging.getLogger("token_relay")

_encode = msgspec.json.Encoder().encode
TERMINAL_EVENTS = frozenset({"done", "error"})


class StreamLimits(msgspec.Struct, frozen=True):
    grace: float
    retention: float
    max_bytes: int


class ResumableStream:
    """One generation writing into the log: the ``Sink`` of its ``Generation``."""

    def __init__(self, stream_id: str, log: EventLog, limits: StreamLimits, upstream: Route | Upstream, request: GenerationRequest) -> None:
        self.id = stream_id
        self.readers = 0
        self.finished = False
        self.terminal: str | None = None  # the terminal event's name, once appended
        self._log = log
        self._limits = limits
        self._pending: list[Event] = []
        self._ready = anyio.Event()
        self._connecting = anyio.CancelScope()
        self._generation = Generation(upstream, request, self)
        self._grace: asyncio.TimerHandle | None = None
        self._usage: Usage | None = None
        self._bytes = 0

    # The Sink protocol, called by the generation (from the upstream's socket callbacks).

    def push(self, event: Event) -> None:
        self._pending.append(event)
        if isinstance(event, (Finish, Error)):
            self._ready.set()

    def flush(self) -> None:
        self._ready.set()

    # Control.

    def cancel(self, code: str = "cancelled", message: str = "the stream was cancelled") -> None:
        """End the generation now with a ``cancelled`` error, closing its upstream."""
        if self.finished:
            return
        self._generation.fail(Error("cancelled", code, message, self._generation.phase))
        self._connecting.cancel()

    def reader_joined(self) -> None:
        self.readers += 1
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def reader_left(self) -> None:
        self.readers -= 1
        if self.readers == 0:
            self._start_grace()

    def _start_grace(self) -> None:
        if self.finished or self._grace is not None:
            return
        grace = self._limits.grace
        self._grace = asyncio.get_running_loop().call_later(
            grace, self.cancel, "no_readers", f"nobody read the stream for {grace:g} s",
        )

    # The pump: from the generation's events to the log.

    async def run(self, live: LiveRequests) -> None:
        generation = self._generation
        self._start_grace()
        fallback = Error("relay_error", "internal_error", "the relay failed", "stream")
        try:
            with live.track(generation):
                with self._connecting:
                    await generation.start()
                while self.terminal is None:
                    await self._ready.wait()
                    self._ready = anyio.Event()
                    events, self._pending = self._pending, []
                    await self._append(events)
        except anyio.get_cancelled_exc_class():
            fallback = Error("relay_error", "shutting_down", "the relay is shutting down", generation.phase)
            raise
        finally:
            generation.close()
            self.finished = True
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
            with anyio.CancelScope(shield=True):
                if self.terminal is None:  # ended by a defect or the app stopping: the readers still get a terminal event
                    await self._append_terminal(fallback)
                await self._log.expire(self.id, self._limits.retention)

    async def _append(self, events: list[Event]) -> None:
        text = ""
        terminal: Finish | Error | None = None
        for event in events:
            if isinstance(event, Delta):
                text += event.text
            elif isinstance(event, Usage):
                self._usage = event
            else:
                terminal = event
                break
        if text:
            data = b'{"text":' + _encode(text) + b"}"
            self._bytes += len(data)
            await self._log.append(self.id, "token", data)
            if self._bytes > self._limits.max_bytes and terminal is None:
                self._generation.fail(Error(
                    "relay_error", "stream_too_long",
                    f"the stream passed the relay's limit of {self._limits.max_bytes} bytes", self._generation.phase,
                ))
        if terminal is not None:
            await self._append_terminal(terminal)

    async def _append_terminal(self, event: Finish | Error) -> None:
        if isinstance(event, Error):
            name, data = "error", _encode(error_body(event))
        else:
            name, data = "done", _encode({"finish_reason": event.reason, "usage": usage_body(self._usage)})
        await self._log.append(self.id, name, data)
        self.terminal = name
        self.finished = True


class ResumableStreams:
    """The streams of this process, and the task group their generations run on."""

    def __init__(self, log: EventLog, limits: StreamLimits, live: LiveRequests, task_group: anyio.abc.TaskGroup) -> None:
        self.log = log
        self.readers = 0
        self.running = 0
        self._limits = limits
        self._live = live
        self._task_group = task_group
        self._streams: dict[str, ResumableStream] = {}

    def get(self, stream_id: str) -> ResumableStream | None:
        return self._streams.get(stream_id)

    async def start(self, upstream: Route | Upstream, request: GenerationRequest) -> ResumableStream:
        stream_id = "st_" + secrets.token_urlsafe(16)
        await self.log.create(stream_id)
        stream = ResumableStream(stream_id, self.log, self._limits, upstream, request)
        self._streams[stream_id] = stream
        self.running += 1
        self._task_group.start_soon(self._run, stream, name=f"stream {stream_id}")
        return stream

    async def _run(self, stream: ResumableStream) -> None:
        try:
            await stream.run(self._live)
        except Exception:
            logger.exception("stream %s failed", stream.id)
        finally:
            self.running -= 1
            # The registry forgets the stream with the log: a reader then finds neither.
            asyncio.get_running_loop().call_later(self._limits.retention, self._streams.pop, stream.id, None)

    @contextlib.contextmanager
    def reading(self, stream: ResumableStream) -> Iterator[None]:
        self.readers += 1
        stream.reader_joined()
        try:
            yield
        finally:
            self.readers -= 1
            stream.reader_left()
