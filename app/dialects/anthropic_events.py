"""Normalised events as Anthropic's Messages API writes them: the stream's named events, or one ``message``.

A stream is ``message_start``, then content blocks one after the other, each
``content_block_start``, ``content_block_delta``\\ s and ``content_block_stop``: ``text``
(``text_delta``; a refusal's text too), ``thinking`` (``thinking_delta``, then the
``signature_delta`` that closes it), ``redacted_thinking`` (whole in its start) and ``tool_use``
(its id and name in the start, ``input: {}``, then ``input_json_delta``\\ s); then
``message_delta`` (``stop_reason``, the usage) and ``message_stop``. A failure is one
``error`` event, the last. The heartbeat is ``event: ping``.

Parts are taken in their order, so a text after a call is a block of its own. A batch that
piled up for a lagging client goes out as one delta per block, whatever it held. Blocks never
overlap, though an upstream may interleave parallel calls' fragments (OpenAI's servers do):
while the open call's arguments are not yet a whole JSON value, another call's fragments are
held (up to ``limit`` characters, RELAY_MAX_COLLECTED_BYTES: past it the stream ends with
``response_too_large``), and its block follows once the open one ends.

Logprobs have no place in this API and are not sent. ``usage.input_tokens`` in ``message_start``
is the upstream's count when it came before the content (0 until then: that event's counts are
provisional in this API); ``message_delta`` carries the final counts, ``null`` where unknown.
"""

from __future__ import annotations

from typing import Any, assert_never

import msgspec

from app.dialects.anthropic import ERROR_TYPES, error_envelope
from app.streaming.encoders import Collected
from app.streaming.events import Delta, Error, Finish, Logprobs, Part, Reasoning, RedactedReasoning, Refusal, Terminal, ToolCall, Usage
from app.streaming.message import Choice

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use", "content_filter": "refusal"}
# The open block's kind: text, thinking, or a tool call's index (0 and up).
TEXT, THINKING = -1, -2
_DELTA_KINDS = {TEXT: (b"text_delta", b"text"), THINKING: (b"thinking_delta", b"thinking")}
_INPUT = (b"input_json_delta", b"partial_json")


