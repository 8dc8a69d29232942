"""Log lines written to their stream in batches by the event loop, and never a write the stream cannot take at once.

``logging.StreamHandler`` writes and flushes every line in the thread that logs it: a system
call per line, and when nobody reads the stream (a full pipe, a stalled log collector) the
write blocks, and with it the whole event loop, until someone does. ``BatchedStreamHandler``:

- **The lines of requests in batches, within a bounded delay.** A line of the loggers named in
  ``batched`` (the access log and the request log: one or two lines a request), and every line
  handed to ``write``, logged on a running event loop, is written by a timer of that loop,
  ``delay`` seconds (50 ms) after the first line of its batch.
- **Every other line at once** (start-up, shutdown, warnings, errors), after the lines waiting
  before it: a process killed by the signal that stopped it, as uvicorn's re-raised SIGTERM
  does, has written them all. A line logged where no event loop runs (another thread, the
  process before or after serving) is written at once too, waiting at most ``delay`` for the
  stream to take it (else it waits for the next line, a batch or the exit).
- **No write the stream cannot take.** On the event loop, each write is preceded by a poll: a
  stream that is not writable keeps the lines waiting, and the timer tries again ``delay``
  later. A pipe or a socket that polls writable takes a write of ``PIPE_BUF`` bytes without
  blocking; a regular file always does. So no write is longer: a line longer than ``PIPE_BUF``
  (a traceback) goes out in pieces of ``PIPE_BUF`` bytes, each after its own poll, before any
  other line.
- **Bounded memory.** Lines waiting are at most ``limit`` characters (1 MiB), besides the rest
  of the one long line being written; past it new lines are dropped and counted, and a warning
  that says how many takes their place (in the handler's format, or plain when its formatter
  cannot take it: uvicorn's access formatter takes only access lines).
- **Whole lines.** Each write holds whole lines and at most ``PIPE_BUF`` bytes (a longer line is
  written alone): on a pipe that several workers share, no line is cut by another's.
- **Nothing lost at exit.** ``flush`` (``logging.shutdown`` calls it at exit) writes every line
  waiting, waiting at most ``exit_wait`` seconds (5) for a stream that does not take them. A
  line written at once drains the other handlers' batches too: the access log's handler writes
  its waiting lines when uvicorn's last line goes to the default one, just before uvicorn
  re-raises the SIGTERM that stopped it (and the process ends without ``flush``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TextIO

DELAY = 0.05
LIMIT = 1 << 20
EXIT_WAIT = 5.0
PIPE_BUF = select.PIPE_BUF
DROPPED = "%d log lines were dropped: the stream did not take them (a reader stalled)"
# Every handler of the process: a line written at once drains them all (see "Nothing lost at exit").
_HANDLERS: weakref.WeakSet[BatchedStreamHandler] = weakref.WeakSet()


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    """A ``StreamHandler`` whose request lines the event loop writes in batches (see the module's docstring)."""

    def __init__(
        self, stream: TextIO | None = None, *, batched: Iterable[str] = (), delay: float = DELAY, limit: int = LIMIT, exit_wait: float = EXIT_WAIT,
    ) -> None:
        super().__init__(stream)
        self.batched = frozenset(batched)
        self.delay, self.limit, self.exit_wait = delay, limit, exit_wait
        self._guard = threading.Lock()  # lines may come from any thread
        self._lines: list[str] = []
        self._size = 0  # characters in _lines, newlines included
        self._rest = b""  # the end of a line longer than PIPE_BUF not yet written: it goes before any other
        self._dropped = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # a timer of a loop that has ended does not count
        _HANDLERS.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write(line, at_once=record.name not in self.batched or record.levelno > logging.INFO)

    def write(self, line: str, *, at_once: bool = False) -> None:
        """Take one line (without its newline): written in the loop's next batch, or now with ``at_once`` or without a loop."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._guard:
            if self._size + len(line) >= self.limit:
                self._dropped += 1
            else:
                self._note_drops()
                self._lines.append(line)
                self._size += len(line) + 1
                if loop is None:  # another thread, or no loop yet: at once, but never held for long (the loop may wait for the guard)
                    self._drain(self.delay)
                elif at_once:
                    self._drain(0.0)
            if loop is not None and (self._timer is None or self._timer_loop is not loop) and (self._lines or self._rest or self._dropped):
                self._timer, self._timer_loop = loop.call_later(self.delay, self._batch), loop
        if at_once and loop is not None:
            for other in list(_HANDLERS):
                if other is not self:
                    other.write_waiting()

    def write_waiting(self) -> None:
        """Write what the stream takes now of the lines waiting (polled, never waiting for it)."""
        with self._guard:
            if self._lines or self._rest:
                self._drain(0.0)

    @property
    def waiting(self) -> int:
        """Characters taken and not yet written."""
        return self._size

    def flush(self) -> None:
        """Write every line waiting, waiting at most ``exit_wait`` seconds for a stream that does not take them."""
        with self._guard:
            self._note_drops()
            deadline = time.monotonic() + self.exit_wait
            while (self._lines or self._rest) and self._drain(max(0.0, deadline - time.monotonic())) and time.monotonic() < deadline:
                pass

    def close(self) -> None:
        self.flush()
        with self._guard:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        super().close()

    def _batch(self) -> None:
        with self._guard:
            self._timer = None
            try:
                self._note_drops()
                self._drain(0.0)
            finally:
                if self._lines or self._rest or self._dropped:  # the stream did not take them all: again later
                    self._timer_loop = asyncio.get_running_loop()
                    self._timer = self._timer_loop.call_later(self.delay, self._batch)

    def _note_drops(self) -> None:
        """With the guard held: a warning in the place of the lines dropped since the last one, if it fits now."""
        if not self._dropped:
            return
        note = logging.LogRecord("token_relay", logging.WARNING, __file__, 0, DROPPED, (self._dropped,), None)
        try:
            line = self.format(note)
        except Exception:  # a formatter for its own records only (uvicorn's access formatter)
            line = f"WARNING:  {note.getMessage()}"
        if self._size + len(line) < self.limit:
            self._dropped = 0
            self._lines.append(line)
            self._size += len(line) + 1

    def _drain(self, timeout: float | None) -> bool:
        """With the guard held: write the lines waiting, in writes of whole lines of at most ``PIPE_BUF`` bytes.

        Before each write the stream is polled for ``timeout`` seconds (``None``: not polled, the
        write may block); a stream not writable by then keeps the rest waiting. Returns whether
        anything was written.
        """
        stream = self.stream
        if stream is None:  # closed: ``setStream`` may give it another
            return False
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file: an io.StringIO, a test's capture
            try:
                stream.write("".join(line + "\n" for line in self._lines))
                stream.flush()
            except (OSError, ValueError):  # closed: nothing can be written to it
                pass
            self._lines, self._size = [], 0
            return True
        encoding = getattr(stream, "encoding", None) or "utf-8"
        done = 0
        wrote = False
        while self._rest or done < len(self._lines):
            if timeout is not None and not _writable(fd, timeout):
                break
            if self._rest:
                chunk = self._rest
            else:
                chunk, end = _chunk(self._lines, done, encoding)
                self._size -= sum(len(line) + 1 for line in self._lines[done:end])
                done = end
            chunk, self._rest = chunk[:PIPE_BUF], chunk[PIPE_BUF:]  # no more than a poll says the stream takes
            try:
                _write_all(fd, chunk)
            except OSError:  # the stream is gone (a closed pipe): nothing can be written to it
                self._rest = b""
            wrote = True
        del self._lines[:done]
        return wrote


def _chunk(lines: list[str], start: int, encoding: str) -> tuple[bytes, int]:
    """The bytes of ``lines[start:end]``, the most whole lines within ``PIPE_BUF`` (at least one), and ``end``."""
    parts: list[bytes] = []
    size, end = 0, start
    while end < len(lines):
        data = (lines[end] + "\n").encode(encoding, "backslashreplace")
        if parts and size + len(data) > PIPE_BUF:
            break
        parts.append(data)
        size += len(data)
        end += 1
    return b"".join(parts), end


def _writable(fd: int, timeout: float) -> bool:
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    return any(events & (select.POLLOUT | select.POLLERR | select.POLLHUP) for _, events in poll.poll(timeout * 1000))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
