"""The Redis event log: resumable streams that every process on one Redis can read and resume.

Keys. Everything of stream ``ID`` lives under one prefix (``relay:stream:`` by default) and
one hash tag, so that on Redis Cluster it stays on one slot:

- ``relay:stream:{ID}``: a Redis stream, the events, with fields ``e`` (the SSE event name)
  and ``d`` (its data);
- ``relay:stream:{ID}:meta``: a hash whose field ``end`` is empty while the stream is open,
  then the id of its terminal event, and ``key`` the id of the API key that created it (empty
  for none); it exists from ``create`` on, the stream key from the first append on;
- ``relay:stream:{ID}:owner``: the owner's token, for a stream created with one, living
  ``lease`` seconds unless the owner renews it (``app/streaming/peers_redis.py``);
- ``relay:stream:{ID}:readers``: whether someone on another process than the owner read the
  stream lately (``app/streaming/peers_redis.py``).

Ids. Each stream counts its events ``1, 2, 3…``, as the memory log does, so that an id means
the same on every process: event ``N`` is the entry ``0-N``. Every append is a Lua script
that adds with ``XADD key 0-* …``, where Redis picks the next number, atomically: ids are
gap-free in the order every reader sees them, on every process, and ``XRANGE key (0-N +``
replays exactly the events after ``N``, once each. An id past the stream's last event is
refused (``InvalidEventId``), as the memory log refuses it.

Appends. ``append_many`` writes a coalesced flush, any number of events, in one script call,
and the process's writer (``app/streaming/log_redis_writer.py``) sends the calls of all its
streams that come together in one pipeline: one round trip for many flushes. Only ``trim`` trims a stream (``XTRIM MAXLEN 1``, for a stream ended to give
its room back); the per-stream cap is the caller's, which counts the bytes it hands over.

The budget. Redis is shared, so each process keeps to its budget for the streams it created
and is still generating (``room``), as the memory log does for all of its streams: the caller
refuses new streams and ends the largest when they pass it. Finished streams are not dropped
early: they go with their retention (``expire``), and Redis's ``maxmemory`` bounds the whole
(docs/streams.md). ``on_drop`` is called when the retention of a stream created here ends.

The fence. A stream takes one terminal event, through ``append_terminal``, a script that
appends only while the stream has no terminal event, and, when the caller passes ``owner``,
only if the owner key holds that token (``NO_OWNER``: only if no owner holds the stream, for a
process that declares its owner lost once the lease has expired). Once the terminal event is
in, every append from anyone (``append``, ``append_many``, ``append_terminal``) is refused
with ``AppendRefused`` (``reason`` ``"ended"``), as is an append to a stream that is unknown
or expired (``"unknown"``) or a fenced one from a caller that is not the owner
(``"not_owner"``). A refused append appends nothing.

Expiry. ``create`` gives the stream's keys a time to live of ``lifetime`` seconds (the owner
key ``lease``), which the owner renews while it generates (``app/streaming/peers_redis.py``),
so that a stream whose owner died, and that nobody ended, goes away with all its keys;
``expire`` sets the time to live of all of them (a stream's key takes that of the meta key
when the first append makes it). No key of the log ever lives without one.

Waiting. ``wait`` goes to the process's ``Tailer`` (``app/streaming/log_redis_tailer.py``):
one ``XREAD BLOCK`` for every stream its readers wait on, and ``read_after`` takes the
events it has just brought, when it has them, without a round trip. A stream created here
with an owner token is not read back from Redis while this process appends to it: each
append's entries go to the tailer as its reply arrives, and from there to the waiters here.
Its first failed or refused append, or its ``expire``, hands it over to the ``XREAD``. A
reader here of a stream this process generates thus learns that Redis failed from that
stream's next append (a generation appends at every flush), not from the tailer.

Failures. A Redis error of any operation, ``wait`` included, becomes ``LogUnavailable``. The
operations that can be repeated (``create``, ``read_after``, ``expire``) are tried once more
after a connection error, which is what a pooled connection closed by a Redis restart gives;
an append is not: it may have been applied before its connection broke. Nothing needs
rebuilding when Redis comes back: the pool reconnects, the scripts are loaded again on
``NOSCRIPT``, the tailer connects again at the next wait.

The pool is the caller's (the lifespan's); it must not decode responses, and its
``socket_timeout``, when set, must be longer than ``block``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any

import anyio.abc
from redis.asyncio import Redis
from redis.asyncio.connection import ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from app.streaming.eventlog import NO_OWNER, AppendRefused, Entry, InvalidEventId, LogUnavailable, StreamInfo
from app.streaming.log_memory import ENTRY_COST, STREAM_COST, _position
from app.streaming.log_redis_tailer import Tailer, decode_entries
from app.streaming.log_redis_writer import Writer

__all__ = ["NO_OWNER", "RedisEventLog"]

# KEYS: stream, meta, owner. A stream's key gets the meta key's time to live when an append creates it.
_OPEN = """
local ended = redis.call('HGET', KEYS[2], 'end')
if not ended then return -1 end
if ended ~= '' then return -2 end
"""
_KEEP_TTL = """
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ttl) end
return id
"""
_APPEND = _OPEN + """
local id
for i = 1, #ARGV, 2 do id = redis.call('XADD', KEYS[1], '0-*', 'e', ARGV[i], 'd', ARGV[i + 1]) end
""" + _KEEP_TTL
_APPEND_TERMINAL = _OPEN + """
if ARGV[1] == '1' and (redis.call('GET', KEYS[3]) or '') ~= ARGV[2] then return -3 end
local id = redis.call('XADD', KEYS[1], '0-*', 'e', ARGV[3], 'd', ARGV[4])
redis.call('HSET', KEYS[2], 'end', string.sub(id, 3))
""" + _KEEP_TTL
_CREATE = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[2], 'end', '', 'key', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[4]) end
"""
_READ = """
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
local entries = {}
if ARGV[2] ~= '0' then entries = redis.call('XRANGE', KEYS[1], '(0-' .. ARGV[1], '+', 'COUNT', ARGV[2]) end
if #entries == 0 and ARGV[1] ~= '0' then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if tonumber(ARGV[1]) > (last and tonumber(string.sub(last[1], 3)) or 0) then return -1 end
end
return entries
"""
_INFO = """
local meta = redis.call('HMGET', KEYS[1], 'end', 'key')
if not meta[1] then return false end
return {meta[1], meta[2] or '', redis.call('EXISTS', KEYS[2])}
"""
_TRIM = "redis.call('XTRIM', KEYS[1], 'MAXLEN', 1)"
_EXPIRE = "for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[1]) end"
_REFUSED = {-1: "unknown", -2: "ended", -3: "not_owner"}


