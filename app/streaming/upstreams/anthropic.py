"""Anthropic's Messages protocol: ``POST {base}/v1/messages`` with ``stream: true``.

The request carries ``x-api-key`` and ``anthropic-version``, and OpenAI's chat request mapped
to Anthropic's (request building in app/streaming/upstreams/anthropic_request.py).

The response is SSE, named events whose data repeats the name in ``type``; content comes in
blocks, one after the other, each opened by ``content_block_start`` and closed by
``content_block_stop``::

    event: message_start        {"message": {"usage": {"input_tokens": 25, "cache_read_input_tokens": 0, …}}}
    event: content_block_start  {"index": 1, "content_block": {"type": "tool_use", "id": "toolu_…", "name": "f", "input": {}}}
    event: content_block_delta  {"index": 0, "delta": {"type": "text_delta", "text": "Hello"}}
    event: message_delta        {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}
    event: message_stop
    event: ping                 (ignored)
    event: error                {"error": {"type": "overloaded_error", "message": "Overloaded"}}

- ``text_delta`` → ``Delta``; ``thinking_delta`` → ``Reasoning``; ``signature_delta`` →
  ``Reasoning("", signature=…)``, which closes its thinking block; a ``redacted_thinking``
  block → ``RedactedReasoning(data)``;
- a ``tool_use`` block → ``ToolCall(index, id, name)``, its ``input_json_delta``s'
  ``partial_json`` → its argument fragments. ``index`` is the relay's count of the message's
  tool_use blocks (0, 1, 2…), not the block's index. A call that got no input at all (no
  fragment, or only ``""``) gets ``"{}"`` when its block stops, so that its arguments are JSON;
- ``stop_reason`` → ``Finish``: ``end_turn``, ``stop_sequence``: ``stop`` (with the sequence, as
  ``Finish.stop_sequence``); ``tool_use``:
  ``tool_calls``; ``max_tokens`` (even in the middle of a call) and
  ``model_context_window_exceeded``: ``length``; ``refusal``: ``content_filter``; any other as it is;
- usage → ``Usage``: ``prompt_tokens`` is ``input_tokens`` plus the cached input read and
  written (``cache_read_input_tokens``, ``cache_creation_input_tokens``), which are
  ``prompt_tokens_details.cached_tokens`` and ``cache_write_tokens`` (a 0 kept; not sent: ``None``);
  ``output_tokens`` (cumulative) → ``completion_tokens``.

Other block kinds (server tools, citations) are not read. ``message_stop`` ends the stream (a
body that ends after ``message_delta``'s stop reason is taken as finished too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from app.streaming.events import Delta, Event, Finish, PromptTokensDetails, Reasoning, RedactedReasoning, ToolCall, Usage
from app.streaming.request import GenerationRequest
from app.streaming.upstreams.anthropic_request import request_body
from app.streaming.upstreams.handler import ErrorBody, SSEStreamHandler
from app.streaming.upstreams.openai import MAX_CALLS

__all__ = ["VERSION", "MessageStream"]

VERSION = "2023-06-01"

_FINISH = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Message(msgspec.Struct):
    usage: _Usage | None = None


class _Block(msgspec.Struct):
    type: str = ""
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    index: int | None = None
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: ErrorBody | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_encode = msgspec.json.Encoder().encode


class MessageStream(SSEStreamHandler):
    __slots__ = ("_bare", "_calls", "_created", "_input", "_latest", "_output", "_read", "_stop_reason", "_stop_sequence")

    path = "/v1/messages"
    auth = ("x-api-key", "")
    headers = (("anthropic-version", VERSION),)
    passes = ("top_p", "top_k")
    stop = "stop_sequences"
    end_marker = "message_stop"
    images = True

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        super().__init__(emit, flush)
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None
        self._input: int | None = None
        self._output: int | None = None
        self._read: int | None = None
        self._created: int | None = None
        self._calls: dict[int | None, int] = {}  # a tool_use block's index → its call's
        self._latest: int | None = None  # the latest call's
        self._bare: set[int] = set()  # the calls that have had no input yet

    @classmethod
    def body(cls, request: GenerationRequest, parameters: dict[str, Any]) -> Any:
        return request_body(request, parameters)

    def _on_event(self, data: bytes | str) -> None:
        try:
            event = _decode_event(data)
        except msgspec.DecodeError as exc:
            repaired = self._repaired(_decode_event, data, "event", exc)
            if repaired is None:
                return
            event = repaired
        kind = event.type
        if kind == "content_block_delta":
            if event.delta is not None:
                self._on_delta(event.index, event.delta)
        elif kind == "content_block_start":
            if event.content_block is not None:
                self._on_start(event.index, event.content_block)
        elif kind == "content_block_stop":
            call = self._calls.get(event.index)
            if call is not None and call in self._bare:
                self._bare.discard(call)
                self._emit(ToolCall(call, arguments="{}"))
        elif kind == "message_start":
            usage = event.message.usage if event.message is not None else None
            if usage is not None:
                self._count(usage)
        elif kind == "message_delta":
            if event.delta is not None and event.delta.stop_reason is not None:
                self._stop_reason = event.delta.stop_reason
                self._stop_sequence = event.delta.stop_sequence
            if event.usage is not None:
                self._count(event.usage)
        elif kind == "message_stop":
            self._end(self._finished())
        elif kind == "error":
            self._failed(event.error or ErrorBody())

    def _on_delta(self, index: int | None, delta: _Delta) -> None:
        kind = delta.type
        if kind == "text_delta":
            if delta.text:
                self._emit(Delta(delta.text))
        elif kind == "input_json_delta":
            call = self._calls.get(index, self._latest)
            if delta.partial_json and call is not None:
                self._bare.discard(call)
                self._emit(ToolCall(call, arguments=delta.partial_json))
        elif kind == "thinking_delta":
            if delta.thinking:
                self._emit(Reasoning(delta.thinking))
        elif kind == "signature_delta" and delta.signature:
            self._emit(Reasoning("", signature=delta.signature))

    def _on_start(self, index: int | None, block: _Block) -> None:
        kind = block.type
        if kind == "tool_use":
            call = len(self._calls)
            if call >= MAX_CALLS:
                self._end(self._error("upstream_malformed", f"more than {MAX_CALLS} tool calls in one message from the model server"))
                return
            self._calls[index] = self._latest = call
            if block.input:  # the whole input in the block's start, as some gateways send it
                self._emit(ToolCall(call, block.id, block.name, _encode(block.input).decode()))
            else:
                self._bare.add(call)
                self._emit(ToolCall(call, block.id, block.name))
        elif kind == "redacted_thinking":
            if block.data is not None:
                self._emit(RedactedReasoning(block.data))
        elif kind == "thinking":
            if block.thinking or block.signature:
                self._emit(Reasoning(block.thinking or "", signature=block.signature or None))
        elif kind == "text" and block.text:
            self._emit(Delta(block.text))

    def _count(self, usage: _Usage) -> None:
        if usage.input_tokens is not None:
            self._input = usage.input_tokens
        if usage.cache_read_input_tokens is not None:
            self._read = usage.cache_read_input_tokens
        if usage.cache_creation_input_tokens is not None:
            self._created = usage.cache_creation_input_tokens
        if usage.output_tokens is not None:
            self._output = usage.output_tokens  # cumulative

    def _usage(self) -> Usage:
        read, created = self._read, self._created
        prompt = self._input + (read or 0) + (created or 0) if self._input is not None else None
        counted = Usage.counted(prompt, self._output)
        if read is None and created is None:
            return counted
        return Usage(prompt, self._output, counted.total_tokens, PromptTokensDetails(cached_tokens=read, cache_write_tokens=created))

    def _finished(self) -> Finish:
        """The usage (emitted), and the finish."""
        self._emit(self._usage())
        reason = self._stop_reason or "end_turn"
        return Finish(_FINISH.get(reason, reason), stop_sequence=self._stop_sequence if reason == "stop_sequence" else None)

    def _last(self) -> Finish | None:
        return self._finished() if self._stop_reason is not None else None
