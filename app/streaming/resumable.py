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
- the log's budget: when the generating streams alone pass it, the largest of them ends with
  ``error`` code ``stream_log_full``, and the log keeps only that terminal event of it;
- a shutdown, through ``LiveRequests``: ``shutting_down``;
- with Redis (``app/streaming/peers_redis.py``): a ``DELETE`` on another process, which
  reaches this one; readers on other processes count as readers (the grace runs out only
  when nobody anywhere read it for that long); this process losing its lease (``owner_lost``);
  another process having ended it (the fence refuses the appends: the generation stops);
  Redis failing (``log_unavailable``, written if Redis takes it).

The generation's events are appended in batches, one ``append_many`` per coalesced flush
(one round trip on Redis), and the terminal one with ``append_terminal``, fenced by this
process's lease token.

After its terminal event a stream stays readable for ``retention`` seconds, or less when the
log needs the room (oldest first); the registry forgets it when the log drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import assert_never

import anyio
import anyio.abc
import msgspec

from app.ops.record import Operations, RequestRecord
from app.streaming.encoders import error_body, native_done, native_parts
from app.streaming.eventlog import NO_OWNER, AppendRefused, EventLog, LogUnavailable, StreamInfo
from app.streaming.events import Delta, Error, Event, Finish, Logprobs, Part, Reasoning, RedactedReasoning, Refusal, ToolCall, Usage
from app.streaming.generation import Generation, Route, Upstream
from app.streaming.message import Merged
from app.streaming.peers_redis import RedisPeers
from app.streaming.request import GenerationRequest
from app.streaming.respond import LiveRequests

logger = logging.getLogger("token_relay")

_encode = msgspec.json.Encoder().encode
# How a stream ended when its appends were refused: another process ended it first (the fence), or the log dropped it.
_REFUSED = Error("relay_error", "append_refused", "the event log refused the stream's events", "stream")


class StreamLimits(msgspec.Struct, frozen=True):
    grace: float
    retention: float
    max_bytes: int


