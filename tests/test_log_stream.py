"""The relay's log handler: request lines in batches, other lines at once, bounded memory, whole lines, nothing lost at close."""

from __future__ import annotations

import io
import logging
import os
import re
import select
import threading
from collections.abc import Iterator
from typing import TextIO

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


def test_request_lines_reach_the_stream_in_order_within_the_delay(pipe: tuple[int, TextIO]) -> None:
    read, stream = pipe
    handler = BatchedStreamHandler(stream, batched=["uvicorn.access"], delay=0.01)
    for i in range(200):
        handler.handle(_record("uvicorn.access", f"line {i}"))
    assert _read_lines(read, 200) == [f"line {i}" for i in range(200)]
    handler.close()


def test_any_other_line_is_written_before_the_call_returns_after_those_before_it(pipe: tuple[int, TextIO]) -> None:
    read, stream = pipe
    handler = BatchedStreamHandler(stream, batched=["uvicorn.access"], delay=60)  # request lines would wait a minute
    handler.handle(_record("uvicorn.access", "an access line"))
    handler.handle(_record("uvicorn.error", "Finished server process"))  # what uvicorn logs before it re-raises SIGTERM
    assert _pending(read).decode().splitlines() == ["an access line", "Finished server process"]
    handler.handle(_record("uvicorn.access", "a warning of the access logger", logging.WARNING))
    assert _pending(read) == b"a warning of the access logger\n"
    handler.close()


def test_close_writes_every_line_waiting(pipe: tuple[int, TextIO]) -> None:
    read, stream = pipe
    handler = BatchedStreamHandler(stream, delay=60)
    for i in range(50):
        handler.write(f"line {i}")
    handler.close()
    assert _pending(read).decode().splitlines() == [f"line {i}" for i in range(50)]
    handler.write("after close")  # a late line is written at once
    assert _pending(read) == b"after close\n"


def test_a_stream_nobody_reads_holds_neither_the_caller_nor_more_than_the_limit(pipe: tuple[int, TextIO]) -> None:
    """A stalled reader: every line is either written once it reads again, or counted in the warning that says how many were dropped."""
    read, stream = pipe
    limit = 32 * 1024
    handler = BatchedStreamHandler(stream, batched=["uvicorn.access"], delay=0.001, limit=limit, exit_wait=0.2)
    sent, most_waiting = 5_000, 0  # 500 KB: many times the pipe's buffer and the limit

    def log() -> None:
        nonlocal most_waiting
        for i in range(sent):
            handler.handle(_record("uvicorn.access", f"{i} {LINE}"))
            most_waiting = max(most_waiting, handler.waiting)
        handler.handle(_record("token_relay", "a warning while nobody reads", logging.WARNING))  # waits exit_wait once, at most
        handler.handle(_record("token_relay", "another"))  # then not at all

    caller = threading.Thread(target=log)
    caller.start()
    caller.join(30)
    assert not caller.is_alive(), "logging waited for the stalled stream"
    assert most_waiting <= limit
    others = ("a warning while nobody reads", "another")
    written: list[int] = []
    seen = dropped = 0
    while len(written) + seen + dropped < sent + len(others):  # the reader is back: each line comes, or is counted
        for line in _read_lines(read, 1):
            if match := re.fullmatch(r"(\d+) log lines were dropped: .*", line):
                dropped += int(match[1])
            elif line in others:
                seen += 1
            else:
                written.append(int(line.split()[0]))
    assert dropped > 0 and written == sorted(written)  # in their order
    handler.close()
    assert _pending(read) == b""  # nothing more: no line was both written and counted


def test_each_write_is_whole_lines_of_at_most_pipe_buf_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    monkeypatch.setattr(log_stream.os, "write", lambda fd, data: writes.append(bytes(data)) or len(data))
    long = "y" * (PIPE_BUF + 10)
    lines = [f"{i} {LINE}" for i in range(100)] + [long] + ["after"]
    log_stream._write_lines(1, "".join(line + "\n" for line in lines).encode())
    assert b"".join(writes).decode().splitlines() == lines
    for data in writes:
        assert data.endswith(b"\n")
        assert len(data) <= PIPE_BUF or data.count(b"\n") == 1


def test_a_stream_without_a_file_is_written_as_text() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, delay=60)
    handler.write("one")
    handler.handle(_record("token_relay", "two"))
    assert stream.getvalue() == "one\ntwo\n"
    handler.close()
