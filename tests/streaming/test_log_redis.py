"""The Redis event log: several processes on one Redis, the fence, one round trip per batch, waits that hold
no connection, every key expiring, and Redis lost and back. What it shares with the memory log is in test_eventlog.py."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from app.streaming.eventlog import AppendRefused, Entry, LogUnavailable
from app.streaming.log_redis import NO_OWNER, RedisEventLog
from tests.redis_server import RedisServer


@contextlib.asynccontextmanager
async def another_process(url: str, *, lifetime: float = 3600.0, **pool_options: Any) -> AsyncIterator[RedisEventLog]:
    """A second log on the same Redis, with a pool and a tailer of its own, as another process would have."""
    pool = ConnectionPool.from_url(url, socket_timeout=5, socket_connect_timeout=2, **pool_options)
    try:
        async with anyio.create_task_group() as tg:
            log = RedisEventLog(pool, tg, lifetime=lifetime)
            try:
                yield log
            finally:
                await log.aclose()
    finally:
        await pool.aclose()


def counting(sent: list[bytes]) -> type[Connection]:
    """A connection class that notes every write to Redis: one per round trip (a pipeline writes once)."""

    class Counting(Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent.append(b"".join(command) if isinstance(command, list) else command)
            await super().send_packed_command(command, check_health)

    return Counting


@pytest.fixture
async def redis(redis_pool: ConnectionPool) -> AsyncIterator[Redis]:
    async with Redis(connection_pool=redis_pool) as client:
        yield client


async def refused(append: Callable[[], Awaitable[object]]) -> str:
    with pytest.raises(AppendRefused) as refusal:
        await append()
    return refusal.value.reason


async def test_two_processes_append_one_gap_free_sequence_and_a_reader_resumes_on_either_exactly_once(
    redis_log: RedisEventLog, redis_url: str,
) -> None:
    async with another_process(redis_url) as other:
        await redis_log.create("s")
        appended: dict[str, bytes] = {}

        async def batches() -> None:
            for n in range(10):
                events = [("token", b'{"batch":%d,"n":%d}' % (n, k)) for k in range(4)]
                ids = await redis_log.append_many("s", events)
                assert [int(i) for i in ids] == list(range(int(ids[0]), int(ids[0]) + 4))  # a batch is contiguous
                appended.update(zip(ids, (data for _, data in events), strict=True))

        async def singles() -> None:
            for n in range(40):
                appended[await other.append("s", "token", b'{"single":%d}' % n)] = b'{"single":%d}' % n

        async with anyio.create_task_group() as tg:
            tg.start_soon(batches)
            tg.start_soon(singles)
        assert sorted(appended, key=int) == [str(n) for n in range(1, 81)]
        first = await other.read_after("s", None, 30) or []
        rest = await redis_log.read_after("s", first[-1].id, 100) or []
        assert [e.id for e in first + rest] == [str(n) for n in range(1, 81)]
        assert {e.id: e.data for e in first + rest} == appended


async def test_a_batch_of_events_costs_one_round_trip(redis_url: str, redis: Redis) -> None:
    sent: list[bytes] = []
    async with another_process(redis_url, connection_class=counting(sent)) as log:
        await log.create("s")
        await log.append_many("s", [("token", b"warm")])  # loads the script
        sent.clear()
        before = await redis.info("commandstats")
        ids = await log.append_many("s", [("token", b'{"text":"%d"}' % n) for n in range(50)])
        after = await redis.info("commandstats")
        assert len(sent) == 1
        assert after["cmdstat_evalsha"]["calls"] - before["cmdstat_evalsha"]["calls"] == 1
        assert ids == [str(n) for n in range(2, 52)]
        assert len(await log.read_after("s", "1", 100) or []) == 50


async def test_the_appends_of_many_streams_that_come_together_share_one_round_trip(redis_url: str, redis: Redis) -> None:
    sent: list[bytes] = []
    async with another_process(redis_url, connection_class=counting(sent)) as log:
        for n in range(50):
            await log.create(f"s{n}")
        await log.append("s0", "token", b"warm")  # loads the script
        sent.clear()
        before = await redis.info("commandstats")
        ids: dict[str, list[str]] = {}

        async def append(stream: str) -> None:
            ids[stream] = await log.append_many(stream, [("token", b"a"), ("token", b"b")])

        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(append, f"s{n}")
        assert len(sent) <= 2
        assert (await redis.info("commandstats"))["cmdstat_evalsha"]["calls"] - before["cmdstat_evalsha"]["calls"] == 50
        assert ids == {f"s{n}": ["2", "3"] if n == 0 else ["1", "2"] for n in range(50)}
        assert [(e.id, e.data) for e in await log.read_after("s7", None, 10) or []] == [("1", b"a"), ("2", b"b")]


async def test_an_append_does_not_wait_for_the_reply_to_a_batch_in_flight(redis_url: str, redis: Redis) -> None:
    class Slow(Connection):  # a batch that takes its time on the way to Redis, as on a busy host
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if b"slow" in (b"".join(command) if isinstance(command, list) else command):
                await anyio.sleep(1)
            await super().send_packed_command(command, check_health)

    async with another_process(redis_url, connection_class=Slow) as log:
        await log.create("a")
        await log.create("b")
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.append, "a", "token", b"slow")
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(0.5):
                assert await log.append("b", "token", b"{}") == "1"
        assert [e.data for e in await log.read_after("a", None, 10) or []] == [b"slow"]


async def test_appends_load_the_scripts_again_when_redis_lost_them(redis_log: RedisEventLog, redis: Redis) -> None:
    await redis_log.create("s")
    assert await redis_log.append("s", "token", b"{}") == "1"
    await redis.script_flush()
    assert await redis_log.append_many("s", [("token", b"{}")] * 2) == ["2", "3"]
    await redis.script_flush()
    assert await redis_log.append_terminal("s", "done", b"{}") == "4"


async def test_after_the_terminal_event_no_process_can_append(redis_log: RedisEventLog, redis_url: str) -> None:
    async with another_process(redis_url) as other:
        await redis_log.create("s")
        await redis_log.append("s", "token", b"{}")
        assert await redis_log.append_terminal("s", "done", b"{}") == "2"
        assert await refused(lambda: other.append("s", "token", b"late")) == "ended"
        assert await refused(lambda: other.append_many("s", [("token", b"late")])) == "ended"
        assert await refused(lambda: other.append_terminal("s", "error", b"{}")) == "ended"
        assert await refused(lambda: redis_log.append_terminal("s", "error", b"{}")) == "ended"
        assert [(e.id, e.event) for e in await other.read_after("s", None, 10) or []] == [("1", "token"), ("2", "done")]


async def test_the_owner_appends_its_terminal_event(redis_log: RedisEventLog) -> None:
    await redis_log.create("s", owner="owner-a")
    await redis_log.append("s", "token", b"{}")
    assert await redis_log.append_terminal("s", "done", b"{}", owner="owner-a") == "2"


async def test_a_fenced_terminal_event_needs_the_owner_token_and_a_late_owner_is_refused(
    redis_log: RedisEventLog, redis_url: str, redis: Redis,
) -> None:
    async with another_process(redis_url) as other:
        await redis_log.create("s", owner="owner-a")
        await redis_log.append("s", "token", b"{}")
        assert await refused(lambda: other.append_terminal("s", "error", b"{}", owner="owner-b")) == "not_owner"
        assert await refused(lambda: other.append_terminal("s", "error", b"{}", owner=NO_OWNER)) == "not_owner"
        await redis.delete(redis_log.keys("s")[2])  # the owner's lease ran out
        assert await refused(lambda: redis_log.append_terminal("s", "done", b"{}", owner="owner-a")) == "not_owner"
        assert await other.append_terminal("s", "error", b'{"code":"owner_lost"}', owner=NO_OWNER) == "2"
        assert await refused(lambda: redis_log.append("s", "token", b"late")) == "ended"
        assert [e.event for e in await redis_log.read_after("s", None, 10) or []] == ["token", "error"]


async def test_appends_to_a_stream_unknown_or_expired_are_refused(redis_log: RedisEventLog) -> None:
    await redis_log.create("s")
    await redis_log.expire("s", 0)
    for stream in ("s", "never"):
        assert await refused(lambda: redis_log.append(stream, "token", b"{}")) == "unknown"  # noqa: B023 (awaited at once)
        assert await refused(lambda: redis_log.append_many(stream, [("token", b"{}")])) == "unknown"  # noqa: B023
        assert await refused(lambda: redis_log.append_terminal(stream, "done", b"{}")) == "unknown"  # noqa: B023


async def test_a_wait_wakes_on_an_append_from_another_process(redis_log: RedisEventLog, redis_url: str) -> None:
    async with another_process(redis_url) as writer, anyio.create_task_group() as busy:
        await writer.create("s")
        await writer.create("busy")
        busy.start_soon(redis_log.wait, "busy", None)  # the tailer is blocked in an XREAD that does not name "s"
        await anyio.wait_all_tasks_blocked()
        for after, n in ((None, 1), ("1", 2), ("2", 3)):  # a stream new to the tailer, then one it watches
            woke = anyio.Event()

            async def reader(after: str | None = after, woke: anyio.Event = woke) -> None:
                await redis_log.wait("s", after)
                woke.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await anyio.wait_all_tasks_blocked()
                assert not woke.is_set()
                assert await writer.append("s", "token", b"{}") == str(n)
                with anyio.fail_after(0.5):  # well before the tailer's XREAD would end by itself (1 s)
                    await woke.wait()
        busy.cancel_scope.cancel()


async def test_a_waiter_after_an_id_far_ahead_does_not_hold_back_one_behind(redis_log: RedisEventLog) -> None:
    await redis_log.create("s")
    await redis_log.append("s", "token", b"{}")
    async with anyio.create_task_group() as tg:
        tg.start_soon(redis_log.wait, "s", "1000")
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(1):
            async with anyio.create_task_group() as behind:
                behind.start_soon(redis_log.wait, "s", "1")
                await anyio.wait_all_tasks_blocked()
                await redis_log.append("s", "token", b"{}")
        tg.cancel_scope.cancel()


async def test_readers_woken_by_the_tailer_read_what_it_brought_without_a_round_trip(redis_log: RedisEventLog, redis_url: str) -> None:
    sent: list[bytes] = []
    async with another_process(redis_url, connection_class=counting(sent)) as reader:
        await redis_log.create("s")
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(reader.wait, "s", None)
            await anyio.wait_all_tasks_blocked()
            await redis_log.append_many("s", [("token", b'{"n":%d}' % n) for n in range(3)])
        sent.clear()
        reads = [await reader.read_after("s", None, 100) for _ in range(3)]
        assert not sent
        assert reads == [await redis_log.read_after("s", None, 100)] * 3
        assert [e.id for e in reads[0] or []] == ["1", "2", "3"]


async def test_readers_of_a_stream_this_process_generates_are_woken_by_its_appends_without_reading_redis(redis_url: str) -> None:
    sent: list[bytes] = []
    async with another_process(redis_url, connection_class=counting(sent)) as log:
        await log.create("s", owner="owner-a")
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(log.wait, "s", None)
            await anyio.wait_all_tasks_blocked()
            sent.clear()
            with anyio.fail_after(1):
                await log.append_many("s", [("token", b'{"n":%d}' % n) for n in range(3)])
        assert not [command for command in sent if b"XREAD" in command]
        sent.clear()
        reads = [await log.read_after("s", None, 100) for _ in range(3)]
        assert not sent
        assert [[(e.id, e.data) for e in read or []] for read in reads] == [[("1", b'{"n":0}'), ("2", b'{"n":1}'), ("3", b'{"n":2}')]] * 3


async def test_a_reader_of_a_stream_this_process_generates_gets_the_terminal_event_another_process_wrote(
    redis_log: RedisEventLog, redis_url: str, redis: Redis,
) -> None:
    async with another_process(redis_url) as other:
        await redis_log.create("s", owner="owner-a")
        await redis_log.append("s", "token", b"{}")
        await redis.delete(redis_log.keys("s")[2])  # the owner's lease ran out: another process ends the stream
        assert await other.append_terminal("s", "error", b'{"code":"owner_lost"}', owner=NO_OWNER) == "2"
        async with anyio.create_task_group() as tg:
            tg.start_soon(redis_log.wait, "s", "1")  # waiting on the owner's appends
            await anyio.wait_all_tasks_blocked()
            assert await refused(lambda: redis_log.append("s", "token", b"late")) == "ended"
            with anyio.fail_after(2):  # from now on the XREAD brings it
                await redis_log.wait("s", "1")
        assert [e.event for e in await redis_log.read_after("s", "1", 10) or []] == ["error"]


async def test_a_stream_whose_trim_fails_is_no_longer_held_as_this_process_s_own(
    redis_log: RedisEventLog, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream cut for the log's budget is trimmed, then expired: when Redis fails the trim, the log lets go of it all the same."""
    await redis_log.create("s", owner="owner-a")
    await redis_log.append_terminal("s", "error", b'{"code":"stream_log_full"}', owner="owner-a")
    async with anyio.create_task_group() as tg:  # a reader of it here: the tailer watches it as this process's own
        tg.start_soon(redis_log.wait, "s", "1")
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()

    async def failing(**_: Any) -> None:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(redis_log, "_trim", failing)
    with pytest.raises(LogUnavailable):
        await redis_log.trim("s")
    assert "s" not in redis_log._local and redis_log.keys("s")[0] not in redis_log._tailer._local


