"""Log lines written to their stream by a thread of their own, the lines of requests in batches.

``logging.StreamHandler`` writes and flushes every line in the thread that logs it, the event
loop's: a system call per line, and when nobody reads the stream (a full pipe, a stalled log
collector) the whole relay stops until someone does. ``BatchedStreamHandler`` takes the line
in the caller's thread and leaves the writing to its writer thread:

- **The lines of requests in batches, within a bounded delay.** A line of the loggers named in
  ``batched`` (the access log and the request log: one or two lines a request), and every line
  handed to ``write``, wakes the writer, which gathers for ``delay`` seconds (50 ms) before it
  writes: such a line reaches the stream within that, plus the write itself.
- **Every other line at once.** A start-up or shutdown message, a warning, an error: the call
  that logs it returns when the writer has written it, after the lines waiting before it (so
  the order holds, and a process killed by the signal that stopped it, as uvicorn's re-raised
  SIGTERM does, has written them all). While the stream does not take a line within
  ``exit_wait`` seconds (5), nothing waits for the writer until it has written again.
- **Bounded memory.** Lines waiting are at most ``limit`` characters (1 MiB) all together; past
  it, while the stream does not take what it is given, new lines are dropped and counted, and
  the next batch written begins with one warning that says how many.
- **Whole lines.** Each write holds whole lines and at most ``PIPE_BUF`` bytes (a longer line
  is written alone, as ``StreamHandler`` would): on a pipe that several workers share, no line
  is cut by another's.
- **Nothing lost at exit.** ``flush`` (``logging.shutdown`` calls it at exit, then ``close``)
  waits, at most ``exit_wait`` seconds, until every line taken so far is written.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Iterable
from typing import TextIO

DELAY = 0.05
LIMIT = 1 << 20
EXIT_WAIT = 5.0
PIPE_BUF = select.PIPE_BUF


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    """A ``StreamHandler`` whose lines a writer thread writes in batches (see the module's docstring)."""

    def __init__(
        self, stream: TextIO | None = None, *, batched: Iterable[str] = (), delay: float = DELAY, limit: int = LIMIT, exit_wait: float = EXIT_WAIT,
    ) -> None:
        super().__init__(stream)
        self.batched = frozenset(batched)
        self.delay, self.limit, self.exit_wait = delay, limit, exit_wait
        lock = threading.Lock()
        self._ready = threading.Condition(lock)  # the writer waits on it for lines
        self._done = threading.Condition(lock)  # flush waits on it for the writer
        self._lines: list[str] = []
        self._size = 0  # characters in _lines, newlines included
        self._dropped = 0
        self._taken = 0  # lines taken so far, and the writer is through with
        self._written = 0
        self._urgent = False  # someone waits: write without gathering
        self._stalled = False  # the stream did not take a line within exit_wait: nobody waits until it has
        self._closed = False
        self._writer: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if record.name in self.batched and record.levelno <= logging.INFO:
            self.write(line)
        else:
            self.write(line, wait=True)

    def write(self, line: str, *, wait: bool = False) -> None:
        """Take one line (without its newline), written within ``delay``, or before this returns with ``wait``.

        Past ``limit`` characters waiting, the line is dropped (and counted).
        """
        with self._ready:
            if not self._closed:
                if self._size + len(line) >= self.limit:
                    self._dropped += 1
                    return
                self._lines.append(line)
                self._size += len(line) + 1
                self._taken += 1
                if self._writer is None:
                    self._writer = threading.Thread(target=self._run, name="token-relay-log", daemon=True)
                    self._writer.start()
                if wait:
                    self._wait_for(self._taken)
                elif len(self._lines) == 1:
                    self._ready.notify()
                return
        self._put([line])  # after close: a late line, written at once

    @property
    def waiting(self) -> int:
        """Characters taken and not yet handed to the writer's write."""
        return self._size

    def flush(self) -> None:
        """Wait, at most ``exit_wait`` seconds, until every line taken so far is written."""
        with self._done:
            self._wait_for(self._taken)

    def _wait_for(self, taken: int) -> None:
        """With the lock held: have the writer write now, and wait until it is through with the first ``taken`` lines."""
        if self._written >= taken or self._stalled:
            return
        self._urgent = True
        self._ready.notify()
        if not self._done.wait_for(lambda: self._written >= taken, self.exit_wait):
            self._stalled = True

    def close(self) -> None:
        self.flush()
        with self._ready:
            self._closed = True
            self._ready.notify()
        super().close()

    def _run(self) -> None:
        with self._ready:
            while True:
                while not self._lines:
                    if self._closed:
                        return
                    self._ready.wait()
                if not self._urgent:
                    self._ready.wait(self.delay)  # the batch gathers (a flush or close ends it early)
                lines, dropped, taken = self._lines, self._dropped, self._taken
                self._lines, self._size, self._dropped, self._urgent = [], 0, 0, False
                self._ready.release()
                try:
                    self._put([self._dropped_note(dropped), *lines] if dropped else lines)
                finally:
                    self._ready.acquire()
                self._written, self._stalled = taken, False
                self._done.notify_all()

    def _dropped_note(self, dropped: int) -> str:
        note = logging.LogRecord(
            "token_relay", logging.WARNING, __file__, 0, "%d log lines were dropped: the stream did not take them (a reader stalled)", (dropped,), None,
        )
        return self.format(note)

    def _put(self, lines: list[str]) -> None:
        """Write ``lines``, blocking this thread (the writer's, or the caller's after close) while the stream does not take them."""
        stream = self.stream
        data = "".join(line + "\n" for line in lines)
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file: an io.StringIO, a test's capture
            stream.write(data)
            stream.flush()
            return
        try:
            _write_lines(fd, data.encode(getattr(stream, "encoding", None) or "utf-8", "backslashreplace"))
        except OSError:  # the stream is gone (a closed pipe): nothing can be written to it
            pass


def _write_lines(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` in writes of whole lines, each at most ``PIPE_BUF`` bytes unless a line alone is longer."""
    start, end = 0, len(data)
    while start < end:
        stop = data.rfind(b"\n", start, start + PIPE_BUF) + 1
        if stop <= start:  # a line longer than PIPE_BUF: alone
            stop = data.find(b"\n", start) + 1 or end
        view = memoryview(data)[start:stop]
        while view:
            view = view[os.write(fd, view):]
        start = stop