class RedisEventLog:
    def __init__(
        self, pool: ConnectionPool, task_group: anyio.abc.TaskGroup, *,
        prefix: str = "relay:stream:", lifetime: float = 3600.0, lease: float | None = None, block: float = 1.0, batch: int = 100,
        budget: int = 1 << 62,
    ) -> None:
        """``lifetime``: how long a stream's keys live unless renewed or ``expire`` says otherwise; ``lease``: how long
        an owner's token does (the lifetime when unset); ``block``: the tailer's ``XREAD BLOCK`` (and how late it may
        notice a stream gone); ``batch``: its ``COUNT``; ``budget``: the bytes of the streams this process generates."""
        if block <= 0:
            raise ValueError("the tailer's block is a positive number of seconds (XREAD BLOCK 0 waits for ever)")
        if pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the event log reads bytes: its Redis pool must not decode responses")
        socket_timeout = pool.connection_kwargs.get("socket_timeout")
        if socket_timeout is not None and socket_timeout <= block:
            raise ValueError(f"the Redis pool's socket_timeout ({socket_timeout} s) must be longer than the tailer's block ({block} s)")
        self.redis = Redis(connection_pool=pool)
        self.budget = budget
        self.lifetime = lifetime
        self._prefix = prefix.encode()
        self._lifetime_ms = math.ceil(lifetime * 1000)
        self._lease_ms = math.ceil((lease or lifetime) * 1000)
        self._tailer = Tailer(pool, self.redis, task_group, block=block, batch=batch)
        self._writer = Writer(pool, task_group)
        self._open: dict[str, int] = {}  # the bytes of each stream created here that has no expiry yet
        self._local: dict[str, int] = {}  # the last id of each stream this process generates, while it appends to it
        self._open_bytes = 0
        self._drops: dict[str, asyncio.TimerHandle] = {}
        self._on_drop: Callable[[str], None] | None = None
        self._append = self.redis.register_script(_APPEND)
        self._append_terminal = self.redis.register_script(_APPEND_TERMINAL)
        self._create = self.redis.register_script(_CREATE)
        self._read = self.redis.register_script(_READ)
        self._info = self.redis.register_script(_INFO)
        self._expire = self.redis.register_script(_EXPIRE)
        self._trim = self.redis.register_script(_TRIM)

    @property
    def room(self) -> int:
        return self.budget - self._open_bytes

    def on_drop(self, callback: Callable[[str], None]) -> None:
        self._on_drop = callback

    def keys(self, stream_id: str) -> tuple[bytes, bytes, bytes]:
        """The Redis keys of a stream: the stream, its meta hash, its owner."""
        stream = b"%s{%s}" % (self._prefix, stream_id.encode())
        return stream, stream + b":meta", stream + b":owner"

    def readers_key(self, stream_id: str) -> bytes:
        return b"%s{%s}:readers" % (self._prefix, stream_id.encode())

    async def create(self, stream_id: str, *, owner: str | None = None, key: str | None = None) -> None:
        """Start an empty stream (anew, if the id was in use), owned by the token ``owner`` if one is given."""
        if owner == NO_OWNER:
            raise ValueError("an owner token is not empty")
        await self._call(self._create, self.keys(stream_id), (self._lifetime_ms, owner or "", key or "", self._lease_ms))
        self._count(stream_id, STREAM_COST, new=True)
        if owner is not None:
            self._local[stream_id] = 0

    async def append(self, stream_id: str, event: str, data: bytes) -> str:
        """Add one event; returns its id. Raises ``AppendRefused``, ``LogUnavailable``."""
        return (await self.append_many(stream_id, ((event, data),)))[0]

    async def append_many(self, stream_id: str, events: Sequence[tuple[str, bytes]]) -> list[str]:
        """Add ``(event, data)`` pairs in one round trip; returns their ids. Raises ``AppendRefused``, ``LogUnavailable``."""
        if not events:
            return []
        return await self._appended(stream_id, self._append, self.keys(stream_id)[:2], [part for event in events for part in event], events)

    async def append_terminal(self, stream_id: str, event: str, data: bytes, *, owner: str | None = None) -> str:
        """Add the stream's terminal event, fenced (see the module's docstring); returns its id.

        Raises ``AppendRefused``, ``LogUnavailable``.
        """
        args = ("0" if owner is None else "1", owner or "", event, data)
        return (await self._appended(stream_id, self._append_terminal, self.keys(stream_id), args, ((event, data),)))[0]

    async def _appended(
        self, stream_id: str, script: AsyncScript, keys: Sequence[bytes], args: Sequence[bytes | str], events: Sequence[tuple[str, bytes]],
    ) -> list[str]:
        """Append ``events`` with ``script``; their ids. A stream appended here hands them to its local waiters."""
        try:
            reply = await self._writer.call(script, keys, args)
            if isinstance(reply, int):
                raise AppendRefused(stream_id, _REFUSED[reply])
        except (AppendRefused, LogUnavailable):
            self._release(stream_id)  # whatever comes next (another process's terminal event, the stream gone) comes by the XREAD
            raise
        last = int(reply[2:])
        first = last - len(events) + 1
        ids = [str(n) for n in range(first, last + 1)]
        self._count(stream_id, sum(len(data) for _, data in events) + ENTRY_COST * len(events))
        if stream_id in self._local:
            self._local[stream_id] = last
            self._tailer.appended(keys[0], [Entry(entry_id, event, data) for entry_id, (event, data) in zip(ids, events, strict=True)])
        return ids

    async def info(self, stream_id: str) -> StreamInfo | None:
        _, meta, owner = self.keys(stream_id)
        raw = await self._call(self._info, (meta, owner), ())
        if raw is None:
            return None
        end, key, owned = raw
        return StreamInfo(key.decode() or None, end.decode() or None, bool(owned))

    async def read_after(self, stream_id: str, after: str | None, limit: int) -> list[Entry] | None:
        """As the interface says; the events the tailer has just brought may be all it returns, even when more have
        come since: a reader reads again after the last one, as readers do."""
        start = _position(after)
        keys = self.keys(stream_id)
        if recent := self._tailer.recent(keys[0], start, limit):
            return recent
        raw = await self._call(self._read, keys[:2], (start, limit))
        if raw == -1:
            raise InvalidEventId(after)
        return None if raw is None else decode_entries(raw)

    async def wait(self, stream_id: str, after: str | None) -> None:
        start = _position(after)
        stream, meta, _ = self.keys(stream_id)
        await self._tailer.wait(stream, meta, start, local=self._local.get(stream_id))

    async def expire(self, stream_id: str, ttl: float) -> None:
        self._release(stream_id)
        await self._call(self._expire, self.keys(stream_id), (max(0, math.ceil(ttl * 1000)),))
        self._open_bytes -= self._open.pop(stream_id, 0)
        if self._on_drop is not None:
            previous = self._drops.pop(stream_id, None)
            if previous is not None:
                previous.cancel()
            self._drops[stream_id] = asyncio.get_running_loop().call_later(ttl, self._dropped, stream_id)

    async def trim(self, stream_id: str) -> None:
        self._release(stream_id)  # a stream is trimmed once it has ended: this process appends no more (even if Redis fails the trim)
        await self._call(self._trim, self.keys(stream_id)[:1], ())

    async def aclose(self) -> None:
        """Stop waiting (waiters return); the pool stays open, it is the caller's."""
        for handle in self._drops.values():
            handle.cancel()
        self._drops.clear()
        await self._tailer.aclose()
        await self._writer.aclose()
        await self.redis.aclose()

    def _release(self, stream_id: str) -> None:
        if self._local.pop(stream_id, None) is not None:
            self._tailer.release(self.keys(stream_id)[0])

    def _count(self, stream_id: str, nbytes: int, *, new: bool = False) -> None:
        if new or stream_id in self._open:
            self._open[stream_id] = self._open.get(stream_id, 0) + nbytes
            self._open_bytes += nbytes

    def _dropped(self, stream_id: str) -> None:
        del self._drops[stream_id]
        if self._on_drop is not None:
            self._on_drop(stream_id)

    async def _call(self, script: AsyncScript, keys: Sequence[bytes], args: Sequence[bytes | str | int]) -> Any:
        """A call that may be repeated (not an append: those go to the writer)."""
        try:
            try:
                return await script(keys=keys, args=args)
            except RedisConnectionError:
                # Most likely a pooled connection that Redis closed while it sat idle (a restart): once more, on a new one.
                return await script(keys=keys, args=args)
        except RedisError as exc:
            raise LogUnavailable(f"the event log's Redis failed: {exc}") from exc


