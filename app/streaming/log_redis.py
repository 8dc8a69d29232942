"""The Redis event log: resumable streams that every process on one Redis can read and resume.

Keys. Everything of stream ``ID`` lives under one prefix (``relay:stream:`` by default) and
one hash tag, so that on Redis Cluster it stays on one slot:

- ``relay:stream:{ID}``: a Redis stream, the events, with fields ``e`` (the SSE event name)
  and ``d`` (its data);
- ``relay:stream:{ID}:meta``: a hash whose field ``end`` is empty while the stream is open,
  then the id of its terminal event; it exists from ``create`` on, the stream key from the
  first append on;
- ``relay:stream:{ID}:owner``: the owner's token, for a stream created with one.

Ids. Each stream counts its events ``1, 2, 3…``, as the memory log does, so that an id means
the same on every process: event ``N`` is the entry ``0-N``. Every append is a Lua script
that adds with ``XADD key 0-* …``, where Redis picks the next number, atomically: ids are
gap-free in the order every reader sees them, on every process, and ``XRANGE key (0-N +``
replays exactly the events after ``N``, once each.

Appends. ``append_many`` writes a coalesced flush, any number of events, in one script call:
one round trip. Nothing trims a stream (trimming would lose events a reader may still ask
for); as with the memory log, the bytes are counted by the caller, which hands over every
one, and the caller enforces the per-stream cap.

The fence. A stream takes one terminal event, through ``append_terminal``, a script that
appends only while the stream has no terminal event, and, when the caller passes ``owner``,
only if the owner key holds that token (``NO_OWNER``: only if no owner holds the stream, for a
process that declares its owner lost once the lease has expired). Once the terminal event is
in, every append from anyone (``append``, ``append_many``, ``append_terminal``) is refused
with ``AppendRefused`` (``reason`` ``"ended"``), as is an append to a stream that is unknown
or expired (``"unknown"``) or a fenced one from a caller that is not the owner
(``"not_owner"``). A refused append appends nothing.

Expiry. ``create`` gives every key of the stream a time to live of ``lifetime`` seconds, so
that a stream whose owner died, and that nobody ended, goes away with all its keys;
``expire`` sets the time to live of all of them (a stream's key takes that of the meta key
when the first append makes it). No key of the log ever lives without one.

Waiting. ``wait`` goes to the process's ``Tailer`` (``app/streaming/log_redis_tailer.py``):
one ``XREAD BLOCK`` for every stream its readers wait on, and ``read_after`` takes the
events it has just brought, when it has them, without a round trip.

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

import math
from collections.abc import Sequence
from typing import Any

import anyio.abc
from redis.asyncio import Redis
from redis.asyncio.connection import ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from app.streaming.eventlog import AppendRefused, Entry, LogUnavailable
from app.streaming.log_memory import _position
from app.streaming.log_redis_tailer import Tailer, decode_entries

NO_OWNER = ""  # ``append_terminal(owner=NO_OWNER)``: only if nobody owns the stream

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
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('HSET', KEYS[2], 'end', '')
redis.call('PEXPIRE', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[1]) end
"""
_READ = """
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
if ARGV[2] == '0' then return {} end -- XRANGE answers COUNT 0 with nil
return redis.call('XRANGE', KEYS[1], '(0-' .. ARGV[1], '+', 'COUNT', ARGV[2])
"""
_EXPIRE = "for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[1]) end"
_REFUSED = {-1: "unknown", -2: "ended", -3: "not_owner"}


