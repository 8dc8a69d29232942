"""The relay's log handler: request lines in the loop's batches, other lines at once, no blocking write, bounded memory, whole lines."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.config
import os
import re
import select
import threading
from collections.abc import Iterator
from typing import TextIO

import anyio
import pytest

from app import log_stream
from app.access_log import access_log_of
from app.log_stream import PIPE_BUF, BatchedStreamHandler
from app.server import log_config
from app.settings import Settings

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
    assert all(len(data) <= PIPE_BUF for data in writes)  # never more than a poll says the stream takes
    cut = [data for data in writes if not data.endswith(b"\n")]
    assert cut and all(set(data) == {ord("y")} for data in cut)  # only the line longer than PIPE_BUF, in pieces
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


def _full(write: int) -> None:
    """Fill the pipe, then free one page of it: it polls writable, and takes no more than that page."""
    os.set_blocking(write, False)
    try:
        while True:
            os.write(write, b"f" * PIPE_BUF)
    except BlockingIOError:
        pass
    os.set_blocking(write, True)


def test_a_line_longer_than_pipe_buf_does_not_block_the_loop_on_a_nearly_full_pipe(pipe: tuple[int, TextIO]) -> None:
    """A traceback longer than a page, while a log collector stalls: written a page at a time, after a poll each."""
    read, stream = pipe
    _full(stream.fileno())
    os.read(read, PIPE_BUF)
    handler = BatchedStreamHandler(stream, delay=0.001, exit_wait=0.2)
    long = "Traceback line " * 1000

    async def log() -> None:
        handler.handle(_record("token_relay", long, logging.ERROR))  # at once, on the loop

    caller = threading.Thread(target=asyncio.run, args=(log(),))
    caller.start()
    caller.join(10)
    assert not caller.is_alive(), "the event loop waited in a write the stream could not take"
    data = b""
    for _ in range(1000):  # the reader is back: the whole line comes
        data += _pending(read)
        if data.endswith(long.encode() + b"\n"):
            break
        handler.flush()
    assert data.replace(b"f", b"") == long.encode() + b"\n"
    handler.close()


def test_the_access_log_writes_again_after_its_reader_stalled_and_came_back(pipe: tuple[int, TextIO]) -> None:
    """uvicorn's access formatter takes access lines only: the warning of the lines dropped meanwhile is written plainly, and the log goes on."""
    read, stream = pipe
    logging.config.dictConfig(log_config(Settings()))
    logger = logging.getLogger("uvicorn.access")
    handler = logger.handlers[0]
    assert isinstance(handler, BatchedStreamHandler)
    saved = logger.handlers[:]
    logger.handlers[:] = [handler]  # pytest's capture aside: the relay's own configuration
    handler.setStream(stream)
    handler.limit, handler.delay = 8 * 1024, 0.001
    access = access_log_of(logger)
    assert access is not None
    written = b""

    async def log() -> None:
        nonlocal written
        for i in range(3_000):  # nobody reads: the pipe fills, then the limit
            access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/models", "1.1", 200)
            if i % 50 == 0:
                await asyncio.sleep(0.002)
        for _ in range(100):  # the reader is back
            _pending(read)
            await asyncio.sleep(0.005)
        _pending(read)
        for _ in range(20):
            access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5001", "GET", "/after-the-stall", "1.1", 200)
            await asyncio.sleep(0.01)
        written = _pending(read)

    try:
        asyncio.run(log())
    finally:
        handler.setStream(io.StringIO())
        logger.handlers[:] = saved
    assert b"/after-the-stall" in written


async def test_a_line_written_at_once_writes_the_other_handlers_batches_too(pipe: tuple[int, TextIO]) -> None:
    """uvicorn's last line goes to the default handler and then it re-raises SIGTERM: the access handler's batch must be out by then."""
    read, stream = pipe
    access = BatchedStreamHandler(stream, batched=["uvicorn.access"], delay=60.0)
    default = BatchedStreamHandler(io.StringIO())
    access.handle(_record("uvicorn.access", "a request"))
    assert _pending(read) == b""  # in its batch, a minute away
    default.handle(_record("uvicorn.error", "Finished server process"))
    assert _pending(read) == b"a request\n"
    access.close()
    default.close()


async def test_a_handler_whose_stream_was_closed_does_not_fail_the_lines_of_another() -> None:
    """A line written at once drains every handler's batch: one whose stream is closed drops its lines, and the caller never sees it."""
    closed = io.StringIO()
    stale = BatchedStreamHandler(closed, batched=["uvicorn.access"], delay=60.0)
    stale.handle(_record("uvicorn.access", "a request"))
    closed.close()
    stream = io.StringIO()
    other = BatchedStreamHandler(stream)
    other.handle(_record("uvicorn.error", "Finished server process"))
    assert stream.getvalue() == "Finished server process\n"
    assert stale.waiting == 0
    other.close()
    stale.close()