def sse(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


def usage_body(usage: Usage | None) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` without the cached input (read, written), which it counts apart."""
    if usage is None:
        return {"input_tokens": None, "output_tokens": None}
    details = usage.prompt_tokens_details
    read = details.cached_tokens if details is not None else None
    written = details.cache_write_tokens if details is not None else None
    prompt = usage.prompt_tokens
    body: dict[str, Any] = {
        "input_tokens": prompt - (read or 0) - (written or 0) if prompt is not None else None, "output_tokens": usage.completion_tokens,
    }
    if read is not None:
        body["cache_read_input_tokens"] = read
    if written is not None:
        body["cache_creation_input_tokens"] = written
    return body


def stop_reason(finish: Finish) -> str:
    if finish.stop_sequence is not None:
        return "stop_sequence"
    return STOP_REASONS.get(finish.reason, finish.reason)


def stream_error(error: Error) -> bytes:
    """The stream's one terminal ``error`` event: Anthropic's shape, with the relay's ``code`` and ``phase``."""
    return sse(b"error", _encode(error_envelope(error_type(error), error.message, code=error.code, phase=error.phase)))


def error_type(error: Error) -> str:
    """The Messages API's type for a failure: an Anthropic upstream's own (``overloaded_error``…), else by its cause."""
    if error.code in ERROR_TYPES.values():
        return error.code
    if error.status is not None and error.status in ERROR_TYPES:
        return ERROR_TYPES[error.status]
    if error.type == "timeout":
        return "timeout_error"
    return "overloaded_error" if error.code in ("shutting_down", "upstream_unavailable") else "api_error"


class _JsonEnd:
    """Whether the JSON text fed so far is one whole value (an object or an array): its brackets closed, outside strings."""

    __slots__ = ("_depth", "_escaped", "_opened", "_string")

    def __init__(self) -> None:
        self._depth = 0
        self._opened = self._string = self._escaped = False

    def feed(self, text: str) -> None:
        for char in text:
            if self._string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._string = False
            elif char == '"':
                self._string = True
            elif char in "{[":
                self._depth += 1
                self._opened = True
            elif char in "}]":
                self._depth -= 1

    @property
    def complete(self) -> bool:
        return self._opened and self._depth <= 0 and not self._string


class _Call:
    __slots__ = ("block", "held", "id", "name")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.block: int | None = None  # its content block's index, once started
        self.held: list[str] = []


class MessageEvents:
    """The stream encoder (``StreamEncoder``) of the Messages API: see the module's docstring."""

    heartbeat = PING

    def __init__(self, message_id: str, model: str, limit: int) -> None:
        """``limit``: the characters of calls' fragments it may hold back until their blocks open; past it, ``full``."""
        self.full = False
        self._room = limit
        self._id = message_id
        self._model = model
        self._started = False
        self._next = 0  # the next block's index
        self._open: int | None = None  # TEXT, THINKING, a call's index, or None
        self._buffer: list[str] = []  # the open block's text not yet written
        self._calls: dict[int, _Call] = {}
        self._json = _JsonEnd()  # of the open call's arguments
        self._usage: Usage | None = None
        self._text_delta = b""  # the open text block's delta, up to its text

    def delta(self, text: str) -> bytes:
        if self._open == TEXT and not self._buffer:  # the usual event: one JSON string between constant bytes
            return self._text_delta + _encode(text) + b"}}\n\n"
        out = bytearray(self._begin(None))
        self._to(TEXT, out)
        self._buffer.append(text)
        self._write(out)
        return bytes(out)

    def encode(self, events: list[Part]) -> bytes:
        usage = next((part for part in reversed(events) if type(part) is Usage), None)
        if usage is not None:
            self._usage = usage
        out = bytearray(self._begin(usage))
        for part in events:
            match part:
                case Delta() | Refusal():
                    self._to(TEXT, out)
                    self._buffer.append(part.text)
                case Reasoning():
                    self._to(THINKING, out)
                    self._buffer.append(part.text)
                    if part.signature is not None:
                        self._write(out)
                        out += self._delta(self._next - 1, (b"signature_delta", b"signature"), part.signature)
                        self._close(out)
                case RedactedReasoning():
                    self._close_all(out)
                    out += self._start({"type": "redacted_thinking", "data": part.data}) + self._stop(self._next - 1)
                case ToolCall():
                    self._call(part, out)
                case Logprobs() | Usage():
                    pass
                case _:
                    assert_never(part)
        self._write(out)
        return bytes(out)

    def terminal(self, event: Terminal) -> bytes:
        match event:
            case Error():
                out = bytearray()
                if self._started:
                    self._close_all(out)
                return bytes(out) + stream_error(event)
            case Finish():
                out = bytearray(self._begin(None))
                self._close_all(out)
                delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason(event), "stop_sequence": event.stop_sequence},
                         "usage": usage_body(self._usage)}
                out += sse(b"message_delta", _encode(delta)) + sse(b"message_stop", b'{"type":"message_stop"}')
                return bytes(out)
            case _:
                assert_never(event)

    def _begin(self, usage: Usage | None) -> bytes:
        """``message_start``, once, before anything else."""
        if self._started:
            return b""
        self._started = True
        counts = usage_body(usage) if usage is not None else {}
        start_usage = {key: value or 0 for key, value in counts.items()} | {"output_tokens": 0}
        start_usage.setdefault("input_tokens", 0)
        message: dict[str, Any] = {"id": self._id, "type": "message", "role": "assistant", "model": self._model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": start_usage}
        return sse(b"message_start", _encode({"type": "message_start", "message": message}))

    def _call(self, part: ToolCall, out: bytearray) -> None:
        call = self._calls.get(part.index)
        if call is None:
            call = self._calls[part.index] = _Call()
        call.id = call.id or part.id
        call.name = call.name or part.name
        if self._open == part.index:
            self._buffer.append(part.arguments)
            self._json.feed(part.arguments)
        elif call.block is not None:
            # A fragment for a call whose block has ended (another kind of block came between): to its block, not dropped.
            self._write(out)
            if part.arguments:
                out += self._delta(call.block, _INPUT, part.arguments)
        elif self._open is not None and self._open >= 0 and not self._json.complete:
            self._room -= len(part.arguments)
            if self._room < 0:  # a model server's fragments are not bounded by its tokens: let them go, and end the stream
                self.full = True
                for held in self._calls.values():
                    held.held = []
                return
            call.held.append(part.arguments)
        else:
            self._to(part.index, out)
            self._buffer.append(part.arguments)
            self._json.feed(part.arguments)

    def _to(self, key: int, out: bytearray) -> None:
        """Make ``key`` the open block: end the open one (and let held calls have their blocks), then start it."""
        while self._open is not None and self._open != key:
            self._close(out)
        if self._open != key:
            self._open_block(key, out)

    def _open_block(self, key: int, out: bytearray) -> None:
        if key == TEXT:
            self._text_delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":' % self._next
            out += self._start({"type": "text", "text": ""})
        elif key == THINKING:
            out += self._start({"type": "thinking", "thinking": "", "signature": ""})
        else:
            call = self._calls[key]
            call.block = self._next
            out += self._start({"type": "tool_use", "id": call.id or f"toolu_{self._id}_{key}", "name": call.name or "", "input": {}})
            self._json = _JsonEnd()
            for fragment in call.held:
                self._json.feed(fragment)
            self._buffer, call.held = call.held, []
        self._open = key

    def _close(self, out: bytearray) -> None:
        """End the open block; then the first call held back, if any, has its block opened."""
        if self._open is None:
            return
        self._write(out)
        out += self._stop(self._next - 1)
        self._open = None
        held = next((index for index, call in sorted(self._calls.items()) if call.block is None and call.held), None)
        if held is not None:
            self._open_block(held, out)

    def _close_all(self, out: bytearray) -> None:
        while self._open is not None:
            self._close(out)
        # Calls that never had a fragment past their id and name still get their block, with input {}.
        for index, call in sorted(self._calls.items()):
            if call.block is None:
                self._open_block(index, out)
                self._close(out)

    def _write(self, out: bytearray) -> None:
        """The open block's buffered text as one delta."""
        text = "".join(self._buffer)
        self._buffer = []
        if text and self._open is not None:
            out += self._delta(self._next - 1, _DELTA_KINDS.get(self._open, _INPUT), text)

    def _start(self, block: dict[str, Any]) -> bytes:
        index = self._next
        self._next += 1
        return sse(b"content_block_start", _encode({"type": "content_block_start", "index": index, "content_block": block}))

    @staticmethod
    def _stop(index: int) -> bytes:
        return sse(b"content_block_stop", b'{"type":"content_block_stop","index":%d}' % index)

    @staticmethod
    def _delta(index: int, kind: tuple[bytes, bytes], text: str) -> bytes:
        name, field = kind
        return sse(b"content_block_delta", b'{"type":"content_block_delta","index":%d,"delta":{"type":"%b","%b":%b}}'
                   % (index, name, field, _encode(text)))


def _input(arguments: str) -> Any:
    """A call's arguments as ``input``: the JSON object they are (``{}`` for none, or for what is not an object)."""
    try:
        value = _decode(arguments) if arguments.strip() else {}
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _content(choice: Choice) -> list[dict[str, Any]]:
    """The blocks of a whole message, in the order of one: thinking, text, calls."""
    blocks: list[dict[str, Any]] = []
    for thinking in choice.reasoning:
        if thinking.redacted is not None:
            blocks.append({"type": "redacted_thinking", "data": thinking.redacted})
        else:
            blocks.append({"type": "thinking", "thinking": "".join(thinking.parts), "signature": thinking.signature or ""})
    text = "".join(choice.content) + "".join(choice.refusal)
    if text:
        blocks.append({"type": "text", "text": text})
    for index, call in choice.sorted_calls():
        arguments = "".join(call.arguments)
        blocks.append({"type": "tool_use", "id": call.id or f"toolu_{index}", "name": call.name or "", "input": _input(arguments)})
    return blocks


def whole_message(message_id: str, model: str, result: Collected) -> dict[str, Any]:
    """The ``message`` object of a request that was not streamed."""
    finish = result.terminal
    assert isinstance(finish, Finish)
    choice = result.message.choices.get(0) or Choice()
    return {
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": _content(choice),
        "stop_reason": stop_reason(finish), "stop_sequence": finish.stop_sequence, "usage": usage_body(result.message.usage),
    }
