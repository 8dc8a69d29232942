"""The in-memory event log drops what it holds; the behaviour it shares with every log is in test_eventlog.py."""

from __future__ import annotations

from app.streaming.log_memory import MemoryEventLog


async def test_expiry_forgets_the_stream() -> None:
    log = MemoryEventLog()
    await log.create("s")
    await log.expire("s", 0)
    await log.wait("s", None)
    assert len(log) == 0


async def test_aclose_drops_everything() -> None:
    log = MemoryEventLog()
    await log.create("a")
    await log.create("b")
    await log.expire("a", 60)
    await log.aclose()
    assert len(log) == 0