class RedisEventLog:
    def __init__(
        self, pool: ConnectionPool, task_group: anyio.abc.TaskGroup, *,
        prefix: str = "relay:stream:", lifetime: float = 3600.0, block: float = 1.0, batch: int = 100,
    ) -> None:
        """``lifetime``: how long a stream's keys live unless ``expire`` says otherwise; ``block``: the
        tailer's ``XREAD BLOCK`` (and how late it may notice a stream gone); ``batch``: its ``COUNT``."""
        if block <= 0:
            raise ValueError("the tailer's block is a positive number of seconds (XREAD BLOCK 0 waits for ever)")
        if pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the event log reads bytes: its Redis pool must not decode responses")
        socket_timeout = pool.connection_kwargs.get("socket_timeout")
        if socket_timeout is not None and socket_timeout <= block:
            raise ValueError(f"the Redis pool's socket_timeout ({socket_timeout} s) must be longer than the tailer's block ({block} s)")
        self._redis = Redis(connection_pool=pool)
        self._prefix = prefix.encode()
        self._lifetime_ms = math.ceil(lifetime * 1000)
        self._tailer = Tailer(pool, self._redis, task_group, block=block, batch=batch)
        self._append = self._redis.register_script(_APPEND)
        self._append_terminal = self._redis.register_script(_APPEND_TERMINAL)
        self._create = self._redis.register_script(_CREATE)
        self._read = self._redis.register_script(_READ)
        self._expire = self._redis.register_script(_EXPIRE)

    def keys(self, stream_id: str) -> tuple[bytes, bytes, bytes]:
        """The Redis keys of a stream: the stream, its meta hash, its owner."""
        stream = b"%s{%s}" % (self._prefix, stream_id.encode())
        return stream, stream + b":meta", stream + b":owner"

    async def create(self, stream_id: str, owner: str | None = None) -> None:
        """Start an empty stream (anew, if the id was in use), owned by the token ``owner`` if one is given."""
        if owner == NO_OWNER:
            raise ValueError("an owner token is not empty")
        await self._call(self._create, self.keys(stream_id), (self._lifetime_ms, owner or ""), idempotent=True)

    async def append(self, stream_id: str, event: str, data: bytes) -> str:
        """Add one event; returns its id. Raises ``AppendRefused``, ``LogUnavailable``."""
        reply = await self._call(self._append, self.keys(stream_id)[:2], (event, data))
        return _appended(stream_id, reply)[2:].decode()

    async def append_many(self, stream_id: str, events: Sequence[tuple[str, bytes]]) -> list[str]:
        """Add ``(event, data)`` pairs in one round trip; returns their ids. Raises ``AppendRefused``, ``LogUnavailable``."""
        if not events:
            return []
        args = [part for event in events for part in event]
        last = int(_appended(stream_id, await self._call(self._append, self.keys(stream_id)[:2], args))[2:])
        return [str(n) for n in range(last - len(events) + 1, last + 1)]

    async def append_terminal(self, stream_id: str, event: str, data: bytes, *, owner: str | None = None) -> str:
        """Add the stream's terminal event, fenced (see the module's docstring); returns its id.

        Raises ``AppendRefused``, ``LogUnavailable``.
        """
        args = ("0" if owner is None else "1", owner or "", event, data)
        return _appended(stream_id, await self._call(self._append_terminal, self.keys(stream_id), args))[2:].decode()

    async def read_after(self, stream_id: str, after: str | None, limit: int) -> list[Entry] | None:
        """As the interface says; the events the tailer has just brought may be all it returns, even when more have
        come since: a reader reads again after the last one, as readers do."""
        start = _position(after)
        keys = self.keys(stream_id)
        if recent := self._tailer.recent(keys[0], start, limit):
            return recent
        raw = await self._call(self._read, keys[:2], (start, limit), idempotent=True)
        return None if raw is None else decode_entries(raw)

    async def wait(self, stream_id: str, after: str | None) -> None:
        start = _position(after)
        stream, meta, _ = self.keys(stream_id)
        await self._tailer.wait(stream, meta, start)

    async def expire(self, stream_id: str, ttl: float) -> None:
        await self._call(self._expire, self.keys(stream_id), (max(0, math.ceil(ttl * 1000)),), idempotent=True)

    async def aclose(self) -> None:
        """Stop waiting (waiters return); the pool stays open, it is the caller's."""
        await self._tailer.aclose()
        await self._redis.aclose()

    async def _call(self, script: AsyncScript, keys: Sequence[bytes], args: Sequence[bytes | str | int], *, idempotent: bool = False) -> Any:
        try:
            try:
                return await script(keys=keys, args=args)
            except RedisConnectionError:
                if not idempotent:
                    raise
                # Most likely a pooled connection that Redis closed while it sat idle (a restart): once more, on a new one.
                return await script(keys=keys, args=args)
        except RedisError as exc:
            raise LogUnavailable(f"the event log's Redis failed: {exc}") from exc


def _appended(stream_id: str, reply: bytes | int) -> bytes:
    if isinstance(reply, int):
        raise AppendRefused(stream_id, _REFUSED[reply])
    return reply
