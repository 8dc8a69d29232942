"""Key limits: the sliding minute, stream slots, token reservations and debits; in memory, and in a real Redis shared by two processes' limiters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from redis.asyncio import ConnectionPool

from app.errors import RequestError
from app.ops.keys import Key
from app.ops.limits import WINDOW, Limiter, MemoryLimits, RedisLimits
from tests.conftest import keys_expire


class Clock:
    def __init__(self, now: float = 1_000 * WINDOW) -> None:  # at the start of a window
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(**limits: Any) -> Key:
    return Key("team-a", b"\0" * 32, **limits)


@pytest.fixture(params=["memory", "redis"])
async def limiters(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[Clock], Limiter]]:
    """Makes limiters on one store: the memory of one process, or one Redis (each limiter then a process of its own)."""
    if request.param == "memory":
        shared: dict[int, MemoryLimits] = {}
        yield lambda clock: shared.setdefault(0, MemoryLimits(clock))
        return
    redis_url: str = request.getfixturevalue("redis_url")
    pool = ConnectionPool.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
    try:
        with keys_expire(redis_url):
            async with anyio.create_task_group() as tg:
                yield lambda clock: RedisLimits(pool, tg, clock, lease=0.6)
                await anyio.sleep(0.05)  # the last releases
                tg.cancel_scope.cancel()
    finally:
        await pool.aclose()


async def refused(limiter: Limiter, k: Key, estimate: int = 0) -> RequestError:
    with pytest.raises(RequestError) as caught:
        await limiter.admit(k, estimate, 0)
    return caught.value


async def test_requests_per_minute_slide_over_two_windows(limiters: Callable[[Clock], Limiter]) -> None:
    clock = Clock()
    limiter = limiters(clock)
    k = key(requests_per_minute=4)
    for _ in range(4):
        (await limiter.admit(k, 0, 0)).end(None, 0)
    error = await refused(limiter, k)
    assert (error.status, error.code) == (429, "requests_per_minute")
    # This window's count fades only in the next one, as if spread over its minute: 4 x (1 - f) <= 3 at f = 1/4.
    assert int(error.headers["Retry-After"]) == 75
    clock.now += WINDOW * 1.5  # half of the last window still counts: 2 of 4
    for _ in range(2):
        (await limiter.admit(k, 0, 0)).end(None, 0)
    error = await refused(limiter, k)
    assert 1 <= int(error.headers["Retry-After"]) <= 30


async def test_a_refused_request_is_not_counted(limiters: Callable[[Clock], Limiter]) -> None:
    clock = Clock()
    limiter = limiters(clock)
    k = key(requests_per_minute=2, max_concurrent_streams=1)
    held = await limiter.admit(k, 0, 0)
    assert (await refused(limiter, k)).code == "max_concurrent_streams"
    held.end(None, 0)
    await anyio.sleep(0.05)  # Redis: the release goes out on a task
    (await limiter.admit(k, 0, 0)).end(None, 0)  # the second of two: the refused one did not count
    await anyio.sleep(0.05)
    assert (await refused(limiter, k)).code == "requests_per_minute"


async def test_tokens_are_reserved_while_a_request_runs_and_debited_as_used(limiters: Callable[[Clock], Limiter]) -> None:
    clock = Clock()
    limiter = limiters(clock)
    k = key(tokens_per_minute=1_000)
    first = await limiter.admit(k, 600, 100)  # 100 of prompt, 500 of max_tokens
    assert (await refused(limiter, k, 600)).code == "tokens_per_minute"  # 600 reserved + 600 > 1,000
    first.end(90, 10)  # used 100
    await anyio.sleep(0.05)
    second = await limiter.admit(k, 600, 100)  # 100 used + 600
    second.end(None, 200)  # an unknown prompt: its estimate, 100; and 200 generated
    await anyio.sleep(0.05)
    assert (await refused(limiter, k, 700)).code == "tokens_per_minute"  # 400 used + 700
    (await limiter.admit(k, 600, 0)).refund()


async def test_a_request_larger_than_the_budget_is_told_so(limiters: Callable[[Clock], Limiter]) -> None:
    error = await refused(limiters(Clock()), key(tokens_per_minute=100), 5_000)
    assert error.code == "tokens_per_minute"
    assert "ask for fewer max_tokens" in error.message


async def test_two_processes_share_the_counters_and_a_dead_one_s_slots_free(redis_pool: ConnectionPool) -> None:
    clock = Clock()
    k = key(max_concurrent_streams=2, requests_per_minute=100)
    async with anyio.create_task_group() as tg:
        a, b = RedisLimits(redis_pool, tg, clock, lease=0.6), RedisLimits(redis_pool, tg, clock, lease=0.6)
        await a.admit(k, 0, 0)
        await b.admit(k, 0, 0)
        assert (await refused(b, k)).code == "max_concurrent_streams"
        a.stop_renewing()  # as if a's process died with its stream
        with anyio.fail_after(5):
            while True:
                await anyio.sleep(0.2)
                clock.now += 0.2  # the leases run on this clock; b's renewals keep its own
                try:
                    (await b.admit(k, 0, 0)).end(None, 0)
                    break
                except RequestError:
                    pass
        tg.cancel_scope.cancel()
