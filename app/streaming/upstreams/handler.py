"""What every protocol's response handler shares: status, error bodies, phases, one terminal event.

A protocol adapter subclasses ``StreamHandler`` and implements ``_feed`` (bytes of a good
streaming response) and ``_at_end`` (the body ended: finished, or cut short). The base
class keeps the body of an error status (up to 64 KiB) and turns it into an
``upstream_status_NNN`` error whose message quotes the model server's own, whatever shape
it has: OpenAI ``{"error": {"message"}}``, TGI and Ollama ``{"error": "..."}``, Anthropic
``{"type": "error", "error": {"type", "message"}}``.

After the terminal event (``_end``) the handler ignores everything: one terminal event,
whatever the upstream does next.

Models do emit broken escapes: a lone UTF-16 surrogate (``"\\ud800"``) that msgspec, rightly,
refuses. Where JSON from upstream fails to decode, ``decode_repaired`` tries again with each
lone surrogate escape read as U+FFFD, so one bad token does not end the stream.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import msgspec

from app.errors import UpstreamError, UpstreamStatusError
from app.streaming.events import Error, Event, Finish, UpstreamDetail
from app.streaming.sse import SSEParser, SSETooLarge

MAX_ERROR_BODY = 65_536
T = TypeVar("T")

# Scanned from the left, an escaped backslash is consumed whole (so ``\\ud800`` stays text), a
# valid pair is kept, and what is left of the surrogate escapes is lone (the group).
_SURROGATE_ESCAPES = re.compile(
    rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})"
)


class ErrorBody(msgspec.Struct):
    message: str = "the model server reported an error"
    type: str | None = None
    code: str | int | None = None
    param: str | int | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody | str | None = None


_decode_envelope = msgspec.json.Decoder(ErrorEnvelope).decode


def _replace_lone(match: re.Match[bytes]) -> bytes:
    return b"\\ufffd" if match.group(1) else match.group()


def decode_repaired(decode: Callable[[bytes], T], data: bytes | str) -> T | None:
    """``decode(data)`` with its lone surrogate escapes read as U+FFFD; ``None`` if it has none, or is still invalid.

    For after ``decode(data)`` failed: the path of every well-formed chunk pays nothing.
    """
    raw = data.encode() if isinstance(data, str) else data
    repaired = _SURROGATE_ESCAPES.sub(_replace_lone, raw)
    if repaired == raw:
        return None
    try:
        return decode(repaired)
    except msgspec.DecodeError:
        return None


def error_code(error: ErrorBody) -> str:
    """The model server's own code for an in-band error: its ``code``, else its ``type``."""
    return str(error.code) if error.code is not None else (error.type or "upstream_error")


def status_error(body: bytes, status: int) -> UpstreamStatusError:
    """The error of an error status: a message in one line, and what the model server said, in its own terms."""
    try:
        envelope: ErrorEnvelope | None = _decode_envelope(body)
    except msgspec.DecodeError:
        envelope = decode_repaired(_decode_envelope, body)
    answered = f"the model server answered {status}"
    if envelope is None:
        text = " ".join(body.decode("utf-8", "replace").split())[:500]
        return UpstreamStatusError(status, answered + (f": {text}" if text else ""), UpstreamDetail(text) if text else None)
    error = envelope.error
    if isinstance(error, ErrorBody):
        detail = UpstreamDetail(
            error.message, error.type, None if error.code is None else str(error.code), None if error.param is None else str(error.param),
        )
        return UpstreamStatusError(status, f"{answered}: {error.message}", detail)
    if isinstance(error, str):
        return UpstreamStatusError(status, f"{answered}: {error}", UpstreamDetail(error))
    return UpstreamStatusError(status, answered)


class StreamHandler:
    """A ``ResponseHandler`` (app/streaming/upstreams/http1.py) that emits normalised events."""

    __slots__ = ("_body", "_emit", "_ended", "_flush", "_ok", "_status", "_tokens")

    # The content types of a good streaming response (prefixes).
    content_types: tuple[bytes, ...] = (b"text/event-stream",)

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        self._emit = emit
        self._flush = flush
        self._status = 0
        self._ok = True
        self._body = bytearray()
        self._tokens = False
        self._ended = False

    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._status = status
        content_type = next((value for name, value in headers if name == b"content-type"), b"")
        self._ok = status == 200 and content_type.startswith(self.content_types)

    def on_body(self, data: bytes) -> None:
        if self._ended:
            return
        if not self._ok:
            if len(self._body) < MAX_ERROR_BODY:
                self._body += data[: MAX_ERROR_BODY - len(self._body)]
            return
        self._feed(data)
        if not self._ended:
            self._flush()

    def on_end(self) -> None:
        if self._ended:
            return
        if self._status != 200:
            self._end(status_error(bytes(self._body), self._status).event())
        elif not self._ok:
            self._unexpected(bytes(self._body))
        else:
            self._at_end()

    def on_lost(self, exc: Exception) -> None:
        if self._ended:
            return
        if isinstance(exc, UpstreamError):
            self._end(Error(exc.type, exc.code, exc.message, self._phase()))
        else:
            self._end(self._error("upstream_disconnected", f"lost the model server: {exc}"))

    # For the protocols.

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _at_end(self) -> None:
        raise NotImplementedError

    def _unexpected(self, body: bytes) -> None:
        """A 200 whose content type is not a stream of this protocol."""
        self._end(self._error("upstream_malformed", "the model server did not answer with a stream"))

    def _phase(self) -> str:
        return "stream" if self._tokens else "first_token"

    def _error(self, code: str, message: str) -> Error:
        return Error("upstream_error", code, message, self._phase())

    def _incomplete(self, marker: str) -> Error:
        return self._error("upstream_incomplete", f"the model server ended the stream before {marker}")

    def _malformed(self, what: str, exc: Exception) -> Error:
        return self._error("upstream_malformed", f"malformed {what} from the model server: {exc}")

    def _end(self, event: Finish | Error) -> None:
        self._ended = True
        self._emit(event)


class SSEStreamHandler(StreamHandler):
    """A protocol spoken as Server-Sent Events: its events' data go to ``_on_event``, one by one."""

    __slots__ = ("_parser",)

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        super().__init__(emit, flush)
        self._parser = SSEParser()

    def _feed(self, data: bytes) -> None:
        single = self._parser.single_data(data)
        if single is not None:
            self._on_event(single.decode("utf-8", "replace"))
        else:
            self._feed_lines(data)

    def _feed_lines(self, data: bytes) -> None:
        """Each event of ``data`` (which ``single_data`` declined) to ``_on_event``; past the parser's bounds, the end."""
        too_large: SSETooLarge | None = None
        try:
            events = self._parser.feed_lines(data)
        except SSETooLarge as exc:
            events, too_large = exc.events, exc
        for event in events:
            self._on_event(event.data)
            if self._ended:
                return
        if too_large is not None:
            self._end(self._error("upstream_malformed", f"{too_large} from the model server"))

    def _on_event(self, data: str) -> None:
        raise NotImplementedError
