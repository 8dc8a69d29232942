"""The in-memory event log: one process, events kept in a list per stream.

One process owns every stream it holds, so the owner token only fences what it names: a
terminal event appended with another token, or with ``NO_OWNER`` for a stream created with one,
is refused. Ids are the positions ``1, 2, 3…`` as decimal strings, so reading after an id is a slice
(shifted by the events ``trim`` dropped).

The budget counts what the events cost in memory, not only their data: every entry and
every stream has a fixed cost too, so that many small streams are bounded as surely as a
few large ones. Finished streams wait in the order they were given their expiry, the
oldest first in line to be dropped when the log passes its budget.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence

from app.streaming.eventlog import NO_OWNER, AppendRefused, Entry, InvalidEventId, StreamInfo

# What an entry costs beside its data (the Entry, its id string, the bytes' header, the list's slot), rounded up.
ENTRY_COST = 128
# What a stream costs beside its entries, here and in the process's registry of streams, rounded up.
STREAM_COST = 4096


class _Stream:
    __slots__ = ("changed", "end", "entries", "expiry", "key", "nbytes", "owner", "trimmed")

    def __init__(self, owner: str | None, key: str | None) -> None:
        self.owner = owner
        self.key = key
        self.end: str | None = None  # the terminal event's id
        self.entries: list[Entry] = []
        self.trimmed = 0  # events dropped from the start by trim(): the first entry's id is trimmed + 1
        self.nbytes = STREAM_COST
        self.changed = asyncio.Event()  # set and cleared at each append: it wakes those waiting then
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def last(self) -> int:
        """The position (the id) of its last event."""
        return self.trimmed + len(self.entries)


class MemoryEventLog:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.nbytes = 0
        self._streams: dict[str, _Stream] = {}
        self._finished: OrderedDict[str, _Stream] = OrderedDict()
        self._finished_bytes = 0
        self._on_drop: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def room(self) -> int:
        return self.budget - (self.nbytes - self._finished_bytes)

    def on_drop(self, callback: Callable[[str], None]) -> None:
        self._on_drop = callback

    async def create(self, stream_id: str, *, owner: str | None = None, key: str | None = None) -> None:
        stream = self._streams[stream_id] = _Stream(owner, key)
        self.nbytes += stream.nbytes
        self._make_room()

    async def append(self, stream_id: str, event: str, data: bytes) -> str:
        return self._add(self._open(stream_id), event, data)

    async def append_many(self, stream_id: str, events: Sequence[tuple[str, bytes]]) -> list[str]:
        stream = self._open(stream_id)
        return [self._add(stream, event, data) for event, data in events]

    async def append_terminal(self, stream_id: str, event: str, data: bytes, *, owner: str | None = None) -> str:
        stream = self._open(stream_id)
        if owner is not None and owner != (stream.owner or NO_OWNER):
            raise AppendRefused(stream_id, "not_owner")
        stream.end = self._add(stream, event, data)
        return stream.end

    async def info(self, stream_id: str) -> StreamInfo | None:
        stream = self._streams.get(stream_id)
        return None if stream is None else StreamInfo(stream.key, stream.end, owned=True)

    def _open(self, stream_id: str) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise AppendRefused(stream_id, "unknown")
        if stream.end is not None:
            raise AppendRefused(stream_id, "ended")
        return stream

    def _add(self, stream: _Stream, event: str, data: bytes) -> str:
        entry = Entry(str(stream.last + 1), event, data)
        stream.entries.append(entry)
        self._grow(stream, len(data) + ENTRY_COST)
        stream.changed.set()
        stream.changed.clear()
        return entry.id

    async def read_after(self, stream_id: str, after: str | None, limit: int) -> list[Entry] | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        position = _position(after)
        if position > stream.last:
            raise InvalidEventId(after)
        start = max(position - stream.trimmed, 0)
        return stream.entries[start : start + limit]

    async def wait(self, stream_id: str, after: str | None) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.last <= _position(after):
            await stream.changed.wait()

    async def expire(self, stream_id: str, ttl: float) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.expiry is None:
            self._finished_bytes += stream.nbytes
        else:
            stream.expiry.cancel()
        self._finished[stream_id] = stream
        self._finished.move_to_end(stream_id)
        stream.expiry = asyncio.get_running_loop().call_later(ttl, self._drop, stream_id)
        self._make_room()

    async def trim(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or len(stream.entries) < 2:
            return
        dropped, stream.entries = stream.entries[:-1], stream.entries[-1:]
        stream.trimmed += len(dropped)
        self._grow(stream, -sum(len(entry.data) + ENTRY_COST for entry in dropped))

    async def aclose(self) -> None:
        for stream_id in list(self._streams):
            self._drop(stream_id)

    def _grow(self, stream: _Stream, nbytes: int) -> None:
        stream.nbytes += nbytes
        self.nbytes += nbytes
        if stream.expiry is not None:
            self._finished_bytes += nbytes
        if nbytes > 0:
            self._make_room()

    def _make_room(self) -> None:
        while self.nbytes > self.budget and self._finished:
            self._drop(next(iter(self._finished)))

    def _drop(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self.nbytes -= stream.nbytes
        if stream.expiry is not None:
            stream.expiry.cancel()
            del self._finished[stream_id]
            self._finished_bytes -= stream.nbytes
        stream.changed.set()  # waiters wake, read again and find the stream gone
        if self._on_drop is not None:
            self._on_drop(stream_id)


def _position(after: str | None) -> int:
    if after is None:
        return 0
    if not (after.isascii() and after.isdigit()) or len(after) > 18:
        raise InvalidEventId(after)
    return int(after)
