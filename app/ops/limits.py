"""Per-key limits: concurrent streams, requests and tokens per minute; in this process, or with Redis in all of them.

A request is admitted (``KeyLimits.admit``) before anything goes upstream, or refused with a 429
whose ``code`` names the limit and whose ``Retry-After`` says when it would fit. Its admission
holds a stream slot and a reservation of tokens until ``Admission.end``, which debits the tokens
the request really used (the model server's usage, or the relay's count of what it relayed).

- ``max_concurrent_streams``: requests generating at once (a resumable stream's readers are not requests).
- ``requests_per_minute`` and ``tokens_per_minute``: over a sliding minute, counted in two fixed
  windows, the last one weighted by how much of it is still inside the minute (as Cloudflare
  and most gateways count): smooth at the window's edge, two counters a key.
- Tokens are debited when a request ends. Until then, its prompt is estimated (UTF-8 bytes / 4)
  and its token limit (``max_tokens``, or another name it gave) reserved: a burst cannot
  overshoot the budget by more than what requests without a token limit generate while in flight.

With ``RELAY_REDIS_URL`` the counters live in Redis, checked and changed by one script a request:
every process and host shares them. A process's stream slots and reservations are leases it
renews (every ``LEASE / 3``): when it dies, they go with their lease, and its keys' budgets free.
Redis unreachable: the limits are not enforced (a log line says so) rather than refusing every
request of a limited key: the relay's limits protect model servers from a key, not the relay from Redis.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc
import msgspec
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError

from app.errors import RequestError
from app.ops.keys import Key
from app.streaming.request import GenerationRequest

if TYPE_CHECKING:
    from app.ops.record import RequestRecord

logger = logging.getLogger("token_relay")

WINDOW = 60.0
# The codes of a refusal for a key over one of its limits: each names its limit.
LIMIT_CODES = frozenset({"max_concurrent_streams", "requests_per_minute", "tokens_per_minute"})
LEASE = 30.0  # seconds a process's hold on a slot lasts unrenewed, in Redis


class Admission:
    """A request's hold on its key's limits (``estimate`` tokens reserved, ``prompt`` of them its prompt's), released once by ``end``."""

    __slots__ = ("_limits", "estimate", "id", "key", "prompt")

    def __init__(self, limits: Limiter | None, key: Key | None, estimate: int, prompt: int = 0) -> None:
        self._limits = limits
        self.key = key
        self.estimate = estimate
        self.prompt = prompt
        self.id = uuid.uuid4().hex

    def end(self, prompt_tokens: int | None, completion_tokens: int) -> None:
        """The request ended: free its slot, and debit what it used in place of its reservation (an unknown prompt: its estimate)."""
        limits, self._limits = self._limits, None
        if limits is not None and self.key is not None:
            limits.release(self, (self.prompt if prompt_tokens is None else prompt_tokens) + completion_tokens)


    def refund(self) -> None:
        """The request never reached a model server: free its slot, debit nothing."""
        limits, self._limits = self._limits, None
        if limits is not None and self.key is not None:
            limits.release(self, 0)


NO_LIMITS = Admission(None, None, 0)


class Debits:
    """The observer (app/ops/record.py) that ends each request's admission with the usage its record reports."""

    def request_ended(self, record: RequestRecord) -> None:
        admission = record.admission
        if not record.generated:  # refused, or the client left before its generation began: nothing reached a model server
            admission.refund()
        else:
            admission.end(record.prompt_tokens, record.completion_tokens or 0)


def estimate(request: GenerationRequest) -> tuple[int, int]:
    """The tokens to reserve for ``request``, and of them its prompt's: UTF-8 bytes / 4, and its token limit if it gave one."""
    prompt = len(msgspec.json.encode(request.messages)) // 4
    return prompt + (request.token_limit() or 0), prompt


class Limiter(Protocol):
    async def admit(self, key: Key, estimate: int, prompt: int) -> Admission: ...
    def release(self, admission: Admission, tokens: int) -> None: ...


def refusal(code: str, message: str, wait: float) -> RequestError:
    return RequestError(429, code, message, headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _weighted(previous: float, current: float, now: float) -> float:
    """The count over the sliding minute ending now: all of this window's, the part of the last one still inside it."""
    return previous * (1 - (now % WINDOW) / WINDOW) + current


def _wait(previous: float, current: float, now: float, room: float) -> float:
    """Seconds until the sliding count has ``room`` left under the limit, with no more traffic; at most two windows."""
    into = now % WINDOW
    excess = _weighted(previous, current, now) - room
    if excess <= 0:
        return 0.0
    if previous > 0 and excess <= previous * (1 - into / WINDOW):  # the last window's share fades enough in this one
        return WINDOW * excess / previous
    if current <= room:
        return WINDOW - into
    return min(WINDOW - into + WINDOW * (1 - room / current), 2 * WINDOW) if current > 0 else WINDOW - into


class _Counts:
    __slots__ = ("in_flight", "requests", "reserved", "tokens", "window")

    def __init__(self) -> None:
        self.window = 0
        self.requests = [0, 0]  # the last window's, this one's
        self.tokens = [0, 0]
        self.in_flight = 0
        self.reserved = 0

    def roll(self, window: int) -> None:
        if window == self.window:
            return
        if window == self.window + 1:
            self.requests, self.tokens = [self.requests[1], 0], [self.tokens[1], 0]
        else:
            self.requests, self.tokens = [0, 0], [0, 0]
        self.window = window


def check(key: Key, requests: tuple[float, float], tokens: tuple[float, float], in_flight: int, reserved: int, estimate: int,
          now: float) -> RequestError | None:
    """The refusal of a request of ``key`` with these counts, or ``None``: the rule both stores apply."""
    if key.max_concurrent_streams is not None and in_flight >= key.max_concurrent_streams:
        return refusal("max_concurrent_streams", f"the key {key.name!r} is at its limit of {key.max_concurrent_streams} concurrent streams", 1)
    if key.requests_per_minute is not None and _weighted(*requests, now) + 1 > key.requests_per_minute:
        return refusal("requests_per_minute", f"the key {key.name!r} is at its limit of {key.requests_per_minute} requests per minute",
                       _wait(*requests, now, key.requests_per_minute - 1))
    if key.tokens_per_minute is not None:
        if estimate > key.tokens_per_minute:
            return refusal("tokens_per_minute", f"the request (about {estimate} tokens with its max_tokens) is more than the key {key.name!r}"
                           f" may use in a minute ({key.tokens_per_minute}): ask for fewer max_tokens", WINDOW)
        if _weighted(*tokens, now) + reserved + estimate > key.tokens_per_minute:
            return refusal("tokens_per_minute", f"the key {key.name!r} is at its limit of {key.tokens_per_minute} tokens per minute",
                           _wait(*tokens, now, key.tokens_per_minute - estimate - reserved))
    return None


class MemoryLimits:
    """The counters of one process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[str, _Counts] = {}

    async def admit(self, key: Key, estimate: int, prompt: int) -> Admission:
        now = self._clock()
        counts = self._counts.setdefault(key.name, _Counts())
        counts.roll(int(now // WINDOW))
        requests, tokens = counts.requests, counts.tokens
        refused = check(key, (requests[0], requests[1]), (tokens[0], tokens[1]), counts.in_flight, counts.reserved, estimate, now)
        if refused is not None:
            raise refused
        requests[1] += 1
        counts.in_flight += 1
        counts.reserved += estimate
        return Admission(self, key, estimate, prompt)

    def release(self, admission: Admission, tokens: int) -> None:
        assert admission.key is not None
        counts = self._counts[admission.key.name]
        counts.roll(int(self._clock() // WINDOW))
        counts.in_flight -= 1
        counts.reserved -= admission.estimate
        counts.tokens[1] += tokens


# KEYS: requests of the last window and this one, tokens likewise, the slots (a sorted set of admission ids by
# lease end) and the reservations (admission id: tokens). ARGV: now (ms), lease end (ms), the id, its estimate.
# Takes the request's slot, reservation and count, and answers the counts as they were before, to be checked.
_ADMIT = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1])
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[1])
  redis.call('HDEL', KEYS[6], unpack(expired))
end
local reserved = 0
for _, tokens in ipairs(redis.call('HVALS', KEYS[6])) do reserved = reserved + tonumber(tokens) end
local in_flight = redis.call('ZCARD', KEYS[5])
local answer = {tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0'),
                tonumber(redis.call('GET', KEYS[3]) or '0'), tonumber(redis.call('GET', KEYS[4]) or '0'), in_flight, reserved}
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 130000)
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[6], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[5], 2 * (ARGV[2] - ARGV[1]))
redis.call('PEXPIRE', KEYS[6], 2 * (ARGV[2] - ARGV[1]))
return answer
"""
# KEYS: this window's requests, this window's tokens, the slots, the reservations. ARGV: the id, whether it was
# refused (its request is not counted), the tokens it used.
_RELEASE = """
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if ARGV[2] == '1' then
  redis.call('DECR', KEYS[1])
end
if tonumber(ARGV[3]) > 0 then
  redis.call('INCRBY', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], 130000)
end
return 1
"""


class RedisLimits:
    """The counters in Redis, shared by every process and host; a process renews the leases of its own admissions."""

    def __init__(
        self, pool: ConnectionPool, task_group: anyio.abc.TaskGroup, clock: Callable[[], float] = time.time, lease: float = LEASE,
    ) -> None:
        self._lease = lease
        self._redis = Redis(connection_pool=pool)
        self._admit = self._redis.register_script(_ADMIT)
        self._release = self._redis.register_script(_RELEASE)
        self._clock = clock
        self._tg = task_group
        self._renewing = anyio.CancelScope()
        self._held: dict[str, Admission] = {}
        task_group.start_soon(self._renew, name="key limit leases")

    @staticmethod
    def _keys(name: str, window: int) -> tuple[str, str, str, str, str, str]:
        base = "relay:limits:{" + name + "}:"
        return (base + f"r:{window - 1}", base + f"r:{window}", base + f"t:{window - 1}", base + f"t:{window}", base + "slots",
                base + "reserved")

    async def admit(self, key: Key, estimate: int, prompt: int) -> Admission:
        now = self._clock()
        keys = self._keys(key.name, int(now // WINDOW))
        admission = Admission(self, key, estimate, prompt)
        try:
            counts = await self._admit(keys, [int(now * 1000), int((now + self._lease) * 1000), admission.id, estimate])
        except (RedisError, OSError) as exc:
            logger.warning("key %s: its limits are not enforced for this request: Redis cannot be reached (%s)", key.name, exc)
            return NO_LIMITS
        r_prev, r_cur, t_prev, t_cur, in_flight, reserved = (int(count) for count in counts)
        refused = check(key, (r_prev, r_cur), (t_prev, t_cur), in_flight, reserved, estimate, now)
        if refused is not None:  # taken back before the answer: the client's retry finds its count as it was
            await self._released(key.name, admission.id, True, 0, int(now // WINDOW))
            raise refused
        self._held[admission.id] = admission
        return admission

    def stop_renewing(self) -> None:
        """As a process that died would: its admissions' leases run out."""
        self._held.clear()

    def release(self, admission: Admission, tokens: int) -> None:
        assert admission.key is not None
        self._held.pop(admission.id, None)
        self._tg.start_soon(self._released, admission.key.name, admission.id, False, tokens, int(self._clock() // WINDOW))

    async def _released(self, name: str, admission_id: str, refused: bool, tokens: int, window: int) -> None:
        keys = self._keys(name, window)
        try:
            await self._release((keys[1], keys[3], keys[4], keys[5]), [admission_id, int(refused), tokens])
        except (RedisError, OSError) as exc:  # its lease ends it instead, and its tokens go uncounted
            logger.warning("key %s: could not release a request's hold on its limits in Redis (%s)", name, exc)

    def close(self) -> None:
        """Stop renewing (the lifespan's end): the leases of what this process still holds run out by themselves."""
        self._renewing.cancel()

    async def _renew(self) -> None:
        with self._renewing:
            await self._renew_forever()

    async def _renew_forever(self) -> None:
        while True:
            await anyio.sleep(self._lease / 3)
            if not self._held:
                continue
            until = int((self._clock() + self._lease) * 1000)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for admission in list(self._held.values()):
                        assert admission.key is not None
                        slots, reserved = self._keys(admission.key.name, 0)[4:]
                        pipe.zadd(slots, {admission.id: until}, xx=True)
                        pipe.pexpire(slots, int(2 * self._lease * 1000))
                        pipe.pexpire(reserved, int(2 * self._lease * 1000))
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                logger.warning("could not renew the key limits' leases in Redis (%s)", exc)
