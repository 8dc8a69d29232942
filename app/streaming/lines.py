"""Bounded, linear splitting of a byte stream into LF-terminated lines, for the line-based protocols (SSE, NDJSON).

Only the new bytes of each chunk are searched for line ends. The pieces of a line that
spans chunks are kept apart and joined once, when its end comes: a long line costs what
its bytes cost, however thinly the peer slices it, and never more than ``max_line``
bytes (plus one chunk) are held for it.
"""

from __future__ import annotations


class LineSplitter:
    __slots__ = ("_max_line", "_size", "pieces")

    def __init__(self, max_line: int) -> None:
        self._max_line = max_line
        self.pieces: list[bytes] = []  # of the line whose end has not come yet: empty at a line start
        self._size = 0

    def split(self, data: bytes) -> tuple[list[bytes], bool]:
        """The lines ``data`` completes, without their LF, and whether a line is longer than ``max_line``.

        Past the bound, the lines are those before the long one, and nothing is kept.
        """
        lines = data.split(b"\n")
        rest = lines.pop()
        pieces = self.pieces
        if lines:
            long = self._size + len(data) > self._max_line  # else no line here can be over the bound
            if pieces:
                pieces.append(lines[0])
                lines[0] = b"".join(pieces)
                pieces.clear()
                self._size = 0
            if long:
                for index, line in enumerate(lines):
                    if len(line) > self._max_line:
                        return lines[:index], True
        if rest:
            pieces.append(rest)
            self._size += len(rest)
            if self._size > self._max_line:
                self.clear()
                return lines, True
        return lines, False

    def take(self) -> bytes:
        """The pending line, at the end of the stream (a last line without its LF)."""
        line = b"".join(self.pieces)
        self.clear()
        return line

    def clear(self) -> None:
        self.pieces.clear()
        self._size = 0