class ResumableStream:
    """One generation writing into the log: the ``Sink`` of its ``Generation``."""

    def __init__(
        self, stream_id: str, log: EventLog, limits: StreamLimits, upstream: Route | Upstream, request: GenerationRequest,
        *, owner: str | None, log_full: Callable[[], None], lease: str | None = None, ask_peers: Callable[[], None] | None = None,
        record: RequestRecord | None = None,
    ) -> None:
        self.id = stream_id
        self.record = record  # what the operators learn of it, taken from the generation when it ends
        self.owner = owner  # the id of the API key that created it: no other key sees it
        self._lease = lease  # this process's token, which fences the terminal event (NO_OWNER once the lease is lost)
        self._ask_peers = ask_peers  # with Redis: whether readers elsewhere keep the stream alive, asked when the grace runs out
        self._grace_due = False
        self.readers = 0
        self.finished = False
        self.terminal: str | None = None  # the terminal event's name, once appended
        self._log = log
        self._limits = limits
        self._pending: list[Event] = []
        self._ready = asyncio.Event()  # asyncio's: anyio's costs a look-up of the event loop's library at every flush
        self._connecting = anyio.CancelScope()
        self._generation = Generation(upstream, request, self)
        if record is not None:
            self._generation.watcher = record
        self._grace: asyncio.TimerHandle | None = None
        self._usage: Usage | None = None
        self._bytes = 0
        self._log_full = log_full
        self._trim = False

    # The Sink protocol, called by the generation (from the upstream's socket callbacks).

    def push(self, event: Event) -> None:
        self._pending.append(event)
        match event:
            case Finish() | Error():
                self._ready.set()
            case Delta() | Reasoning() | RedactedReasoning() | ToolCall() | Refusal() | Logprobs() | Usage():
                pass  # sent on at the flush that ends this read
            case _:
                assert_never(event)

    def flush(self) -> None:
        self._ready.set()

    def opened(self) -> None:
        pass  # the stream was created (201) before its upstream was asked

    # Control.

    @property
    def generating(self) -> bool:
        return not self._generation.done

    @property
    def logged_bytes(self) -> int:
        return self._bytes

    def cancel(self, code: str = "cancelled", message: str = "the stream was cancelled") -> None:
        """End the generation now with a ``cancelled`` error, closing its upstream."""
        self._end(Error("cancelled", code, message, self._generation.phase))

    def shed(self, budget: int) -> None:
        """End the generation to give the log's memory back: the log then keeps only its terminal event."""
        self._trim = True
        self._end(Error(
            "relay_error", "stream_log_full",
            f"the relay's event log passed its budget of {budget} bytes, and this was its largest stream", self._generation.phase,
        ))

    def _end(self, error: Error) -> None:
        if self.finished:
            return
        self._generation.fail(error)
        self._connecting.cancel()

    def lease_lost(self) -> None:
        """This process no longer holds the stream: end it (another process may already have)."""
        self._lease = NO_OWNER
        self._end(Error("relay_error", "owner_lost", "the relay process generating this stream lost its hold on it", self._generation.phase))

    def reader_joined(self) -> None:
        self.readers += 1
        self._grace_due = False
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
        self._grace = asyncio.get_running_loop().call_later(self._limits.grace, self._grace_over)

    def _grace_over(self) -> None:
        self._grace = None
        if self._ask_peers is None:
            self._no_readers()
        else:
            self._grace_due = True
            self._ask_peers()

    def read_elsewhere(self, seconds: float) -> None:
        """Readers on other processes keep the stream alive ``seconds`` longer (0: nobody reads it elsewhere)."""
        if not self._grace_due or self.readers:
            return
        self._grace_due = False
        if seconds > 0:
            self._grace = asyncio.get_running_loop().call_later(seconds, self._grace_over)
        else:
            self._no_readers()

    def _no_readers(self) -> None:
        self.cancel("no_readers", f"nobody read the stream for {self._limits.grace:g} s")

    # The pump: from the generation's events to the log.

    async def run(self, live: LiveRequests) -> None:
        generation = self._generation
        self._start_grace()
        fallback: Error | None = Error("relay_error", "internal_error", "the relay failed", "stream")
        try:
            with live.track(generation):
                with self._connecting:
                    await generation.start()
                while self.terminal is None:
                    await self._ready.wait()
                    self._ready.clear()
                    events, self._pending = self._pending, []
                    await self._append(events)
        except AppendRefused as exc:  # another process ended it (the fence), or it is gone: nothing more to write
            logger.warning("stream %s: the event log refused its events (%s); its generation stops", self.id, exc.reason)
            fallback = None
        except LogUnavailable as exc:
            logger.warning("stream %s: %s; its generation stops", self.id, exc)
            fallback = Error("relay_error", "log_unavailable", "the relay's event log failed; the stream could not go on", generation.phase)
        except anyio.get_cancelled_exc_class():
            fallback = Error("relay_error", "shutting_down", "the relay is shutting down", generation.phase)
            raise
        finally:
            generation.close()
            self.finished = True
            if self.record is not None:
                self.record.take(generation, fallback or _REFUSED)
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
            with anyio.CancelScope(shield=True):
                await self._close(fallback)

    async def _close(self, fallback: Error | None) -> None:
        """Give the readers a terminal event if the generation could not (a defect, a shutdown, Redis), then the retention."""
        try:
            if self.terminal is None and fallback is not None:
                await self._append_terminal(fallback)
            if self._trim:
                await self._log.trim(self.id)
            await self._log.expire(self.id, self._limits.retention)
        except (AppendRefused, LogUnavailable) as exc:
            # Its keys still go with their lifetime; a reader elsewhere declares the owner lost once the lease is gone.
            logger.warning("stream %s could not be closed in the event log: %s", self.id, exc)

    async def _append(self, events: list[Event]) -> None:
        """Append what came together, in one round trip: one log entry per field (``native_parts``), then the terminal event if it came."""
        parts: list[Part] = []
        terminal: Finish | Error | None = None
        for event in events:
            match event:
                case Delta() | Reasoning() | RedactedReasoning() | ToolCall() | Refusal() | Logprobs():
                    parts.append(event)
                case Usage():
                    self._usage = event
                case Finish() | Error():
                    terminal = event
                    break
                case _:
                    assert_never(event)
        batch = native_parts(Merged.of(parts)) if parts else []
        if batch:
            self._bytes += sum(len(data) for _, data in batch)
            await self._log.append_many(self.id, batch)
            if terminal is None and self._bytes > self._limits.max_bytes:
                self._generation.fail(Error(
                    "relay_error", "stream_too_long",
                    f"the stream passed the relay's limit of {self._limits.max_bytes} bytes", self._generation.phase,
                ))
            elif self._log.room < 0:
                self._log_full()
        if terminal is not None:
            await self._append_terminal(terminal)

    async def _append_terminal(self, event: Finish | Error) -> None:
        match event:
            case Error():
                name, data = "error", _encode(error_body(event))
            case Finish():
                name, data = "done", native_done(event, self._usage)
            case _:
                assert_never(event)
        try:
            await self._log.append_terminal(self.id, name, data, owner=self._lease)
        except AppendRefused as exc:
            if exc.reason != "not_owner" or self._lease == NO_OWNER:
                raise
            # The lease ran out unseen (a stalled process): if nobody has ended the stream meanwhile, end it as it ended.
            self._lease = NO_OWNER
            await self._log.append_terminal(self.id, name, data, owner=NO_OWNER)
        self.terminal = name
        self.finished = True


