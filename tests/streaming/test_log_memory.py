"""The in-memory event log: ids, reading after an id, waiting for new events, expiry."""

from __future__ import annotations

import anyio
import pytest

from app.streaming.eventlog import Entry, InvalidEventId
from app.streaming.log_memory import MemoryEventLog


async def test_append_assigns_increasing_ids_and_read_after_returns_what_follows() -> None:
    log = MemoryEventLog()
    await log.create("s")
    ids = [await log.append("s", "token", b'{"text":"%d"}' % n) for n in range(5)]
    assert ids == ["1", "2", "3", "4", "5"]
    assert await log.read_after("s", None, 100) == [Entry(str(n + 1), "token", b'{"text":"%d"}' % n) for n in range(5)]
    assert [e.id for e in await log.read_after("s", "2", 100) or []] == ["3", "4", "5"]
    assert [e.id for e in await log.read_after("s", "2", 2) or []] == ["3", "4"]
    assert await log.read_after("s", "5", 100) == []
    assert await log.read_after("unknown", None, 100) is None


@pytest.mark.parametrize("bad", ["", "x", "-1", "1.5", "²", "9" * 40])
async def test_ids_it_never_issues_are_refused(bad: str) -> None:
    log = MemoryEventLog()
    await log.create("s")
    with pytest.raises(InvalidEventId):
        await log.read_after("s", bad, 10)


async def test_wait_returns_when_an_event_follows_the_id() -> None:
    log = MemoryEventLog()
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


async def test_expire_drops_the_stream_and_wakes_its_waiters() -> None:
    log = MemoryEventLog()
    await log.create("s")
    await log.expire("s", 0.05)
    with anyio.fail_after(2):
        await log.wait("s", None)
    assert await log.read_after("s", None, 10) is None
    assert len(log) == 0


async def test_aclose_drops_everything() -> None:
    log = MemoryEventLog()
    await log.create("a")
    await log.create("b")
    await log.expire("a", 60)
    await log.aclose()
    assert len(log) == 0
