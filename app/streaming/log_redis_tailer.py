"""Waiting for the next event of Redis streams: one tailer per process, one ``XREAD BLOCK`` for all of them.

A reader that has caught up with its stream waits for the next event. One blocking ``XREAD``
per waiting reader would hold one connection per reader (a thousand readers, a thousand
connections per process, past redis-py's default pool of 100), and a reader's wait is cancelled
at every heartbeat, which costs a reconnection: redis-py closes a connection whose command was
cancelled, since the reply may still come. Each event would also cost Redis one reply per
reader. So the tailer of a process watches every stream its readers wait on, with one
``XREAD COUNT batch BLOCK ms STREAMS k1 k2 … id1 id2 …`` on a connection of its own, made
with the pool's settings but outside the pool:

- a wait on a stream already watched costs no round trip: it waits on the stream's local
  event, which the tailer sets when its ``XREAD`` brings news of the stream;
- a stream not watched yet is added, and the ``XREAD`` in flight, which does not name it, is
  ended early with ``CLIENT UNBLOCK`` (by the kicker task, one for many new streams); the
  tailer then reads again with the new stream;
- the entries each ``XREAD`` brings are kept (the latest batch of each stream) so that the
  readers it wakes read them without a round trip (``recent``);
- a stream nobody has waited on for ``block`` seconds (up to a quarter more) is dropped from the ``XREAD``;
- a stream this process appends to (one it generates) is not in the ``XREAD``: the log hands
  its appends to ``appended``, which wakes its waiters with the entries, until ``release``
  (its appends ended or failed: another process may write to it from then on);
- every ``block`` seconds the tailer checks that the watched streams still exist, and wakes
  the waiters of those that are gone (expired or deleted: ``XREAD`` would block on them);
- when its connection fails (or no reply comes within ``block`` + ``REPLY_GRACE`` seconds),
  every waiter gets ``LogUnavailable``; the next wait connects again.

A ``XREAD`` over many keys needs them on one node: on Redis Cluster the tailer would need one
connection per node. ``block`` is below the pool's ``socket_timeout``: the read is not cut
short by it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import anyio.abc
from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from app.streaming.eventlog import Entry, LogUnavailable

logger = logging.getLogger("token_relay")

REPLY_GRACE = 2.0  # how much longer than its block an XREAD may take before the connection counts as lost
KICK_RETRY = 0.002  # the XREAD to unblock had not reached Redis yet: try again this soon

_EXISTING = "local found = {} for i, key in ipairs(KEYS) do found[i] = redis.call('EXISTS', key) end return found"


def decode_entries(raw: list[Any]) -> list[Entry]:
    """Entries as ``XRANGE`` and ``XREAD`` return them: ids ``0-N``, fields ``e`` (event) then ``d`` (data)."""
    return [Entry(entry_id[2:].decode(), fields[1].decode(), fields[3]) for entry_id, fields in raw]


class _Watch:
    __slots__ = ("changed", "cursor", "error", "gone", "idle_since", "known", "meta", "position", "recent", "waiters")

    def __init__(self, meta: bytes, cursor: int) -> None:
        self.meta = meta  # a key that exists as long as the stream does
        self.cursor = cursor  # the tailer reads the stream after this id
        self.position = b"0-%d" % cursor  # that id as XREAD takes it, made once per move rather than once per XREAD
        self.known = 0  # the highest id the tailer has seen in the stream
        self.recent: list[Entry] = []  # the tailer's latest batch of the stream, up to ``known``
        self.waiters = 0
        self.idle_since = 0.0
        self.changed = asyncio.Event()  # set and cleared by wake(): it wakes those waiting then
        self.gone = False
        self.error: BaseException | None = None

    def move(self, cursor: int, position: bytes) -> None:
        self.cursor = cursor
        self.position = position

    def wake(self) -> None:
        self.changed.set()
        self.changed.clear()


class Tailer:
    """The waits of one process on Redis streams, served by one ``XREAD BLOCK``; it runs on ``task_group``."""

    def __init__(self, pool: ConnectionPool, redis: Redis, task_group: anyio.abc.TaskGroup, *, block: float, batch: int) -> None:
        self._pool = pool
        self._redis = redis
        self._task_group = task_group
        self._block = block
        self._batch = batch
        self._existing = redis.register_script(_EXISTING)
        self._watches: dict[bytes, _Watch] = {}  # the streams the XREAD reads
        self._local: dict[bytes, _Watch] = {}  # the streams this process appends to, woken by ``appended``
        self._loop = asyncio.get_running_loop()
        self._version = 0  # counts the changes that need the XREAD to read from elsewhere
        self._issued = 0  # the version the XREAD in flight was built from
        self._connection_id = 0  # the tailer connection's client id in Redis
        self._blocked: int | None = None  # that id while an XREAD is in flight
        self._sent = anyio.Event()  # set when an XREAD is sent
        self._wanted = anyio.Event()  # set when a stream is added
        self._kick = anyio.Event()
        self._checked = 0.0
        self._idle_checked = 0.0
        self._scope = anyio.CancelScope()
        self._started = False
        self._closed = False

    async def wait(self, key: bytes, meta: bytes, after: int, *, local: int | None = None) -> None:
        """Return when stream ``key`` has an entry after ``after``, or is gone. Raises ``LogUnavailable``.

        ``local``: the stream is one this process appends to, and this is its last id: its waiters are
        woken by ``appended``, not by the ``XREAD``, until ``release``.
        """
        if self._closed:
            return
        watch = self._local.get(key) if local is not None else self._watches.get(key)
        if watch is None and local is not None:
            watch = self._local[key] = _Watch(meta, local)
            watch.known = local
        elif watch is None:
            watch = self._watches[key] = _Watch(meta, after)
            self._moved()
        elif watch.known > after:
            return
        elif after < watch.cursor and local is None:  # read after an id the tailer is not at yet (a bogus Last-Event-ID came first)
            watch.move(after, b"0-%d" % after)
            self._moved()
        watch.waiters += 1
        try:
            while watch.known <= after and not watch.gone and watch.error is None:
                await watch.changed.wait()
        finally:
            watch.waiters -= 1
            if not watch.waiters:
                watch.idle_since = self._loop.time()
        if watch.error is not None:
            raise LogUnavailable(f"lost Redis while waiting for events: {watch.error}") from watch.error

    def appended(self, key: bytes, entries: list[Entry]) -> None:
        """This process appended ``entries`` to the local stream ``key``: its waiters take them from here."""
        watch = self._local.get(key)
        if watch is None or not entries:
            return
        last = int(entries[-1].id)
        # The latest entries, contiguous up to ``known``, at most a batch of them, as the XREAD keeps them.
        if watch.recent and watch.known == last - len(entries):
            watch.recent = (watch.recent + entries)[-self._batch :]
        else:
            watch.recent = entries
        watch.known = last
        watch.move(last, b"0-%d" % last)
        watch.wake()

    def release(self, key: bytes) -> None:
        """The local stream ``key`` may take entries from elsewhere from now on (its appends here ended or failed): tail it."""
        watch = self._local.pop(key, None)
        if watch is None or self._closed:
            return
        if key not in self._watches:
            self._watches[key] = watch
            watch.idle_since = self._loop.time()
        self._moved()

    def recent(self, key: bytes, after: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries after ``after`` from the tailer's latest batch of stream ``key`` (none if it has not them)."""
        watch = self._local.get(key) or self._watches.get(key)
        if watch is None:
            return []
        start = after - watch.known + len(watch.recent)
        return watch.recent[start : start + limit] if start >= 0 else []

    async def aclose(self) -> None:
        self._closed = True
        self._scope.cancel()
        for watch in (*self._watches.values(), *self._local.values()):
            watch.gone = True
            watch.wake()
        self._watches.clear()
        self._local.clear()

    def _moved(self) -> None:
        self._version += 1
        self._wanted.set()
        self._kick.set()
        if not self._started:
            self._started = True
            self._task_group.start_soon(self._run, name="event log tailer")

    async def _run(self) -> None:
        with self._scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._kicker)
                await self._tail()

    async def _tail(self) -> None:
        connection = self._pool.connection_class(**self._pool.connection_kwargs)
        try:
            while True:
                self._forget_idle()
                if not self._watches:
                    self._issued = self._version
                    await self._wanted.wait()
                    self._wanted = anyio.Event()
                    continue
                try:
                    await self._cycle(connection)
                except (RedisError, OSError) as exc:  # OSError: TimeoutError too
                    logger.warning("the event log lost Redis while tailing %d streams: %s", len(self._watches), exc)
                    await connection.disconnect()
                    self._fail(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await connection.disconnect()

    async def _cycle(self, connection: AbstractConnection) -> None:
        now = self._loop.time()
        if now - self._checked >= self._block:
            self._checked = now
            await self._forget_gone()
        watches = list(self._watches.items())
        if not watches:
            return
        self._issued = self._version
        # Packed by hiredis: redis-py's own packing, in Python, costs more than the rest of a cycle with many streams.
        parts: tuple[Any, ...] = (
            "XREAD", "COUNT", self._batch, "BLOCK", int(self._block * 1000), "STREAMS",
            *[key for key, _ in watches], *[watch.position for _, watch in watches],
        )
        command = pack_command(parts)
        with anyio.fail_after(self._block + REPLY_GRACE):
            if not connection.is_connected:  # sending connects it, with the pool's settings
                await connection.send_command("CLIENT", "ID")
                self._connection_id = await connection.read_response()
            await connection.send_packed_command(command)
            self._blocked = self._connection_id
            self._sent.set()
            self._sent = anyio.Event()
            try:
                reply = await connection.read_response()
            finally:
                self._blocked = None
        if reply:
            self._deliver(reply)

    def _deliver(self, reply: list[Any] | dict[bytes, Any]) -> None:
        for key, raw in reply.items() if isinstance(reply, dict) else reply:  # RESP3 answers a map
            watch = self._watches.get(key)
            entries = decode_entries(raw)
            if watch is None or not entries:
                continue
            watch.recent = entries
            watch.known = int(entries[-1].id)
            watch.move(watch.known, raw[-1][0])
            watch.wake()

    async def _kicker(self) -> None:
        """End the XREAD in flight early when it does not read every stream it should."""
        while True:
            await self._kick.wait()
            self._kick = anyio.Event()
            while self._issued < self._version:
                if self._blocked is None:
                    await self._sent.wait()
                    continue
                try:
                    if await self._redis.client_unblock(self._blocked):
                        break
                except RedisError:
                    break  # the tailer finds out itself, within ``block``
                await anyio.sleep(KICK_RETRY)

    async def _forget_gone(self) -> None:
        watches = list(self._watches.items())
        existing = await self._existing(keys=[watch.meta for _, watch in watches]) if watches else []
        for (key, watch), exists in zip(watches, existing, strict=True):
            if not exists:
                watch.gone = True
                watch.wake()
                self._watches.pop(key, None)

    def _forget_idle(self) -> None:
        now = self._loop.time()
        if now - self._idle_checked < self._block / 4:  # not at every XREAD: that would cost a look at every stream each time
            return
        self._idle_checked = now
        for key, watch in list(self._watches.items()):
            if not watch.waiters and now - watch.idle_since > self._block:
                del self._watches[key]

    def _fail(self, exc: BaseException) -> None:
        for watch in self._watches.values():
            watch.error = exc
            watch.wake()
        self._watches.clear()
