"""The relay's log handler: request lines in the loop's batches, other lines at once, no blocking write, bounded memory, whole lines."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import select
import threading
from collections.abc import Iterator
from typing import TextIO

import anyio
import pytest

from app import log_stream
from app.log_stream import PIPE_BUF, BatchedStreamHandler

LINE = "x" * 99


@pytest.fixture
def pipe() -> Iterator[tuple[int, TextIO]]:
    """A pipe's read end and its write end as a text stream (what stderr is under a log collector)."""
    read, write = os.pipe()
    stream = open(write, "w")  # closed below
    yield read, stream
    stream.close()
    os.close(read)


def _record(name: str, message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def _read_lines(fd: int, count: int, timeout: float = 10.0) -> list[str]:
    """The next ``count`` lines from ``fd``, waiting at most ``timeout`` seconds for each read."""
    data = b""
    while data.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"only {len(data.splitlines())} of {count} lines came"
        data += os.read(fd, 1 << 16)
    return data.decode().splitlines()


def _pending(fd: int) -> bytes:
    """What the pipe holds now, without waiting."""
    data = b""
    while select.select([fd], [], [], 0)[0]:
        data += os.read(fd, 1 << 16)
    return data


async def test_request_lines_are_written_in_one_batch_by_the_loop_in_order(pipe: tuple[int, TextIO]) -> None:
    read, stream = pipe
    handler = BatchedStreamHandler(stream, batched=["uvicorn.access"], delay=0.01)
    for i in range(200):
        handler.handle(_record("uvicorn.access", f"line {i}"))
    assert _pending(read) == b""  # the loop writes them, after the delay
    with anyio.fail_after(10):
        lines = await anyio.to_thread.run_sync(_read_lines, read, 200)
    assert lines == [f"line {i}" for i in range(200)]
    handler.close()


async def test_any_other_line_is_written_at_once_after_those_before_it(pipe: tuple[int, TextIO]) -> None:
    read, stream = pipe
    handler = BatchedStreamHandler(stream, batched=["uvicorn.access"], delay=60)  # request lines would wait a minute
    handler.handle(_record("uvicorn.access", "an access line"))
    handler.handle(_record("uvicorn.error", "Finished server process"))  # what uvicorn logs before it re-raises SIGTERM
    assert _pending(read).decode().splitlines() == ["an access line", "Finished server process"]
    handler.handle(_record("uvicorn.access", "a warning of the access logger", logging.WARNING))
    assert _pending(read) == b"a warning of the access logger\n"
    handler.close()


def test_without_an_event_loop_a_line_is_written_at_once(pipe: tuple[int, TextIO]) -> None:
    read, stream = pipe
    handler = BatchedStreamHandler(stream, batched=["uvicorn.access"], delay=60)
    handler.handle(_record("uvicorn.access", "from a thread without a loop"))
    assert _pending(read) == b"from a thread without a loop\n"
    handler.close()


async def test_close_writes_every_line_waiting(pipe: tuple[int, TextIO]) -> None:
    read, stream = pipe
    handler = BatchedStreamHandler(stream, delay=60)
    for i in range(50):
        handler.write(f"line {i}")
    handler.close()
    assert _pending(read).decode().splitlines() == [f"line {i}" for i in range(50)]


def test_a_stream_nobody_reads_holds_neither_the_loop_nor_more_than_the_limit(pipe: tuple[int, TextIO]) -> None:
    """A stalled reader: every line is either written once it reads again, or counted in the warning that says how many were dropped."""
    read, stream = pipe
    limit = 32 * 1024
    handler = BatchedStreamHandler(stream, batched=["uvicorn.access"], delay=0.001, limit=limit, exit_wait=0.2)
    sent, most_waiting = 5_000, 0  # 500 KB: many times the pipe's buffer and the limit
    others = ("a warning while nobody reads", "another")

    async def log() -> None:
        nonlocal most_waiting
        for i in range(sent):
            handler.handle(_record("uvicorn.access", f"{i} {LINE}"))
            most_waiting = max(most_waiting, handler.waiting)
            if i % 100 == 0:
                await asyncio.sleep(0.002)  # the loop's batches run, and find the pipe full
        for line in others:
            handler.handle(_record("token_relay", line, logging.WARNING))

    caller = threading.Thread(target=asyncio.run, args=(log(),))  # a loop of its own: were a write to block, it would stay blocked
    caller.start()
    caller.join(30)
    assert not caller.is_alive(), "the event loop waited for the stalled stream"
    assert most_waiting <= limit
    data = b""
    for _ in range(1000):  # the reader is back: each line comes, or is counted
        data += _pending(read)
        written, seen, dropped = _account(data.decode().splitlines(), others)
        if len(written) + seen + dropped == sent + len(others):
            break
        handler.flush()  # what waits is written (at most exit_wait while the pipe is full)
    assert dropped > 0 and written == sorted(written)  # in their order
    handler.close()
    assert _pending(read) == b""  # nothing more: no line was both written and counted


def _account(lines: list[str], others: tuple[str, ...]) -> tuple[list[int], int, int]:
    """The numbers of the lines written, how many of ``others`` came, and how many lines the warnings say were dropped."""
    written: list[int] = []
    seen = dropped = 0
    for line in lines:
        if match := re.fullmatch(r"(\d+) log lines were dropped: .*", line):
            dropped += int(match[1])
        elif line in others:
            seen += 1
        else:
            written.append(int(line.split()[0]))
    return written, seen, dropped


async def test_each_write_is_whole_lines_of_at_most_pipe_buf_bytes(pipe: tuple[int, TextIO], monkeypatch: pytest.MonkeyPatch) -> None:
    read, stream = pipe
    writes: list[bytes] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if fd == stream.fileno():
            writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(log_stream.os, "write", write)
    handler = BatchedStreamHandler(stream, delay=0.001)
    lines = [f"{i} {LINE}" for i in range(100)] + ["y" * (PIPE_BUF + 10), "after"]
    for line in lines:
        handler.write(line)
    with anyio.fail_after(10):
        assert await anyio.to_thread.run_sync(_read_lines, read, len(lines)) == lines
    assert len(writes) < len(lines)  # batched
    for data in writes:
        assert data.endswith(b"\n")
        assert len(data) <= PIPE_BUF or data.count(b"\n") == 1
    handler.close()


def test_a_stream_without_a_file_is_written_as_text() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, delay=60)
    handler.write("one")
    handler.handle(_record("token_relay", "two"))
    assert stream.getvalue() == "one\ntwo\n"
    handler.close()


def test_a_loop_that_ended_with_a_batch_waiting_does_not_hold_the_next_loops_lines(pipe: tuple[int, TextIO]) -> None:
    read, stream = pipe
    handler = BatchedStreamHandler(stream, delay=60)

    async def log(line: str, then: float) -> None:
        handler.write(line)
        await asyncio.sleep(then)

    asyncio.run(log("the first loop's", 0))  # it ends before its batch's timer
    handler.delay = 0.001
    asyncio.run(log("the second loop's", 0.2))  # its own timer writes both
    assert _pending(read).decode().splitlines() == ["the first loop's", "the second loop's"]
    handler.close()


def test_a_line_from_a_thread_without_a_loop_does_not_wait_for_a_stalled_stream(pipe: tuple[int, TextIO]) -> None:
    _, stream = pipe
    handler = BatchedStreamHandler(stream, delay=0.01, exit_wait=0.1)
    filler = "z" * 1000
    caller = threading.Thread(target=lambda: [handler.write(filler) for _ in range(200)])  # 200 KB: more than the pipe holds
    caller.start()
    caller.join(30)
    assert not caller.is_alive(), "a thread's line waited for the stalled stream, holding what the loop needs"
    assert 0 < handler.waiting
    handler.close()
