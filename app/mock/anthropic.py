"""The mock's Anthropic Messages (``POST …/v1/messages``): named SSE events up to ``message_stop``, or one message.

Content comes in blocks, one after the other: ``thinking`` (``thinking_delta``s, then a
``signature_delta``), ``redacted_thinking`` (whole in its start), ``text`` (``text_delta``s)
and ``tool_use`` (``input: {}`` in its start, then ``input_json_delta``s; a call without
arguments sends one empty ``partial_json``). ``stop_reason`` is ``tool_use``, ``max_tokens``
(even in the middle of a call), ``refusal`` or ``end_turn``; usage counts cached input apart.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import msgspec

from app.mock.answer import Call, Choice, ToolCall
from app.mock.wire import Message, Wire, prompt_of, text_of, tool_of

_encode = msgspec.json.Encoder().encode


class _Tool(msgspec.Struct):
    name: str = ""
    input_schema: dict[str, Any] | None = None


class _ToolChoice(msgspec.Struct):
    type: str = "auto"
    name: str | None = None
    disable_parallel_tool_use: bool = False


class _Thinking(msgspec.Struct):
    type: str = "disabled"


class _Request(msgspec.Struct):
    model: str = "mock"
    messages: list[Message] = []
    max_tokens: int | None = None
    stream: bool = False
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    thinking: _Thinking | None = None


_decode = msgspec.json.Decoder(_Request).decode


def _results(messages: list[Message]) -> list[str]:
    """The ``tool_result`` blocks of a last user message: tool results waiting for an answer."""
    if not messages or messages[-1].role != "user" or not isinstance(messages[-1].content, list):
        return []
    return [text_of(block.get("content")) for block in messages[-1].content if block.get("type") == "tool_result"]


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


def _opaque(kind: str, text: str) -> str:
    """A deterministic stand-in for the encrypted signature or redacted data of a thinking block."""
    return base64.b64encode(hashlib.sha256(f"{kind}\x00{text}".encode()).digest() * 2).decode()


class AnthropicWire(Wire):
    @staticmethod
    def parse(body: bytes) -> Call:
        request = _decode(body)
        choice = request.tool_choice or _ToolChoice()
        return Call(
            request.model, prompt_of(request.messages), request.stream, request.max_tokens,
            tools=[tool_of(tool.name, tool.input_schema) for tool in request.tools or ()],
            tool_choice="none" if choice.type == "none" else choice.name if choice.type == "tool" else None,
            parallel=not choice.disable_parallel_tool_use, results=_results(request.messages),
            reasoning=request.thinking is not None and request.thinking.type in ("enabled", "adaptive"),
        )

    @staticmethod
    def error_status(status: int, message: str) -> Any:
        return {"type": "error", "error": {"type": "rate_limit_error" if status == 429 else "api_error", "message": message}}

    def _stop_reason(self) -> str:
        choice = self.answer.choices[0]
        if choice.reason == "length":
            return "max_tokens"
        return "tool_use" if choice.calls else "refusal" if choice.refusal else "end_turn"

    def _usage(self) -> dict[str, int]:
        answer = self.answer
        return {"input_tokens": answer.prompt_tokens - answer.cached_tokens, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": answer.cached_tokens, "output_tokens": answer.completion_tokens}

    def head(self) -> bytes:
        answer = self.answer
        message: dict[str, Any] = {
            "id": answer.id, "type": "message", "role": "assistant", "content": [], "model": answer.model, "stop_reason": None,
            "stop_sequence": None, "usage": self._usage() | {"output_tokens": 1},
        }
        start = _event("message_start", {"type": "message_start", "message": message})
        if not answer.plain:
            return start + _event("ping", {"type": "ping"})
        return (start + _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
                + _event("ping", {"type": "ping"}))

    def token(self, index: int) -> bytes:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": self._tokens[index]}}
        return _event("content_block_delta", delta)

    def _blocks(self, choice: Choice) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Each content block's start and deltas, in order."""
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if choice.reasoning:
            thinking = "".join(choice.reasoning)
            deltas = [{"type": "thinking_delta", "thinking": token} for token in choice.reasoning]
            blocks.append(({"type": "thinking", "thinking": "", "signature": ""},
                           [*deltas, {"type": "signature_delta", "signature": _opaque("signature", thinking)}]))
            if self.answer.reasoning_style == "redacted":
                blocks.append(({"type": "redacted_thinking", "data": _opaque("redacted", thinking)}, []))
        if choice.content or choice.refusal:
            blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": token} for token in choice.content + choice.refusal]))
        for call in choice.calls:
            fragments = call.fragments if call.arguments or not call.complete else [""]
            blocks.append(({"type": "tool_use", "id": self._id(call), "name": call.name, "input": {}},
                           [{"type": "input_json_delta", "partial_json": fragment} for fragment in fragments]))
        return blocks

    @staticmethod
    def _id(call: ToolCall) -> str:
        return "toolu_" + call.id.removeprefix("call_")

    def frames(self) -> list[bytes]:
        # A block's start goes with its first delta, and the previous block's stop with it.
        frames: list[bytes] = []
        self._last = -1
        for index, (block, deltas) in enumerate(self._blocks(self.answer.choices[0])):
            stop = _event("content_block_stop", {"type": "content_block_stop", "index": index - 1}) if index else b""
            start = stop + _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
            events = [_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}) for delta in deltas] or [b""]
            frames += [start + events[0], *events[1:]]
            self._last = index
        return frames

    def tail(self, include_usage: bool) -> bytes:
        last = 0 if self.answer.plain else self._last
        delta = {"type": "message_delta", "delta": {"stop_reason": self._stop_reason(), "stop_sequence": None},
                 "usage": {"output_tokens": self.answer.completion_tokens}}
        stop = _event("content_block_stop", {"type": "content_block_stop", "index": last}) if last >= 0 else b""
        return stop + _event("message_delta", delta) + _event("message_stop", {"type": "message_stop"})

    def error_event(self) -> bytes:
        return _event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "mock fault: the model failed mid-stream"}})

    malformed = b'event: content_block_delta\ndata: {"type": "content_block_delta", \n\n'

    def whole(self) -> Any:
        answer = self.answer
        choice = answer.choices[0]
        content: list[dict[str, Any]] = []
        for block, deltas in self._blocks(choice):
            if block["type"] == "thinking":
                content.append(block | {"thinking": "".join(choice.reasoning), "signature": deltas[-1]["signature"]})
            elif block["type"] == "text":
                content.append(block | {"text": "".join(choice.content + choice.refusal)})
            elif block["type"] == "redacted_thinking":
                content.append(block)
        content += [{"type": "tool_use", "id": self._id(call), "name": call.name, "input": call.written()} for call in choice.calls]
        if answer.plain:
            content = [{"type": "text", "text": "".join(choice.content)}]
        return {
            "id": answer.id, "type": "message", "role": "assistant", "model": answer.model, "content": content,
            "stop_reason": self._stop_reason(), "stop_sequence": None, "usage": self._usage(),
        }
