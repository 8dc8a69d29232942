"""The processes on one Redis, for the streams they share: leases, cancellation, readers elsewhere, owners lost.

Each process has a token, random per start. A stream it generates is created with the token
in its owner key (``app/streaming/log_redis.py``), which lives ``lease`` seconds unless renewed.

One task per process, the ticker, makes one round trip (one script) every ``lease / 3``
seconds, sooner when asked, for all the streams of the process:

- for each stream it owns: the lease is renewed while its key still holds the token (and the
  stream's keys get their lifetime again, so that a long generation outlives no key), and the
  answer says whether someone asked to cancel it and for how much longer readers elsewhere
  keep it alive (``Owned``). A lease found lost (the process stalled past it, or Redis lost
  the key) ends the generation with ``owner_lost``: from then on another process may fence it;
- for each stream read here but owned elsewhere: the readers key (``…:readers``) is set to
  live ``grace`` seconds more, so that the owner's grace runs out only ``grace`` seconds after
  the last reader anywhere left; and the answer says whether the stream's owner is lost (open,
  and no owner key), in which case this process appends the terminal ``owner_lost`` error with
  ``NO_OWNER``: the fence lets exactly one process do so, and refuses the late owner after it.

So a reader anywhere learns that its stream's owner died within ``lease`` (the key's time
to live) plus ``lease / 3`` (the reader's process's next tick) seconds, plus a round trip.

Cancellation: ``cancel`` on any process marks the stream's meta hash and publishes its id on
the owner's channel (``relay:cancel:{token}``), to which the owner's subscriber listens: the
generation ends as soon as the message comes. A message lost (the subscriber was reconnecting)
is made up for by the mark, which the owner's next tick sees. A stream that nobody owns any
more is cancelled by the caller itself, fenced as for ``owner_lost``.

On Redis Cluster the one script per tick would need every key on one node, as the tailer does.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.abc
import msgspec
from redis.exceptions import RedisError

from app.streaming.encoders import error_body
from app.streaming.eventlog import NO_OWNER, AppendRefused, LogUnavailable
from app.streaming.events import Error
from app.streaming.log_redis import RedisEventLog

logger = logging.getLogger("token_relay")

CHANNEL = "relay:cancel:"
BATCH = 250  # streams per script call: one call must not hold Redis for long
RECONNECT = 0.5  # seconds before the subscriber connects again

OWNER_LOST = msgspec.json.encode(error_body(Error(
    "relay_error", "owner_lost", "the relay process generating this stream stopped; the events before this one are all there are", "stream",
)))
CANCELLED = msgspec.json.encode(error_body(Error("cancelled", "cancelled", "the stream was cancelled", "stream")))

# KEYS: per owned stream owner, meta, stream, readers; then per stream read here meta, owner, readers.
# ARGV: token, lease ms, lifetime ms, grace ms, the number of owned streams.
# Answers, per owned stream: 0 lease lost, 1 held, 2 held and cancel asked; then the readers key's PTTL.
# Per stream read: 0 gone, 1 owned or ended, 2 open with no owner.
_TICK = """
local out = {}
local owned = tonumber(ARGV[5])
for i = 1, 4 * owned, 4 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    if redis.call('HGET', KEYS[i + 1], 'end') == '' then -- once ended, its keys have their retention
      redis.call('PEXPIRE', KEYS[i + 1], ARGV[3])
      redis.call('PEXPIRE', KEYS[i + 2], ARGV[3])
    end
    out[#out + 1] = redis.call('HGET', KEYS[i + 1], 'cancel') and 2 or 1
  else
    out[#out + 1] = 0
  end
  out[#out + 1] = redis.call('PTTL', KEYS[i + 3])
end
for i = 4 * owned + 1, #KEYS, 3 do
  local ended = redis.call('HGET', KEYS[i], 'end')
  if not ended then
    out[#out + 1] = 0
  else
    redis.call('SET', KEYS[i + 2], '1', 'PX', ARGV[4])
    out[#out + 1] = (ended == '' and redis.call('EXISTS', KEYS[i + 1]) == 0) and 2 or 1
  end
end
return out
"""
# KEYS: meta, owner. ARGV: the channel prefix, the stream id. -1 unknown, 0 ended, 1 published to its owner, 2 nobody owns it.
_CANCEL = """
local ended = redis.call('HGET', KEYS[1], 'end')
if not ended then return -1 end
if ended ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1')
local owner = redis.call('GET', KEYS[2])
if not owner then return 2 end
redis.call('PUBLISH', ARGV[1] .. owner, ARGV[2])
return 1
"""


class Owned(Protocol):
    """A stream this process generates, as the ticker sees it (``ResumableStream``)."""

    id: str

    def cancel(self) -> None: ...

    def lease_lost(self) -> None: ...

    def read_elsewhere(self, seconds: float) -> None:
        """Readers on other processes keep the stream alive this much longer (0: nobody reads it elsewhere)."""


class RedisPeers:
    def __init__(self, log: RedisEventLog, task_group: anyio.abc.TaskGroup, *, lease: float, grace: float, retention: float) -> None:
        self.token = secrets.token_urlsafe(12)
        self.retention = retention
        self._log = log
        self._redis = log.redis
        self._lease_ms = math.ceil(lease * 1000)
        self._lifetime_ms = math.ceil(log.lifetime * 1000)
        self._grace_ms = math.ceil(grace * 1000)
        self._period = lease / 3
        self._tick = self._redis.register_script(_TICK)
        self._cancel = self._redis.register_script(_CANCEL)
        self._owned: dict[str, Owned] = {}
        self._reading: dict[str, int] = {}  # readers here of streams owned elsewhere; 0: the last left, to mark once more
        self._wake = anyio.Event()
        self._failing = False
        self._scope = anyio.CancelScope()
        task_group.start_soon(self._run, name="stream peers")

    @property
    def channel(self) -> str:
        return CHANNEL + self.token

    def own(self, stream: Owned) -> None:
        self._owned[stream.id] = stream

    def disown(self, stream_id: str) -> None:
        self._owned.pop(stream_id, None)

    def wake(self) -> None:
        """Tick now (a grace period ran out here: do readers elsewhere keep the stream alive?)."""
        self._wake.set()

    async def join(self, stream_id: str) -> None:
        """A reader here of a stream owned elsewhere: its owner knows at once. Raises ``LogUnavailable``."""
        count = self._reading.get(stream_id, 0)
        self._reading[stream_id] = count + 1
        if count == 0:
            try:
                await self._round(({}, {stream_id: 0}))
            except BaseException:
                self.leave(stream_id)
                raise

    def leave(self, stream_id: str) -> None:
        self._reading[stream_id] -= 1  # at 0, the next tick marks it once more, then forgets it

    async def cancel(self, stream_id: str) -> None:
        """Cancel a stream owned elsewhere: its owner ends it; if nobody owns it any more, it ends here."""
        _, meta, owner = self._log.keys(stream_id)
        try:
            outcome = await self._cancel(keys=(meta, owner), args=(CHANNEL, stream_id))
        except RedisError as exc:
            raise LogUnavailable(f"the event log's Redis failed: {exc}") from exc
        if outcome == 2:
            await self.end_unowned(stream_id, CANCELLED)

    async def end_unowned(self, stream_id: str, data: bytes = OWNER_LOST) -> None:
        """Append the terminal ``error`` of a stream nobody owns (``owner_lost`` unless told otherwise), fenced."""
        try:
            await self._log.append_terminal(stream_id, "error", data, owner=NO_OWNER)
        except AppendRefused:
            return  # another process did, or the stream ended meanwhile, or an owner holds it after all
        logger.warning("stream %s: its owner is lost; its readers got %s", stream_id, "owner_lost" if data is OWNER_LOST else "cancelled")
        await self._log.expire(stream_id, self.retention)

    async def ping(self) -> bool:
        try:
            with anyio.fail_after(1):
                return bool(await self._redis.ping())
        except (RedisError, OSError):  # OSError: TimeoutError too
            return False

    async def aclose(self) -> None:
        self._scope.cancel()

    async def _run(self) -> None:
        with self._scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._listen)
                while True:
                    with anyio.move_on_after(self._period):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    await self._tick_all()

    async def _tick_all(self) -> None:
        owned = dict(self._owned)
        reading = dict(self._reading)
        for stream_id, count in reading.items():
            if count == 0:
                del self._reading[stream_id]
        try:
            await self._round((owned, reading))
        except LogUnavailable as exc:
            if not self._failing:
                logger.warning("stream leases and readers: %s", exc)
            self._failing = True
            return
        if self._failing:
            logger.warning("stream leases and readers: Redis is back")
        self._failing = False

    async def _round(self, streams: tuple[dict[str, Owned], dict[str, int]]) -> None:
        """One script call per ``BATCH`` streams; what it answers goes to each stream."""
        owned, reading = list(streams[0].values()), list(streams[1])
        while owned or reading:
            mine, owned = owned[:BATCH], owned[BATCH:]
            read, reading = reading[: BATCH - len(mine)], reading[BATCH - len(mine) :]
            keys: list[bytes] = []
            for stream in mine:
                stream_key, meta, owner = self._log.keys(stream.id)
                keys += (owner, meta, stream_key, self._log.readers_key(stream.id))
            for stream_id in read:
                _, meta, owner = self._log.keys(stream_id)
                keys += (meta, owner, self._log.readers_key(stream_id))
            args = (self.token, self._lease_ms, self._lifetime_ms, self._grace_ms, len(mine))
            try:
                answer: list[Any] = await self._tick(keys=keys, args=args)
            except RedisError as exc:
                raise LogUnavailable(f"the event log's Redis failed: {exc}") from exc
            for n, stream in enumerate(mine):
                status, readers_ttl = answer[2 * n], answer[2 * n + 1]
                if status == 0:
                    stream.lease_lost()
                    continue
                if status == 2:
                    stream.cancel()
                stream.read_elsewhere(max(readers_ttl, 0) / 1000)
            for stream_id, status in zip(read, answer[2 * len(mine) :], strict=True):
                if status == 2:
                    await self.end_unowned(stream_id)

    async def _listen(self) -> None:
        """The owner's end of ``cancel``: a message names a stream to end now."""
        cancel: Callable[[str], None] = self._cancel_here
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                        if message is not None and message["type"] == "message":
                            cancel(message["data"].decode())
            except (RedisError, OSError) as exc:
                logger.debug("stream cancellation lost Redis (%s); connecting again", exc)
                await anyio.sleep(RECONNECT)

    def _cancel_here(self, stream_id: str) -> None:
        stream = self._owned.get(stream_id)
        if stream is not None:
            stream.cancel()