async def test_readers_of_many_streams_on_another_process_each_get_every_event_once(redis_log: RedisEventLog, redis_url: str) -> None:
    """Readers that follow as the route does (read, wait within a heartbeat, read again) while the writer appends in batches."""
    rng = random.Random(13)
    streams = {f"s{n}": [("token", b'{"n":%d}' % k) for k in range(rng.randrange(5, 40))] + [("done", b"{}")] for n in range(20)}
    received: dict[tuple[str, int], list[Entry]] = {}

    async def follow(reader: RedisEventLog, stream: str, n: int) -> None:
        got, after = received.setdefault((stream, n), []), None
        while not got or got[-1].event != "done":
            await anyio.lowlevel.checkpoint()  # a read that never progresses fails the test rather than hangs it
            entries = await reader.read_after(stream, after, 7)
            assert entries is not None
            if entries:
                got += entries
                after = entries[-1].id
                continue
            with anyio.move_on_after(0.01 * (n + 1)):
                await reader.wait(stream, after)

    async def write(stream: str) -> None:
        events = streams[stream]
        while events:
            size = rng.randrange(1, 4)
            await redis_log.append_many(stream, events[:size])
            events = events[size:]

    for stream in streams:
        await redis_log.create(stream)
    async with another_process(redis_url) as reader:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for stream in streams:
                    for n in range(rng.randrange(1, 4)):
                        tg.start_soon(follow, reader, stream, n)
                await anyio.wait_all_tasks_blocked()
                for stream in streams:
                    tg.start_soon(write, stream)
    for (stream, _), got in received.items():
        assert [(e.id, e.event, e.data) for e in got] == [(str(k + 1), event, data) for k, (event, data) in enumerate(streams[stream])]


