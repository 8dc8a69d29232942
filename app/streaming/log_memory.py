"""The in-memory event log: one process, events kept in a list per stream.

Ids are the positions ``1, 2, 3…`` as decimal strings, so reading after an id is a slice.
"""

from __future__ import annotations

import asyncio

import anyio

from app.streaming.eventlog import Entry, InvalidEventId


class _Stream:
    __slots__ = ("changed", "entries", "expiry")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.changed = anyio.Event()
        self.expiry: asyncio.TimerHandle | None = None


class MemoryEventLog:
    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    async def create(self, stream_id: str) -> None:
        self._streams[stream_id] = _Stream()

    async def append(self, stream_id: str, event: str, data: bytes) -> str:
        stream = self._streams[stream_id]
        entry = Entry(str(len(stream.entries) + 1), event, data)
        stream.entries.append(entry)
        changed, stream.changed = stream.changed, anyio.Event()
        changed.set()
        return entry.id

    async def read_after(self, stream_id: str, after: str | None, limit: int) -> list[Entry] | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        start = _position(after)
        return stream.entries[start : start + limit]

    async def wait(self, stream_id: str, after: str | None) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and len(stream.entries) <= _position(after):
            await stream.changed.wait()

    async def expire(self, stream_id: str, ttl: float) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.expiry is not None:
            stream.expiry.cancel()
        stream.expiry = asyncio.get_running_loop().call_later(ttl, self._drop, stream_id)

    async def aclose(self) -> None:
        for stream_id in list(self._streams):
            self._drop(stream_id)

    def _drop(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.expiry is not None:
            stream.expiry.cancel()
        stream.changed.set()  # waiters wake, read again and find the stream gone


def _position(after: str | None) -> int:
    if after is None:
        return 0
    if not (after.isascii() and after.isdigit()) or len(after) > 18:
        raise InvalidEventId(after)
    return int(after)
