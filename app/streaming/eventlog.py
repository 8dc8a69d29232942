"""The event log of resumable streams: what a reader replays after ``Last-Event-ID``.

A log holds, per stream, an append-only sequence of events, each with an id the log
assigns. Ids are opaque strings that increase within a stream; a reader resumes by handing
back the last id it saw. The interface is small on purpose, so that a log shared by several
processes (Redis Streams: ``XADD``, ``XRANGE``/``XREAD BLOCK``, ``EXPIRE``) fits it as well
as the in-memory one (``app/streaming/log_memory.py``).

A stream ends with one terminal event, appended with ``append_terminal``; after it every
append is refused (``AppendRefused``). A stream may be created with an owner token (the
process generating it): the owner's terminal event is then fenced, so that once another
process has declared the owner lost (``append_terminal(owner=NO_OWNER)``, allowed only when
no owner holds the stream) the late owner cannot write after it.

A log has a byte budget for all its streams together. Past it, finished streams (those given
an expiry) are dropped before their time, oldest first; streams still being written are
never dropped by the log: it reports how much room they have left (``room``), and the one
who writes them decides what to end (``app/streaming/resumable.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec


class Entry(msgspec.Struct, frozen=True):
    """One event of a stream: its id, its SSE event name and its data (JSON)."""

    id: str
    event: str
    data: bytes


class StreamInfo(msgspec.Struct, frozen=True):
    """What every process knows of a stream: the API key id that created it, its terminal event's id, whether an owner holds it."""

    key: str | None
    end: str | None
    owned: bool


class InvalidEventId(ValueError):
    """An id this log never issued (not of its form, or past the stream's last event): a reader cannot resume from it."""


class LogUnavailable(Exception):
    """The log's store (Redis) could not be reached or failed: the operation may or may not have taken effect."""


class AppendRefused(Exception):
    """The log refused an append: the stream has its terminal event, is gone, or the caller does not own it.

    ``reason`` is ``"ended"``, ``"unknown"`` or ``"not_owner"``. Nothing was appended.
    """

    def __init__(self, stream_id: str, reason: str) -> None:
        super().__init__(f"append to stream {stream_id!r} refused: {reason}")
        self.stream_id = stream_id
        self.reason = reason


NO_OWNER = ""  # ``append_terminal(owner=NO_OWNER)``: only if nobody owns the stream


class EventLog(Protocol):
    budget: int  # the bytes it may hold, all streams together (with Redis: the streams this process generates)

    async def create(self, stream_id: str, *, owner: str | None = None, key: str | None = None) -> None:
        """Start an empty stream, held by the token ``owner`` if given, created by the API key id ``key``."""

    async def append(self, stream_id: str, event: str, data: bytes) -> str:
        """Add an event at the end of the stream and wake its waiters; returns the event's id. Raises ``AppendRefused``."""

    async def append_many(self, stream_id: str, events: Sequence[tuple[str, bytes]]) -> list[str]:
        """Add ``(event, data)`` pairs at once (one round trip); returns their ids. Raises ``AppendRefused``."""

    async def append_terminal(self, stream_id: str, event: str, data: bytes, *, owner: str | None = None) -> str:
        """Add the stream's terminal event; with ``owner``, only if that token holds the stream. Raises ``AppendRefused``."""

    async def info(self, stream_id: str) -> StreamInfo | None:
        """What is known of the stream; ``None`` when it is unknown or has expired."""

    async def read_after(self, stream_id: str, after: str | None, limit: int) -> list[Entry] | None:
        """Up to ``limit`` events after the id ``after`` (from the start when ``None``), oldest first.

        ``None`` when the stream is unknown or has expired. Raises ``InvalidEventId`` for an id
        that is not of this log's form, or that lies past the stream's last event (ids are
        issued in order, so nobody can hold one the stream has not reached yet).
        """

    async def wait(self, stream_id: str, after: str | None) -> None:
        """Return when the stream has an event after ``after``, or is gone. Bound it with a cancel scope."""

    async def expire(self, stream_id: str, ttl: float) -> None:
        """Drop the stream ``ttl`` seconds from now, or earlier, oldest first, when the log passes its budget."""

    async def trim(self, stream_id: str) -> None:
        """Drop every event of the stream but its last: a reader from any id before it gets that one."""

    @property
    def room(self) -> int:
        """Bytes the streams not yet given an expiry may still grow by, together, within the budget (negative past it)."""

    def on_drop(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(stream_id)`` when the log drops a stream, so that an index of the streams forgets it at once."""

    async def aclose(self) -> None: ...