async def test_redis_py_drops_a_connection_whose_blocking_command_is_cancelled(redis_url: str) -> None:
    """What the log relies on: a command cancelled mid-flight cannot leave its reply to the next user of the connection."""
    pool = ConnectionPool.from_url(redis_url, max_connections=1)
    async with Redis(connection_pool=pool) as redis:
        cancelled = await redis.client_id()
        with anyio.move_on_after(0.1):
            await redis.xread({"nothing": "$"}, block=10_000)
        with anyio.fail_after(2):
            assert await redis.client_id() != cancelled  # a new connection, from the pool of one
            while cancelled in [client["id"] for client in await redis.client_list()]:  # noqa: ASYNC110 (Redis's state)
                await anyio.sleep(0.01)
    await pool.aclose()


async def test_cancelled_waits_and_reads_leak_no_connection(redis_url: str, redis: Redis) -> None:
    async with another_process(redis_url, max_connections=2) as log:
        await log.create("s")
        for n in range(20):
            with anyio.move_on_after(0.005 * (n % 4)):  # a reader's heartbeat ends its wait; some end mid-command
                await log.read_after("s", None, 10)
                await log.wait("s", None)
        with anyio.fail_after(2):  # a leaked connection would leave the pool of two empty
            for n in range(5):
                assert await log.append("s", "token", b"{}") == str(n + 1)
                assert [e.id for e in await log.read_after("s", str(n), 10) or []] == [str(n + 1)]
        assert len(await redis.client_list()) <= 1 + 2 + 1  # this test's own, the log's pool, its tailer


