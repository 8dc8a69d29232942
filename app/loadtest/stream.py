"""One stream of a load test: an asyncio Protocol that reads one SSE response and judges it.

Bytes go through httptools (C) and the relay's own WHATWG SSE parser straight into callbacks,
with no task per stream, so one core reads well over 50k events/s (bench/loadtest_speed.py).

How a stream ends (``outcome``), decided by the first of these to happen:

    ok             a terminal event: native ``event: done``, ``data: [DONE]``, Anthropic's
                   ``message_stop``, the Responses API's ``response.completed`` or ``response.incomplete``
    error          an in-band error: ``event: error`` (native, Anthropic, Responses), the Responses
                   API's ``response.failed``, or a data object with an ``"error"`` member (OpenAI's
                   error chunk); a ``[DONE]`` after it changes nothing
    malformed      a data line that is not the JSON object the API promises, an SSE line or event past the
                   parser's bounds, or HTTP that does not parse
    no_terminal    the body ended, or the connection broke, before any terminal event
    http_status    the status was not 2xx
    connect_error  the connection could not be made (refused, unreachable, connect timeout)
    timeout        no head, no first output, or no next output in time, or the stream outlived its limit
                   (output: content, reasoning, a refusal or a tool call's fragments; a model that reasons,
                   or writes a call, for longer than the first-token timeout is not cut off)
    closed, cut    neither success nor failure: the tester closed it itself (after K content
                   events, or because the run's duration was over)

After ``ok`` or ``error`` the stream still reads to the end of the body, so that the server
sees a normal end rather than a client that left; then the connection is closed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol, cast

import httptools
import msgspec

from app.loadtest.target import Target
from app.streaming.sse import SSEEvent, SSEParser, SSETooLarge

OK = "ok"
ERROR = "error"
MALFORMED = "malformed"
NO_TERMINAL = "no_terminal"
HTTP_STATUS = "http_status"
CONNECT_ERROR = "connect_error"
TIMEOUT = "timeout"
CLOSED = "closed"
CUT = "cut"
OUTCOMES = (OK, ERROR, MALFORMED, NO_TERMINAL, HTTP_STATUS, CONNECT_ERROR, TIMEOUT, CLOSED, CUT)
FAILURES = frozenset({ERROR, MALFORMED, NO_TERMINAL, HTTP_STATUS, CONNECT_ERROR, TIMEOUT})
_DETAIL = 300  # characters of an error body or event kept for the report
# The bound on an SSE line, and on an event's data. Far above a model server's bounds in the relay
# (1 MiB, 4 MiB): the relay's own events are larger (a resumable stream logs what one read of its
# model server brought as one event, megabytes from a fast one), and a browser has no bound at all.
MAX_EVENT_BYTES = 64 * 1024 * 1024


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _Usage(msgspec.Struct):
    completion_tokens: int | None = None
    output_tokens: int | None = None  # Anthropic's and the Responses API's name

    @property
    def generated(self) -> int | None:
        return self.completion_tokens if self.completion_tokens is not None else self.output_tokens


class _BlockDelta(msgspec.Struct):
    text: str | None = None  # a text_delta's (other kinds of block delta carry no content text)


class _Response(msgspec.Struct):
    usage: _Usage | None = None


class _Data(msgspec.Struct):
    """The members of an event's data that the tester reads, whichever API sent it."""

    choices: list[_Choice] | None = None
    error: Any = None
    usage: _Usage | None = None
    text: str | None = None
    # Anthropic's content_block_delta (``delta.text``) and the Responses API's output_text.delta (``delta``, a string)
    delta: _BlockDelta | str | None = None
    response: _Response | None = None  # the Responses API's final events


_decode = msgspec.json.Decoder(_Data).decode


class _Output(msgspec.Struct):
    """A chat chunk's output that is not content: it keeps a stream from timing out, and is not counted as content."""

    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: Any = None  # not read: that there is one is enough


class _OutputChoice(msgspec.Struct):
    delta: _Output | None = None


class _OutputData(msgspec.Struct):
    choices: list[_OutputChoice] | None = None


# Read only of a chunk without content (a text stream has two: its role and its finish), so that text costs nothing more.
_decode_output = msgspec.json.Decoder(_OutputData).decode


def _other_output(data: str) -> bool:
    choices = _decode_output(data).choices
    delta = choices[0].delta if choices else None
    return delta is not None and bool(delta.reasoning_content or delta.reasoning or delta.refusal or delta.tool_calls)


# Named events that are not output: what a server sends before the model says anything, and Anthropic's heartbeat.
# Every other event this tester does not read as content or an end is output (reasoning, a tool call, a refusal).
_NOT_OUTPUT = frozenset({"ping", "message_start", "response.created", "response.in_progress"})


