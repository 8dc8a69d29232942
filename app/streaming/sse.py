"""Server-Sent Events on the wire: an incremental parser (WHATWG rules) and constant frames.

The parser takes bytes in chunks split anywhere (inside a UTF-8 character, between CR and
LF) and returns the events completed so far. Lines end in CR, LF or CRLF and nothing else;
a leading BOM is dropped; comments are ignored; several ``data`` lines join with LF; an
``id`` containing NUL is ignored; ``retry`` is taken only when it is all ASCII digits; an
event is dispatched at a blank line, and only if it has data; a trailing block without a
blank line is never dispatched.

The parser is bounded and linear in its input: a line longer than ``max_line`` bytes, or
an event whose data lines add up to more than ``max_event`` bytes, raises ``SSETooLarge``;
the pieces of a line split across chunks are kept apart and joined once, when its end comes,
so a long line costs what its bytes cost however thinly it is sliced.

``last_event_id`` and ``reconnection_time`` are the stream's state, as WHATWG defines them:
an ``id`` or ``retry`` line takes effect even in a block that dispatches nothing. Each
event also carries the ``retry`` given in its own block, if any.
"""

from __future__ import annotations

from typing import NoReturn

from app.streaming.lines import LineSplitter

HEARTBEAT = b": ping\n\n"
BOM = b"\xef\xbb\xbf"
# A model server's event is one JSON chunk on one line, a few hundred bytes. The bounds leave room
# for a whole answer in one event (TGI's last one repeats the generated text) and stop a peer that
# never ends its line, or its event, from holding more: MAX_LINE is the Ollama adapter's bound on
# an NDJSON line, MAX_EVENT the default cap on a resumable stream's log and on a collected answer.
MAX_LINE = 1_048_576
MAX_EVENT = 4_194_304


class SSEEvent:
    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, event: str, data: str, id: str, retry: int | None) -> None:
        self.event = event
        self.data = data
        self.id = id
        self.retry = retry

    def __repr__(self) -> str:
        return f"SSEEvent(event={self.event!r}, data={self.data!r}, id={self.id!r}, retry={self.retry!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SSEEvent):
            return NotImplemented
        return (self.event, self.data, self.id, self.retry) == (other.event, other.data, other.id, other.retry)


class SSETooLarge(Exception):
    """A line or an event passed the parser's bound; ``events`` were completed before it, in the same chunk."""

    def __init__(self, message: str, events: list[SSEEvent]) -> None:
        super().__init__(message)
        self.events = events


class SSEParser:
    """Feed bytes, get the completed events; ``last_event_id`` persists across events.

    ``feed`` and ``feed_lines`` raise ``SSETooLarge`` past ``max_line`` or ``max_event``
    bytes, and the parser drops what it was holding.
    """

    __slots__ = (
        "_bom", "_data", "_event", "_lines", "_max_event", "_max_line", "_retry", "_size", "_skip_lf", "_started", "_tail",
        "last_event_id", "reconnection_time",
    )

    def __init__(self, max_line: int = MAX_LINE, max_event: int = MAX_EVENT) -> None:
        self._max_line = max_line
        self._max_event = max_event
        self._lines = LineSplitter(max_line)
        self._tail = self._lines.pieces  # the pending line's pieces, looked at by the fast path
        self._bom = b""  # before the start: the first bytes of what may be a BOM
        self._started = False
        self._skip_lf = False
        self._data: list[str] = []
        self._size = 0  # bytes of the pending event's data lines
        self._event = ""
        self._retry: int | None = None
        self.last_event_id = ""
        self.reconnection_time: int | None = None

    def single_data(self, chunk: bytes) -> bytes | None:
        """The data of ``chunk`` if it is exactly one whole ``data: …`` event and nothing is pending.

        The usual chunk from a model server; for anything else this returns ``None``, and
        ``feed`` does the general work. It checks no bound: a chunk is one read from the
        model server's socket (at most 256 KiB under uvloop), shorter than any line bound.
        """
        if (
            chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") and self._started and not self._tail and not self._skip_lf
            and not self._data and not self._event and self._retry is None and chunk.find(b"\n") == len(chunk) - 2 and b"\r" not in chunk
        ):
            return chunk[6:-2]
        return None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        data = self.single_data(chunk)
        if data is not None:
            return [SSEEvent("message", data.decode("utf-8", "replace"), self.last_event_id, None)]
        return self.feed_lines(chunk)

    def feed_lines(self, chunk: bytes) -> list[SSEEvent]:
        """``feed`` without the one-event fast path: for a caller that has just tried ``single_data``."""
        if not chunk:  # nothing: it must not end a pending CR's wait for its LF
            return []
        if not self._started:
            chunk = self._bom + chunk
            if len(chunk) < 3 and BOM.startswith(chunk):
                self._bom = chunk
                return []
            self._bom = b""
            self._started = True
            if chunk.startswith(BOM):
                chunk = chunk[3:]
        if self._skip_lf:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            # A CR at the very end may be the first half of a CRLF split across chunks.
            if chunk.endswith(b"\r"):
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines, too_long = self._lines.split(chunk)
        events: list[SSEEvent] = []
        for raw in lines:
            self._line(raw, events)
        if too_long:
            self._overflow(f"an SSE line of more than {self._max_line} bytes", events)
        return events

    def _overflow(self, what: str, events: list[SSEEvent]) -> NoReturn:
        self._lines.clear()
        self._data = []
        self._size = 0
        raise SSETooLarge(what, events)

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                events.append(SSEEvent(self._event or "message", "\n".join(self._data), self.last_event_id, self._retry))
            self._data = []
            self._size = 0
            self._event = ""
            self._retry = None
            return
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._size += len(raw)
            if self._size > self._max_event:
                self._overflow(f"an SSE event with more than {self._max_event} bytes of data", events)
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = self.reconnection_time = int(value)