async def test_every_key_of_a_stream_has_a_time_to_live_and_expire_removes_them_all(redis_log: RedisEventLog, redis: Redis) -> None:
    await redis_log.create("s", owner="owner-a")
    await redis_log.append("s", "token", b"{}")  # the stream key is born here
    keys = redis_log.keys("s")
    assert await redis.exists(*keys) == 3
    assert all(0 < ttl <= 3600_000 for ttl in [await redis.pttl(key) for key in keys])
    await redis_log.append_terminal("s", "done", b"{}", owner="owner-a")
    await redis_log.expire("s", 1)
    assert all(0 < ttl <= 1000 for ttl in [await redis.pttl(key) for key in keys])
    with anyio.fail_after(5):
        while await redis.exists(*keys):  # noqa: ASYNC110 (Redis's state)
            await anyio.sleep(0.05)


async def test_a_stream_nobody_ends_goes_with_its_lifetime(redis_url: str, redis: Redis) -> None:
    async with another_process(redis_url, lifetime=0.5) as log:
        await log.create("s", owner="dies")
        await log.append("s", "token", b"{}")
        with anyio.fail_after(5):
            while await redis.exists(*log.keys("s")):  # noqa: ASYNC110 (Redis's state)
                await anyio.sleep(0.05)


async def test_redis_killed_mid_wait_is_log_unavailable_and_the_same_log_works_once_it_is_back(
    redis_log: RedisEventLog, redis_server: RedisServer,
) -> None:
    await redis_log.create("s")
    await redis_log.append("s", "token", b"{}")

    async def waiter() -> None:
        with pytest.raises(LogUnavailable):
            await redis_log.wait("s", "1")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            redis_server.kill()
    with anyio.fail_after(10):
        with pytest.raises(LogUnavailable):
            await redis_log.read_after("s", None, 10)
        with pytest.raises(LogUnavailable):
            await redis_log.append("s", "token", b"{}")
        with pytest.raises(LogUnavailable):
            await redis_log.wait("s", "1")
    redis_server.start()  # on the same port, empty
    with anyio.fail_after(10):
        assert await redis_log.read_after("s", None, 10) is None
        await redis_log.create("t")
        async with anyio.create_task_group() as tg:
            tg.start_soon(redis_log.wait, "t", None)
            await anyio.wait_all_tasks_blocked()
            assert await redis_log.append("t", "token", b"{}") == "1"
        assert [e.id for e in await redis_log.read_after("t", None, 10) or []] == ["1"]


async def test_after_a_restart_that_kept_nothing_the_owner_is_refused_and_new_streams_work(
    redis_log: RedisEventLog, redis_server: RedisServer,
) -> None:
    await redis_log.create("s", owner="owner-a")
    await redis_log.append("s", "token", b"{}")
    redis_server.restart()
    with anyio.fail_after(10):
        assert await redis_log.read_after("s", "1", 10) is None
        assert await refused(lambda: redis_log.append("s", "token", b"{}")) == "unknown"  # never a stream begun again mid-way
        await redis_log.create("t")
        assert await redis_log.append_many("t", [("token", b"{}")] * 2) == ["1", "2"]


@pytest.mark.parametrize("options", [{"decode_responses": True}, {"socket_timeout": 1.0}])
async def test_a_pool_the_log_cannot_use_is_refused(redis_url: str, options: dict[str, Any]) -> None:
    pool = ConnectionPool.from_url(redis_url, **options)
    with pytest.raises(ValueError, match=r"decode|socket_timeout"):
        RedisEventLog(pool, anyio.create_task_group(), block=1.0)