class Sink(Protocol):
    """Where a stream reports: the runner."""

    def on_content(self, stream: Stream, now: float, gap: float, text: str) -> None:
        """A content event; ``gap`` is the time since the stream's previous one (-1 for its first)."""


    def on_finish(self, stream: Stream) -> None: ...


class Stream(asyncio.Protocol):
    __slots__ = (
        "_parser", "_sink", "_sse", "_transport", "active", "api", "bytes", "close_after", "content", "content_type", "detail",
        "events", "index", "last", "local_port", "max_gap", "outcome", "request_id", "status", "t_end", "t_first", "t_head", "t_request",
        "t_start", "target", "terminal", "usage_tokens",
    )

    def __init__(self, sink: Sink, target: Target, index: int, request_id: str | None = None, close_after: int = -1) -> None:
        self._sink = sink
        self.target = target
        self.api = target.api
        self.index = index
        self.request_id = request_id
        self.close_after = close_after
        self._transport: asyncio.Transport | None = None
        self.local_port: int | None = None  # to find the connection in a capture or a server's log
        self._parser = httptools.HttpResponseParser(self)
        self._sse = SSEParser(max_line=MAX_EVENT_BYTES, max_event=MAX_EVENT_BYTES)
        self.status = 0
        self.content_type = ""
        self.outcome = ""  # one of OUTCOMES once decided
        self.terminal = False  # the stream is over for the tester: outcome decided and connection closed
        self.detail = ""
        self.events = 0
        self.content = 0  # events carrying text
        self.usage_tokens: int | None = None  # completion tokens, when the stream reported its usage
        self.bytes = 0
        self.max_gap = 0.0
        self.t_start = time.monotonic()
        self.t_request = 0.0
        self.t_head = 0.0
        self.t_first = 0.0
        self.last = 0.0
        self.active = 0.0  # the latest output of any kind (content too): what the first-token and idle timeouts watch
        self.t_end = 0.0

    @property
    def tokens(self) -> int:
        """Completion tokens as the stream reported them in its usage, else its content events."""
        return self.usage_tokens if self.usage_tokens is not None else self.content

    @property
    def ttft(self) -> float | None:
        """Seconds from the request's write to the first content event."""
        return self.t_first - self.t_request if self.t_first else None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self.terminal:  # the run gave up on it while it connected
            transport.close()
            return
        sockname = transport.get_extra_info("sockname")
        self.local_port = sockname[1] if isinstance(sockname, tuple) else None
        self.t_request = time.monotonic()
        self._transport.write(self.target.request(self.request_id))

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.finish(NO_TERMINAL, "the server switched protocols")
        except httptools.HttpParserError as exc:
            self.finish(MALFORMED, f"malformed HTTP: {exc}")

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.terminal:  # an outcome decided already (a terminal event seen) stands
            self.finish(NO_TERMINAL, f"connection lost: {exc}" if exc else "the server closed the connection before the end")

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.t_head = time.monotonic()
        if not 200 <= self.status < 300:
            self.outcome = HTTP_STATUS
            self.detail = f"HTTP {self.status}: "
            self.t_end = self.t_head

    def on_body(self, body: bytes) -> None:
        if self.outcome == HTTP_STATUS:
            if len(self.detail) < _DETAIL:
                self.detail = (self.detail + body.decode("utf-8", "replace"))[:_DETAIL]
            return
        now = time.monotonic()
        try:
            events = self._sse.feed(body)
        except SSETooLarge as exc:
            self._decide(MALFORMED, str(exc))
            return
        for event in events:
            self.events += 1
            if event.event == "message":
                self._message(event, now)
            elif event.event == "token":
                self._token(event, now)
            elif event.event == "done":
                self._usage(event.data)
                self._decide(OK, "")
            elif event.event == "error" or event.event == "response.failed":
                self._decide(ERROR, event.data)
            elif event.event == "content_block_delta" or event.event == "response.output_text.delta":
                self._delta(event, now)
            elif event.event == "message_delta" or event.event == "response.completed" or event.event == "response.incomplete":
                self._usage(event.data)
                if event.event != "message_delta":
                    self._decide(OK, "")
            elif event.event == "message_stop":
                self._decide(OK, "")
            elif event.event not in _NOT_OUTPUT and not self.outcome:
                self.active = now
            if self.terminal:
                return

    def on_message_complete(self) -> None:
        if self.outcome:
            self.finish(self.outcome, self.detail)
        else:
            kind = self.content_type.partition(";")[0].strip() or "none"
            self.finish(NO_TERMINAL, "the body ended without a terminal event" + ("" if kind == "text/event-stream" else f" (content-type {kind})"))

    # events

    def _message(self, event: SSEEvent, now: float) -> None:
        if self.outcome:
            return  # decided: what follows (the [DONE] after an error chunk) changes nothing
        data = event.data
        if data[:1] == "{":
            try:
                decoded = _decode(data)
            except msgspec.DecodeError:
                if self.api == "eventsource":
                    self._content(data, now)
                else:
                    self._decide(MALFORMED, data)
                return
            if decoded.error is not None:
                self._decide(ERROR, data)
                return
            if decoded.usage is not None and decoded.usage.completion_tokens is not None:
                self.usage_tokens = decoded.usage.completion_tokens
            if decoded.choices:
                choice = decoded.choices[0]
                delta = choice.delta
                text = delta.content if delta is not None else choice.text
                if text:
                    self._content(text, now)
                elif delta is not None and _other_output(data):
                    self.active = now
            elif decoded.text:
                self._content(decoded.text, now)
        elif data == "[DONE]":
            self._decide(OK, "")
        elif self.api == "eventsource":
            self._content(data, now)
        else:
            self._decide(MALFORMED, data)

    def _token(self, event: SSEEvent, now: float) -> None:
        try:
            text = _decode(event.data).text
        except msgspec.DecodeError:
            self._decide(MALFORMED, event.data)
            return
        self._content(text or "", now)

    def _delta(self, event: SSEEvent, now: float) -> None:
        """Anthropic's ``content_block_delta`` or the Responses API's ``response.output_text.delta``: content when it is text."""
        try:
            delta = _decode(event.data).delta
        except msgspec.DecodeError:
            self._decide(MALFORMED, event.data)
            return
        text = delta if isinstance(delta, str) else delta.text if delta is not None else None
        if text:
            self._content(text, now)
        elif not self.outcome:
            self.active = now  # thinking, a signature, a tool's input

    def _usage(self, data: str) -> None:
        try:
            decoded = _decode(data)
        except msgspec.DecodeError:
            return  # a done event need not carry usage
        usage = decoded.usage if decoded.usage is not None else decoded.response.usage if decoded.response is not None else None
        if usage is not None and usage.generated is not None:
            self.usage_tokens = usage.generated

    def _content(self, text: str, now: float) -> None:
        if self.outcome:
            return  # after an error or a terminal event, text is not counted
        self.content += 1
        if self.t_first:
            gap = now - self.last
            if gap > self.max_gap:
                self.max_gap = gap
        else:
            self.t_first = now
            gap = -1.0
        self.last = self.active = now
        self._sink.on_content(self, now, gap, text)
        if self.content == self.close_after:
            self.finish(CLOSED)

    def _decide(self, outcome: str, detail: str) -> None:
        if not self.outcome:
            self.outcome = outcome
            self.detail = detail[:_DETAIL]
            self.t_end = time.monotonic()

    # ending

    def overdue(self, now: float, head: float, first: float, idle: float, total: float) -> str | None:
        """Which limit this stream has passed, if any (each in seconds; 0 for none)."""
        if self.outcome or not self.t_request:
            return None  # decided already, or still connecting (the connect timeout covers that)
        if total and now - self.t_request > total:
            return f"the stream took longer than {total:g} s"
        if not self.status:
            return f"no response head within {head:g} s" if head and now - self.t_request > head else None
        if not self.active:  # output of any kind: a reasoning model may think for minutes before its first content
            return f"no first token within {first:g} s" if first and now - self.t_request > first else None
        return f"no token for {idle:g} s" if idle and now - self.active > idle else None

    def finish(self, outcome: str, detail: str = "") -> None:
        """Settle the outcome (the first one decided wins), close the connection, tell the sink."""
        if self.terminal:
            return
        self._decide(outcome, detail)
        self.terminal = True
        if self._transport is not None:
            self._transport.close()
        self._sink.on_finish(self)

    def record(self, t0: float) -> dict[str, Any]:
        """This stream as JSON-able data; times in seconds from ``t0``, the run's start."""
        def since(t: float) -> float | None:
            return t - t0 if t else None

        return {
            "index": self.index, "request_id": self.request_id, "url": self.target.url, "status": self.status or None,
            "outcome": self.outcome, "detail": self.detail or None, "ttft_s": self.ttft, "max_gap_s": self.max_gap if self.content > 1 else None,
            "events": self.events, "content_events": self.content, "tokens": self.tokens, "bytes": self.bytes,
            "start_s": since(self.t_start), "head_s": since(self.t_head), "first_s": since(self.t_first), "end_s": since(self.t_end),
            "local_port": self.local_port,
        }