class ResumableStreams:
    """The streams of this process, and the task group their generations run on."""

    def __init__(
        self, log: EventLog, limits: StreamLimits, live: LiveRequests, task_group: anyio.abc.TaskGroup, peers: RedisPeers | None = None,
        operations: Operations | None = None,
    ) -> None:
        self.log = log
        self.operations = operations or Operations()
        self.peers = peers  # with Redis: the other processes
        self.readers = 0
        self.running = 0
        self._limits = limits
        self._live = live
        self._task_group = task_group
        self._streams: dict[str, ResumableStream] = {}
        self._shedding: ResumableStream | None = None
        # The registry forgets a stream when the log drops it: a reader then finds neither.
        log.on_drop(self._forget)

    @property
    def full(self) -> bool:
        """Whether a new stream could not grow to its own limit within the room the log has left."""
        return self.log.room < self._limits.max_bytes

    def get(self, stream_id: str) -> ResumableStream | None:
        return self._streams.get(stream_id)

    async def lookup(self, stream_id: str) -> StreamInfo | None:
        """What every process knows of the stream; one found open with no owner left is ended first (``owner_lost``).

        Raises ``LogUnavailable``.
        """
        info = await self.log.info(stream_id)
        if info is not None and info.end is None and not info.owned and self.peers is not None:
            await self.peers.end_unowned(stream_id)
            info = await self.log.info(stream_id)
        return info

    async def cancel(self, stream_id: str) -> None:
        """End the stream's generation, here or on the process that owns it. Raises ``LogUnavailable``."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.cancel()
        elif self.peers is not None:
            await self.peers.cancel(stream_id)

    async def start(
        self, upstream: Route | Upstream, request: GenerationRequest, owner: str | None = None, record: RequestRecord | None = None,
    ) -> ResumableStream:
        """Create the stream in the log and start its generation (its ``record`` is then the stream's to end). Raises ``LogUnavailable``."""
        stream_id = "st_" + secrets.token_urlsafe(16)
        peers = self.peers
        lease = peers.token if peers is not None else None
        await self.log.create(stream_id, owner=lease, key=owner)
        stream = ResumableStream(
            stream_id, self.log, self._limits, upstream, request, owner=owner, log_full=self._shed_largest,
            lease=lease, ask_peers=peers.wake if peers is not None else None, record=record,
        )
        self._streams[stream_id] = stream
        if peers is not None:
            peers.own(stream)
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
            if stream.record is not None:
                self.operations.end(stream.record)
            if self.peers is not None:
                self.peers.disown(stream.id)
            if self._shedding is stream:
                self._shedding = None

    def _shed_largest(self) -> None:
        """The generating streams alone passed the log's budget: end the largest, which gives its events back.

        One at a time: until that one has let its events go, the log still counts them.
        """
        if self._shedding is not None:
            return
        generating = [stream for stream in self._streams.values() if stream.generating]
        if generating:
            self._shedding = max(generating, key=lambda stream: stream.logged_bytes)
            self._shedding.shed(self.log.budget)

    def _forget(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)

    @contextlib.asynccontextmanager
    async def reading(self, stream_id: str) -> AsyncIterator[None]:
        """A reader of the stream, here or (with Redis) of one another process owns. Raises ``LogUnavailable``."""
        stream = self._streams.get(stream_id)
        elsewhere = self.peers if stream is None else None
        if elsewhere is not None:
            await elsewhere.join(stream_id)
        self.readers += 1
        if stream is not None:
            stream.reader_joined()
        try:
            yield
        finally:
            self.readers -= 1
            if stream is not None:
                stream.reader_left()
            if elsewhere is not None:
                elsewhere.leave(stream_id)
