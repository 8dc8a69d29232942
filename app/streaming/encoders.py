"""Encoders: normalised events to one client wire format each, and nothing else.

Stream encoders take a batch of parts (one, when the client keeps up; many, when it lags)
and send what it adds up to (``Merged``: per choice, per field, per call) as one event per
field: texts concatenated, a call's fragments concatenated and never another call's, its id
and name with (so before) its arguments, logprob lists in order. Their constant parts are
encoded once per stream; a plain content delta, the usual event, costs one JSON string.

OpenAI chunks carry reasoning as ``delta.reasoning_content`` only, not also as ``reasoning``:
it is the name DeepSeek gave it and most clients read (vLLM until its rename, SGLang,
llama.cpp, LiteLLM, LangChain), and a client that reads both names would count it twice.
They cannot carry a thinking block's signature nor a redacted block: the native events do.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, assert_never

import msgspec

from app.streaming.events import Error, Finish, Part, Reasoning, Terminal, ToolCall, Usage
from app.streaming.message import Call, Choice, Merged
from app.streaming.sse import HEARTBEAT

_encode = msgspec.json.Encoder().encode
DONE = b"data: [DONE]\n\n"


class StreamEncoder(Protocol):
    # What a stream sends when nothing else was sent for a heartbeat interval (an SSE comment, or a dialect's own event).
    heartbeat: bytes
    # Whether the encoder holds all it may (a dialect that repeats the answer at its end keeps it): the stream
    # then ends with ``response_too_large`` (app/streaming/relay.py), and the encoder takes nothing more.
    full: bool

    def delta(self, text: str) -> bytes:
        """One content delta of choice 0 alone: the usual case, when the client keeps up."""

    def encode(self, events: list[Part]) -> bytes: ...
    def terminal(self, event: Terminal) -> bytes: ...


def error_body(error: Error) -> dict[str, str]:
    return {"type": error.type, "code": error.code, "phase": error.phase, "message": error.message}


def _logprobs(choice: Choice) -> dict[str, Any] | None:
    if choice.content_logprobs is None and choice.refusal_logprobs is None:
        return None
    return {"content": choice.content_logprobs, "refusal": choice.refusal_logprobs}


def _call_delta(index: int, call: Call) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": index}
    if call.id is not None:
        entry["id"] = call.id
        entry["type"] = "function"
    function: dict[str, str] = {}
    if call.name is not None:
        function["name"] = call.name
        entry.setdefault("type", "function")
    function["arguments"] = "".join(call.arguments)
    entry["function"] = function
    return entry


def _choice_delta(choice: Choice) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    reasoning = choice.reasoning_text()
    if reasoning:
        delta["reasoning_content"] = reasoning
    if choice.content:
        delta["content"] = "".join(choice.content)
    if choice.refusal:
        delta["refusal"] = "".join(choice.refusal)
    if choice.calls:
        delta["tool_calls"] = [_call_delta(index, call) for index, call in choice.sorted_calls()]
    return delta


def _fragment(index: int) -> bytes:
    """A chunk's bytes up to an argument fragment's text, for call ``index`` of choice 0."""
    return b'{"index":0,"delta":{"tool_calls":[{"index":%d,"function":{"arguments":' % index


_FRAGMENT = tuple(_fragment(index) for index in range(16))
_FRAGMENT_END = b'}}]},"logprobs":null,"finish_reason":null}]}\n\n'
_REASONING = b'{"index":0,"delta":{"reasoning_content":'
_TEXT_END = b'},"logprobs":null,"finish_reason":null}]}\n\n'  # after a content or reasoning text of choice 0


class OpenAIChunks:
    """``chat.completion.chunk`` events, ``[DONE]`` last; an error is an ``{"error": …}`` chunk.

    Each choice opens with a chunk carrying ``"role": "assistant"`` (and ``"content": ""`` when
    its answer begins with text), choices in index order, as the OpenAI SDKs expect them.
    """

    heartbeat = HEARTBEAT
    full = False  # it keeps nothing of the answer

    def __init__(self, completion_id: str, model: str, include_usage: bool, created: int | None = None) -> None:
        self._head = (
            b'data: {"id":"' + completion_id.encode() + b'","object":"chat.completion.chunk","created":'
            + str(created if created is not None else int(time.time())).encode()
            + b',"model":' + _encode(model) + b',"choices":['
        )
        self._include_usage = include_usage
        self._usage: Usage | None = None
        self._opened = 0  # choices 0 … _opened - 1 have had their first chunk

    def _open(self, choice: int, text: bool) -> bytes:
        """The first chunk of ``choice``, and of any choice before it that had none."""
        out = b""
        while self._opened <= choice:
            delta = b'{"role":"assistant","content":""}' if text and self._opened == choice else b'{"role":"assistant"}'
            out += self._head + b'{"index":%d,"delta":%b,"logprobs":null,"finish_reason":null}]}\n\n' % (self._opened, delta)
            self._opened += 1
        return out

    def delta(self, text: str) -> bytes:
        out = self._head + b'{"index":0,"delta":{"content":' + _encode(text) + _TEXT_END
        return out if self._opened else self._open(0, True) + out

    def encode(self, events: list[Part]) -> bytes:
        if len(events) == 1 and self._opened:  # a lone argument fragment or reasoning delta of choice 0: as cheap as a content delta
            part = events[0]
            if type(part) is ToolCall and part.id is None and part.name is None and not part.choice:
                index = part.index
                return self._head + (_FRAGMENT[index] if index < len(_FRAGMENT) else _fragment(index)) + _encode(part.arguments) + _FRAGMENT_END
            if type(part) is Reasoning and part.text and part.signature is None and not part.choice:
                return self._head + _REASONING + _encode(part.text) + _TEXT_END
        return self._merged(events)

    def _merged(self, events: list[Part]) -> bytes:
        """Any batch of parts, merged (``Merged``): one body per choice, in index order."""
        merged = Merged.of(events)
        if merged.usage is not None:
            self._usage = merged.usage
        out = b""
        bodies = []
        for index, choice in merged.sorted_choices():
            delta = _choice_delta(choice)
            logprobs = _logprobs(choice)
            if not delta and logprobs is None:
                continue  # a signature or a redacted block alone: nothing this format can say
            if index >= self._opened:
                out += self._open(index, bool(choice.content))
            bodies.append({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None})
        if bodies:
            out += self._head + _encode(bodies)[1:] + b"}\n\n"
        return out

    def terminal(self, event: Terminal) -> bytes:
        match event:
            case Error():
                return b"data: " + _encode({"error": error_body(event)}) + b"\n\n" + DONE
            case Finish():
                out = b""
                for index in range(max(self._opened, len(event.reasons), 1)):
                    if index >= self._opened:
                        out += self._open(index, True)
                    out += (self._head + b'{"index":%d,"delta":{},"logprobs":null,"finish_reason":%b}]}\n\n'
                            % (index, _encode(event.reason_of(index))))
                if self._include_usage:
                    out += self._head + b'],"usage":' + _encode(self._usage) + b"}\n\n"
                return out + DONE
            case _:
                assert_never(event)


def native_parts(merged: Merged) -> list[tuple[str, bytes]]:
    """The native stream's events for ``merged``, as ``(event name, data)``: what ``/v1/generate`` sends and the event log keeps.

    Per choice, in the order of a message: ``reasoning`` (one a block, with its ``signature``)
    and ``redacted_reasoning``, ``token``, ``refusal``, ``tool_call`` (one a call), ``logprobs``.
    The native API has one choice; a part of another (which it never asks for) says its ``choice``.
    """
    out: list[tuple[str, bytes]] = []
    for index, choice in merged.sorted_choices():
        tag = {"choice": index} if index else {}
        for block in choice.reasoning:
            if block.redacted is not None:
                out.append(("redacted_reasoning", _encode({"data": block.redacted, **tag})))
            else:
                body: dict[str, Any] = {"text": "".join(block.parts)}
                if block.signature is not None:
                    body["signature"] = block.signature
                out.append(("reasoning", _encode(body | tag)))
        if choice.content:
            out.append(("token", _encode({"text": "".join(choice.content), **tag})))
        if choice.refusal:
            out.append(("refusal", _encode({"text": "".join(choice.refusal), **tag})))
        for call_index, call in choice.sorted_calls():
            out.append(("tool_call", _encode({
                "index": call_index, "id": call.id, "name": call.name, "arguments": "".join(call.arguments), **tag,
            })))
        logprobs = _logprobs(choice)
        if logprobs is not None:
            out.append(("logprobs", _encode(logprobs | tag)))
    return out


def native_done(event: Finish, usage: Usage | None) -> bytes:
    return _encode({"finish_reason": event.reason, "usage": usage})


class NativeEvents:
    """``token`` (and ``reasoning``, ``tool_call``… see ``native_parts``) events, then one ``done`` or ``error``; every event has an ``id``."""

    heartbeat = HEARTBEAT
    full = False

    def __init__(self) -> None:
        self._id = 0
        self._usage: Usage | None = None

    def delta(self, text: str) -> bytes:
        self._id += 1
        return b"id: %d\nevent: token\ndata: {\"text\":%b}\n\n" % (self._id, _encode(text))

    def encode(self, events: list[Part]) -> bytes:
        merged = Merged.of(events)
        if merged.usage is not None:
            self._usage = merged.usage
        out = b""
        for name, data in native_parts(merged):
            self._id += 1
            out += b"id: %d\nevent: %b\ndata: %b\n\n" % (self._id, name.encode(), data)
        return out

    def terminal(self, event: Terminal) -> bytes:
        self._id += 1
        match event:
            case Error():
                return b"id: %d\nevent: error\ndata: %b\n\n" % (self._id, _encode(error_body(event)))
            case Finish():
                return b"id: %d\nevent: done\ndata: %b\n\n" % (self._id, native_done(event, self._usage))
            case _:
                assert_never(event)


class Collected(msgspec.Struct):
    """A whole generation gathered for a ``stream: false`` answer."""

    message: Merged
    terminal: Terminal


def _openai_message(choice: Choice) -> dict[str, Any]:
    calls = choice.sorted_calls()
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI's: null when the answer is only tool calls or a refusal.
        "content": "".join(choice.content) if choice.content or not (calls or choice.refusal) else None,
        "refusal": "".join(choice.refusal) if choice.refusal else None,
    }
    if calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": "".join(call.arguments)}} for _, call in calls
        ]
    reasoning = choice.reasoning_text()
    if reasoning:
        message["reasoning_content"] = reasoning
    return message


def _choice_count(merged: Merged, finish: Finish) -> int:
    return max(max(merged.choices, default=-1) + 1, len(finish.reasons), 1)


def openai_completion(completion_id: str, model: str, result: Collected) -> dict[str, Any]:
    finish = result.terminal
    assert isinstance(finish, Finish)
    merged = result.message
    choices = []
    for index in range(_choice_count(merged, finish)):
        choice = merged.choices.get(index) or Choice()
        choices.append({"index": index, "message": _openai_message(choice), "logprobs": _logprobs(choice), "finish_reason": finish.reason_of(index)})
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model, "choices": choices, "usage": merged.usage}


def native_completion(result: Collected) -> dict[str, Any]:
    finish = result.terminal
    assert isinstance(finish, Finish)
    usage = result.message.usage
    choice = result.message.choices.get(0) or Choice()
    return {
        "output": "".join(choice.content),
        "tokens_used": usage.total_tokens if usage is not None else None,
        "finish_reason": finish.reason,
        "usage": usage,
        "reasoning": choice.reasoning_text() or None,
        "refusal": "".join(choice.refusal) if choice.refusal else None,
        "tool_calls": [
            {"index": index, "id": call.id, "name": call.name, "arguments": "".join(call.arguments)} for index, call in choice.sorted_calls()
        ],
        "logprobs": _logprobs(choice),
    }
