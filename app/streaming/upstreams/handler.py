"""The base of every protocol adapter: what they share, so that an adapter is only its protocol's mapping.

An adapter is one class, a subclass of ``SSEStreamHandler`` or ``LinesStreamHandler`` (the
framing of its response), that declares its request (``path``, ``auth``, ``headers``, the
parameters it ``passes``, the name of its ``stop`` sequences), translates the request
(``body``) and maps each event of the response to normalised events (``_on_event``); one
whose stream may end without its end marker says what it finished with (``_last``).

The base owns the rest, the same for every protocol:

- **the request's framing**: ``Content-Type: application/json``, ``Accept`` (the first of the
  response's ``content_types``), ``X-Request-Id``, the API key in the protocol's own header
  (``Authorization: Bearer …``, or Anthropic's ``x-api-key``), the protocol's constant headers;
- **the client's extra parameters** (``GenerationRequest.extra``: what an OpenAI request carries
  beyond the fields the relay reads): a protocol that speaks OpenAI's API passes them all, as
  sent (``passes = None``); any other passes those it ``passes`` under the same name, with the
  value as sent, and leaves out the rest and every ``null`` (a parameter not given). Its
  ``body`` puts them where the protocol wants them (top level, Ollama's ``options``, TGI's
  ``parameters``);
- **``stop``**: OpenAI's string or list, always a list for the other protocols (Ollama, TGI and
  Anthropic take only lists), under the protocol's name (``stop_sequences`` for Anthropic);
  empty, it is not sent;
- **the response**: the status and content type; the body of an error status (up to 64 KiB),
  turned into an ``upstream_status_NNN`` error whose message quotes the model server's own,
  whatever shape it has (OpenAI ``{"error": {"message"}}``, TGI and Ollama ``{"error": "..."}``,
  Anthropic ``{"type": "error", "error": {"type", "message"}}``), and in-band errors (``_failed``);
  the framing, SSE or NDJSON, with the one-event-per-read fast path; JSON that needs repair
  (``_repaired``); the end of the body (``_incomplete`` unless ``_last`` finished);
- **progress**: an error's phase is ``first_token`` until the adapter has emitted an event of
  any kind, and ``stream`` from then on. No adapter sets a flag: until the first event the
  handler's ``_emit`` is a stand-in (``_FirstEvent``) that puts the sink's own emit in its
  place as it passes the event on, so every later event costs the one call it costs anyway;
- **one terminal event**: after ``_end`` the handler ignores everything, whatever the upstream
  does next.

Models do emit broken text: a lone UTF-16 surrogate escape (``"\\ud800"``), or bytes that are not
UTF-8, which msgspec, rightly, refuses. Where JSON from upstream fails to decode,
``decode_repaired`` tries again with each lone surrogate escape, and each byte that is not
UTF-8, read as U+FFFD (as the SSE parser reads such bytes), so one bad token does not end the
stream, and the same bytes read the same however they are split.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import msgspec

from app.errors import UpstreamError, UpstreamStatusError
from app.streaming.events import Error, Event, Finish, UpstreamDetail
from app.streaming.lines import LineSplitter
from app.streaming.request import GenerationRequest
from app.streaming.sse import MAX_LINE, SSEParser, SSETooLarge

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
_encode = msgspec.json.Encoder().encode


def _replace_lone(match: re.Match[bytes]) -> bytes:
    return b"\\ufffd" if match.group(1) else match.group()


def decode_repaired(decode: Callable[[bytes], T], data: bytes | str) -> T | None:
    """``decode(data)`` with its lone surrogate escapes read as U+FFFD; ``None`` if it has none, or is still invalid.

    Bytes that are not UTF-8 are read as U+FFFD too. For after ``decode(data)`` failed: the path of
    every well-formed chunk pays nothing.
    """
    raw = data.encode() if isinstance(data, str) else data
    repaired = _SURROGATE_ESCAPES.sub(_replace_lone, raw if isinstance(data, str) else data.decode("utf-8", "replace").encode())
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


def stop_sequences(stop: Any) -> list[str]:
    """OpenAI's ``stop`` (a string, or a list of them) as a list."""
    if isinstance(stop, str):
        return [stop] if stop else []
    return [sequence for sequence in stop if isinstance(sequence, str) and sequence] if isinstance(stop, list) else []


