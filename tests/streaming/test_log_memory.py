"""The in-memory event log drops what it holds; the behaviour it shares with every log is in test_eventlog.py."""

from __future__ import annotations

import anyio
import pytest

from app.streaming.eventlog import Entry, InvalidEventId
from app.streaming.log_memory import MemoryEventLog


async def test_expiry_forgets_the_stream() -> None:
    log = MemoryEventLog(budget=1 << 20)
    await log.create("s")
    await log.expire("s", 0)
    await log.wait("s", None)
    assert len(log) == 0


async def test_aclose_drops_everything() -> None:
    log = MemoryEventLog(budget=1 << 20)
    await log.create("a")
    await log.create("b")
    await log.expire("a", 60)
    await log.aclose()
    assert len(log) == 0


async def test_an_id_past_the_last_event_is_refused_and_the_last_id_itself_is_not() -> None:
    log = MemoryEventLog(budget=1 << 20)
    await log.create("s")
    assert await log.read_after("s", "0", 10) == []
    with pytest.raises(InvalidEventId):
        await log.read_after("s", "1", 10)
    for _ in range(3):
        await log.append("s", "token", b"{}")
    assert await log.read_after("s", "3", 10) == []  # a live reader holding the last id waits for the next
    with pytest.raises(InvalidEventId):
        await log.read_after("s", "4", 10)


async def _finished(log: MemoryEventLog, stream_id: str, size: int) -> None:
    await log.create(stream_id)
    await log.append(stream_id, "token", b"x" * size)
    await log.append(stream_id, "done", b"{}")
    await log.expire(stream_id, 60)


async def test_past_the_budget_finished_streams_are_dropped_oldest_first() -> None:
    dropped: list[str] = []
    log = MemoryEventLog(budget=100_000)
    log.on_drop(dropped.append)
    for n in range(10):
        await _finished(log, f"s{n}", 20_000)
        assert log.nbytes <= 100_000
    assert dropped == [f"s{n}" for n in range(len(dropped))]
    assert 4 <= len(dropped) <= 7  # each stream costs its 20 kB and a little more
    for n in range(10):
        entries = await log.read_after(f"s{n}", None, 10)
        assert (entries is None) == (f"s{n}" in dropped)
    assert log.room == 100_000  # nothing is being written


async def test_streams_being_written_are_never_dropped_and_the_room_left_says_so() -> None:
    log = MemoryEventLog(budget=100_000)
    await _finished(log, "old", 30_000)
    await log.create("live")
    room = log.room
    await log.append("live", "token", b"x" * 50_000)
    assert room - 50_000 - 200 < log.room < room - 50_000
    assert await log.read_after("old", None, 10) is not None
    await log.append("live", "token", b"x" * 40_000)  # no room for both: the finished one goes
    assert await log.read_after("old", None, 10) is None
    await log.append("live", "token", b"x" * 40_000)  # past the budget with nothing left to drop
    assert log.room < 0
    assert [e.id for e in await log.read_after("live", None, 10) or []] == ["1", "2", "3"]


async def test_trim_keeps_only_the_last_event_and_a_reader_from_before_it_gets_that() -> None:
    log = MemoryEventLog(budget=1 << 20)
    await log.create("s")
    for _ in range(4):
        await log.append("s", "token", b"x" * 10_000)
    await log.append("s", "error", b'{"code":"stream_log_full"}')
    before = log.nbytes
    await log.trim("s")
    assert log.nbytes < before - 40_000
    last = [Entry("5", "error", b'{"code":"stream_log_full"}')]
    assert await log.read_after("s", None, 10) == last
    assert await log.read_after("s", "2", 10) == last
    assert await log.read_after("s", "5", 10) == []
    with pytest.raises(InvalidEventId):
        await log.read_after("s", "6", 10)


async def test_what_is_dropped_is_no_longer_counted() -> None:
    log = MemoryEventLog(budget=1 << 20)
    await _finished(log, "a", 10_000)
    await log.create("b")
    await log.expire("a", 0.01)
    with anyio.fail_after(2):
        await log.wait("a", "2")
    await log.aclose()
    assert log.nbytes == 0
