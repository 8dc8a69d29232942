"""One reader of a resumable stream: the log's events after an id, sent as SSE, then the live ones.

A reader sends what the log holds after its ``Last-Event-ID``, waits for more, and sends that,
up to the terminal event (or until the log drops the stream). Between events it keeps two
promises:

- a heartbeat (``: ping``) when nothing came for ``heartbeat`` seconds, so that proxies and
  browsers keep the connection;
- a cut-off when a send takes longer than ``grace`` (the client stopped reading): the reader
  returns without ending the body, uvicorn closes the connection, a live browser reconnects
  and loses nothing. It holds no generation back meanwhile: the log does not wait for readers.

A deadline per send and per wait (a cancel scope each) would cost more than the rest of an event
together. So one timer per reader, the watchdog, looks at what the reader is doing every
``min(heartbeat, grace)`` seconds (sooner when a deadline falls sooner): it cuts a send that
started ``grace`` ago, and ends a wait that started ``heartbeat`` ago. A send or a wait costs
only the time it starts at.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Literal

import msgspec

from app.streaming.encoders import error_body
from app.streaming.eventlog import Entry, EventLog, LogUnavailable
from app.streaming.events import Error
from app.streaming.sse import HEARTBEAT
from app.types import Send

# Events read from the log at a time, per reader.
READ_BATCH = 256
TERMINAL_EVENTS = frozenset({"done", "error"})
# For a reader still reading when the log drops its stream (its retention ended, or the log needed the room).
EXPIRED = b"event: error\ndata: %b\n\n" % msgspec.json.encode(error_body(Error(
    "relay_error", "stream_expired", "the relay dropped this stream's events before they were all read", "stream",
)))
# For a reader when the event log's Redis cannot be reached: no id, so that a reconnect later resumes where it was.
LOG_UNAVAILABLE = b"event: error\ndata: %b\n\n" % msgspec.json.encode(error_body(Error(
    "relay_error", "log_unavailable", "the relay's event log (Redis) cannot be reached", "stream",
)))

_Doing = Literal["sending", "waiting", "reading"]


class Reader:
    """Sends one stream's events to one client (``send``, the ASGI one), after the response head."""

    __slots__ = ("_cut", "_doing", "_grace", "_heartbeat", "_log", "_loop", "_send", "_since", "_step", "_stream_id", "_timer", "_waiting")

    def __init__(self, send: Send, log: EventLog, stream_id: str, *, heartbeat: float, grace: float) -> None:
        self._send = send
        self._log = log
        self._stream_id = stream_id
        self._heartbeat = heartbeat
        self._grace = grace
        self._step = min(heartbeat, grace)
        self._loop = asyncio.get_running_loop()
        self._doing: _Doing = "reading"
        self._since = 0.0  # when it began what it is doing
        self._cut: asyncio.Timeout | None = None
        self._waiting: asyncio.Timeout | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, after: str | None, entries: list[Entry]) -> None:
        """Send ``entries`` (read after ``after``), every later event up to the terminal one, and end the body.

        A client that takes nothing for ``grace`` is left without the end of the body. A log that
        fails gets ``log_unavailable``.
        """
        async with self._watched():
            try:
                await self.follow(after, entries)
            except LogUnavailable:
                await self.write(LOG_UNAVAILABLE)
            await self.write(b"", more=False)

    async def end_with(self, body: bytes) -> None:
        """Send ``body`` and end the response, unless the client takes nothing for ``grace``."""
        async with self._watched():
            await self.write(body, more=False)

    @contextlib.asynccontextmanager
    async def _watched(self) -> AsyncIterator[None]:
        """The watchdog looks on while the block runs; a send past its grace ends the block, quietly."""
        self._timer = self._loop.call_at(self._loop.time() + self._step, self._watch)
        try:
            async with asyncio.timeout(None) as cut:
                self._cut = cut
                yield
        except TimeoutError:
            if not cut.expired():
                raise
        finally:
            self._timer.cancel()

    async def follow(self, after: str | None, entries: list[Entry]) -> None:
        """Send ``entries``, then every later event, until the terminal one (or the log drops the stream). Raises ``LogUnavailable``."""
        log, stream_id = self._log, self._stream_id
        while True:
            if entries:
                await self.write(b"".join(map(_event, entries)))
                after = entries[-1].id
                if entries[-1].event in TERMINAL_EVENTS:
                    return
            if len(entries) < READ_BATCH and not await self._wait(after):
                # Caught up, most likely: wait rather than read again, which would cost Redis a round trip per event
                # and bring nothing. The wait returns at once if more came meanwhile (on Redis, for free when its
                # tailer has seen them, and the read then takes them from the tailer's batch).
                await self.write(HEARTBEAT)
            self._doing = "reading"
            read = await log.read_after(stream_id, after, READ_BATCH)
            if read is None:
                await self.write(EXPIRED)
                return
            entries = read

    async def write(self, body: bytes, more: bool = True) -> None:
        self._doing, self._since = "sending", self._loop.time()
        await self._send({"type": "http.response.body", "body": body, "more_body": more})
        self._doing = "reading"

    async def _wait(self, after: str | None) -> bool:
        """Wait for an event after ``after``: whether one came (or the stream went) before a heartbeat was due."""
        self._doing, self._since = "waiting", self._loop.time()
        try:
            async with asyncio.timeout(None) as waiting:
                self._waiting = waiting
                await self._log.wait(self._stream_id, after)
        except TimeoutError:
            if not waiting.expired():
                raise
            return False
        finally:
            self._waiting = None
            self._doing = "reading"
        return True

    def _watch(self) -> None:
        """The watchdog: cut a send past its grace, end a wait past the heartbeat, and look again."""
        now = self._loop.time()
        due = math.inf
        if self._doing == "sending":
            due = self._since + self._grace
            if now >= due and self._cut is not None:
                self._cut.reschedule(-math.inf)
                return
        elif self._doing == "waiting" and self._waiting is not None:
            due = self._since + self._heartbeat
            if now >= due:
                self._waiting.reschedule(-math.inf)
                due = math.inf
        self._timer = self._loop.call_at(min(due, now + self._step), self._watch)


def _event(entry: Entry) -> bytes:
    return b"id: %b\nevent: %b\ndata: %b\n\n" % (entry.id.encode(), entry.event.encode(), entry.data)
