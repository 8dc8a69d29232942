"""Every event log, memory and Redis alike: ids, reading after an id, waiting for new events, expiry."""

from __future__ import annotations

import anyio
import pytest

from app.streaming.eventlog import Entry, EventLog, InvalidEventId
from app.streaming.log_memory import MemoryEventLog


@pytest.fixture(params=["memory", "redis"])
def log(request: pytest.FixtureRequest) -> EventLog:
    log: EventLog = request.getfixturevalue("redis_log") if request.param == "redis" else MemoryEventLog(budget=1 << 20)
    return log


async def test_append_assigns_increasing_ids_and_read_after_returns_what_follows(log: EventLog) -> None:
    await log.create("s")
    assert await log.read_after("s", None, 100) == []
    ids = [await log.append("s", "token", b'{"text":"%d"}' % n) for n in range(5)]
    assert ids == ["1", "2", "3", "4", "5"]
    assert await log.read_after("s", None, 100) == [Entry(str(n + 1), "token", b'{"text":"%d"}' % n) for n in range(5)]
    assert [e.id for e in await log.read_after("s", "2", 100) or []] == ["3", "4", "5"]
    assert [e.id for e in await log.read_after("s", "2", 2) or []] == ["3", "4"]
    assert await log.read_after("s", "5", 100) == []
    assert await log.read_after("s", "2", 0) == []
    assert await log.read_after("unknown", None, 100) is None


@pytest.mark.parametrize("bad", ["", "x", "-1", "1.5", "²", "9" * 40])
async def test_ids_it_never_issues_are_refused(log: EventLog, bad: str) -> None:
    await log.create("s")
    with pytest.raises(InvalidEventId):
        await log.read_after("s", bad, 10)
    with pytest.raises(InvalidEventId):
        await log.wait("s", bad)


async def test_wait_returns_when_an_event_follows_the_id(log: EventLog) -> None:
    await log.create("s")
    await log.append("s", "token", b"{}")
    with anyio.fail_after(1):
        await log.wait("s", None)  # already there
    woke = anyio.Event()

    async def waiter() -> None:
        await log.wait("s", "1")
        woke.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not woke.is_set()
        await log.append("s", "done", b"{}")
        with anyio.fail_after(1):
            await woke.wait()


async def test_expire_drops_the_stream_and_wakes_its_waiters(log: EventLog) -> None:
    await log.create("s")
    await log.append("s", "token", b"{}")
    await log.expire("s", 0.05)
    with anyio.fail_after(3):
        await log.wait("s", "1")
    assert await log.read_after("s", None, 10) is None
