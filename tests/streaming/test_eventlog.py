"""Every event log, memory and Redis alike: ids, reading after an id, waiting for new events, expiry."""

from __future__ import annotations

import anyio
import pytest

from app.streaming.eventlog import NO_OWNER, AppendRefused, Entry, EventLog, InvalidEventId, StreamInfo
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


async def test_an_id_past_the_last_event_is_refused_and_the_last_id_itself_is_not(log: EventLog) -> None:
    await log.create("s")
    assert await log.read_after("s", "0", 10) == []
    with pytest.raises(InvalidEventId):
        await log.read_after("s", "1", 10)
    await log.append_many("s", [("token", b"{}")] * 3)
    assert await log.read_after("s", "3", 10) == []  # a live reader holding the last id waits for the next
    for past in ("4", "1000"):
        with pytest.raises(InvalidEventId):
            await log.read_after("s", past, 10)
    await log.append_terminal("s", "done", b"{}")
    assert await log.read_after("s", "4", 10) == []
    with pytest.raises(InvalidEventId):
        await log.read_after("s", "5", 10)


async def test_a_batch_gets_consecutive_ids_and_the_terminal_event_ends_the_stream(log: EventLog) -> None:
    await log.create("s", owner="me", key="key-1")
    assert await log.info("s") == StreamInfo("key-1", None, owned=True)
    assert await log.append_many("s", [("token", b'{"n":%d}' % n) for n in range(3)]) == ["1", "2", "3"]
    assert await log.append_many("s", []) == []
    assert await log.append_terminal("s", "done", b"{}", owner="me") == "4"
    assert (await log.info("s") or StreamInfo(None, None, owned=False)).end == "4"
    for append in (lambda: log.append("s", "token", b"{}"), lambda: log.append_many("s", [("token", b"{}")]),
                   lambda: log.append_terminal("s", "error", b"{}")):
        with pytest.raises(AppendRefused) as refused:
            await append()
        assert refused.value.reason == "ended"
    assert [e.event for e in await log.read_after("s", None, 10) or []] == ["token", "token", "token", "done"]
    assert await log.info("unknown") is None


async def test_a_terminal_event_with_another_owner_token_or_none_is_refused_while_the_owner_holds_it(log: EventLog) -> None:
    await log.create("s", owner="me")
    for owner in ("someone-else", NO_OWNER):
        with pytest.raises(AppendRefused) as refused:
            await log.append_terminal("s", "error", b"{}", owner=owner)
        assert refused.value.reason == "not_owner"
    with pytest.raises(AppendRefused) as unknown:
        await log.append_many("never", [("token", b"{}")])
    assert unknown.value.reason == "unknown"
    assert await log.info("s") == StreamInfo(None, None, owned=True)