class _FirstEvent(weakref.ref["StreamHandler"]):
    """A handler's ``_emit`` until its first event: it hands the handler the sink's own emit, then passes the event on.

    It is a weak reference to the handler (one object, as ``weakref.KeyedRef`` is, not a
    stand-in and its reference): a handler dropped before its first event (its client left,
    its request failed) is freed by reference counting, with no cycle for the collector.
    """

    __slots__ = ("_emit",)

    def __new__(cls, handler: StreamHandler, emit: Callable[[Event], None]) -> _FirstEvent:
        return super().__new__(cls, handler)

    def __init__(self, handler: StreamHandler, emit: Callable[[Event], None]) -> None:  # not ref's: ``emit`` is no callback
        self._emit = emit

    def __call__(self, event: Event) -> None:  # type: ignore[override]
        handler = weakref.ref.__call__(self)
        if handler is not None:
            handler._emit = self._emit
        self._emit(event)


class StreamHandler:
    """A protocol: its request (``build_request``), and a ``ResponseHandler`` (app/streaming/upstreams/http1.py) that emits normalised events."""

    __slots__ = ("__weakref__", "_body", "_emit", "_ended", "_flush", "_ok", "_status")

    # The request: its path after the upstream's base URL, the header the API key goes in (and its
    # prefix), the protocol's constant headers, the client's extra parameters it takes under the
    # same name (None: all, as sent), the name its stop sequences go under (None: as sent, in the extras).
    path: ClassVar[str] = ""
    auth: ClassVar[tuple[str, str]] = ("Authorization", "Bearer ")
    headers: ClassVar[tuple[tuple[str, str], ...]] = ()
    passes: ClassVar[tuple[str, ...] | None] = ()
    stop: ClassVar[str | None] = None
    # Whether the protocol can answer ``n > 1`` choices at once.
    choices: ClassVar[bool] = False
    # Whether it takes images in a message (an ``image_url`` part; the Anthropic dialect's ``image`` blocks).
    images: ClassVar[bool] = False
    # The content types of a good streaming response (prefixes); the first is the one asked for.
    content_types: ClassVar[tuple[bytes, ...]] = (b"text/event-stream",)
    # What a body that ends too soon ended before, for its error's message.
    end_marker: ClassVar[str] = "its end"
    # The request's Accept header, from ``content_types``: made once per protocol, not per request.
    _accept: ClassVar[tuple[str, str]] = ("Accept", "text/event-stream")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._accept = ("Accept", cls.content_types[0].decode())

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        self._emit: Callable[[Event], None] = _FirstEvent(self, emit)
        self._flush = flush
        self._status = 0
        self._ok = True
        self._body: bytearray | None = None  # an error status's body
        self._ended = False

    # The request.

    @classmethod
    def build_request(cls, request: GenerationRequest, api_key: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
        """The path (after the upstream's base URL), headers and body of the streaming request for ``request``."""
        headers = [
            ("Content-Type", "application/json"), cls._accept, ("X-Request-Id", request.request_id), *cls.headers,
        ]
        if api_key:
            name, prefix = cls.auth
            headers.append((name, prefix + api_key))
        return cls.path, headers, _encode(cls.body(request, cls.parameters(request)))

    @classmethod
    def parameters(cls, request: GenerationRequest) -> dict[str, Any]:
        """The client's extra parameters this protocol takes, by the rules of the module's docstring (a new dict)."""
        extra = request.extra
        if cls.passes is None:
            return dict(extra)
        taken = {name: extra[name] for name in cls.passes if extra.get(name) is not None}
        if cls.stop is not None and (stop := stop_sequences(extra.get("stop"))):
            taken[cls.stop] = stop
        return taken

    @classmethod
    def body(cls, request: GenerationRequest, parameters: dict[str, Any]) -> Any:
        """The request's body, to be encoded as JSON: ``request`` translated, with ``parameters`` where the protocol takes them."""
        raise NotImplementedError

    # The ResponseHandler.

    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._status = status
        content_type = next((value for name, value in headers if name == b"content-type"), b"")
        self._ok = status == 200 and content_type.startswith(self.content_types)

    def on_body(self, data: bytes) -> None:
        raise NotImplementedError

    def on_end(self) -> None:
        if self._ended:
            return
        body = bytes(self._body or b"")
        if self._status != 200:
            self._end(status_error(body, self._status).event())
        elif not self._ok:
            self._unexpected(body)
        else:
            self._at_end()

    def on_lost(self, exc: Exception) -> None:
        if self._ended:
            return
        if isinstance(exc, UpstreamError):
            self._end(Error(exc.type, exc.code, exc.message, self._phase()))
        else:
            self._end(self._error("upstream_disconnected", f"lost the model server: {exc}"))

    def _keep(self, data: bytes) -> None:
        """Bytes of a response that is not a stream: kept (up to 64 KiB) for its error; after the end, nothing is."""
        if self._ended:
            return
        if self._body is None:
            self._body = bytearray()
        if len(self._body) < MAX_ERROR_BODY:
            self._body += data[: MAX_ERROR_BODY - len(self._body)]

    def _at_end(self) -> None:
        """The body of a good response ended: finished, if ``_last`` says so, else cut short."""
        last = self._last()
        if not self._ended:
            self._end(last if last is not None else self._incomplete(self.end_marker))

    # For the protocols.

    def _on_event(self, data: bytes | str) -> None:
        """One event of the response (an SSE event's data, an NDJSON line): its normalised events to ``_emit``."""
        raise NotImplementedError

    def _last(self) -> Finish | None:
        """How a stream that ended without its end marker finished, if it did."""
        return None

    def _unexpected(self, body: bytes) -> None:
        """A 200 whose content type is not a stream of this protocol."""
        self._end(self._error("upstream_malformed", "the model server did not answer with a stream"))

    def _phase(self) -> str:
        return "first_token" if type(self._emit) is _FirstEvent else "stream"

    def _error(self, code: str, message: str) -> Error:
        return Error("upstream_error", code, message, self._phase())

    def _failed(self, error: ErrorBody | str, code: str | None = None) -> None:
        """An in-band error ends the stream: its code is the model server's own (``code``, else ``type``), else ``code``."""
        if isinstance(error, ErrorBody):
            self._end(self._error(error_code(error), error.message))
        else:
            self._end(self._error(code or "upstream_error", error))

    def _incomplete(self, marker: str) -> Error:
        return self._error("upstream_incomplete", f"the model server ended the stream before {marker}")

    def _malformed(self, what: str, exc: Exception) -> Error:
        return self._error("upstream_malformed", f"malformed {what} from the model server: {exc}")

    def _repaired(self, decode: Callable[[bytes], T], data: bytes | str, what: str, exc: Exception) -> T | None:
        """After ``decode(data)`` failed with ``exc``: its value once repaired (``decode_repaired``), else the end, as malformed."""
        repaired = decode_repaired(decode, data)
        if repaired is None:
            self._end(self._malformed(what, exc))
        return repaired

    def _end(self, event: Finish | Error) -> None:
        self._ended = True
        self._emit(event)


class SSEStreamHandler(StreamHandler):
    """A protocol spoken as Server-Sent Events: the data of its events go to ``_on_event``, one by one."""

    __slots__ = ("_parser",)

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        super().__init__(emit, flush)
        self._parser = SSEParser()

    def on_body(self, data: bytes) -> None:
        # The hot path, written out in full: most reads are one whole ``data:`` event, whose bytes go to the adapter as they are.
        if self._ended or not self._ok:
            self._keep(data)
            return
        single = self._parser.single_data(data)
        if single is not None:
            self._on_event(single)
        else:
            self._feed_lines(data)
        if not self._ended:
            self._flush()

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


class LinesStreamHandler(StreamHandler):
    """A protocol spoken as NDJSON: each line that is not blank goes to ``_on_event``, as bytes; a last line without its LF too."""

    __slots__ = ("_lines",)

    content_types = (b"application/x-ndjson", b"application/json")

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        super().__init__(emit, flush)
        self._lines = LineSplitter(MAX_LINE)

    def on_body(self, data: bytes) -> None:
        if self._ended or not self._ok:
            self._keep(data)
            return
        lines, too_long = self._lines.split(data)
        for line in lines:
            if line.strip():
                self._on_event(line)
                if self._ended:
                    return
        if too_long:
            self._end(self._error("upstream_malformed", f"a line of more than {MAX_LINE} bytes from the model server"))
        else:
            self._flush()

    def _at_end(self) -> None:
        line = self._lines.take()
        if line.strip():
            self._on_event(line)
            if self._ended:
                return
        super()._at_end()
