"""Encoders: normalised events to one client wire format each, and nothing else.

Stream encoders take a batch of non-terminal events (one, when the client keeps up; many,
when it lags) and coalesce its deltas into one event, text concatenated. Their constant
parts are encoded once per stream; per batch only the text is JSON-encoded.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import msgspec

from app.streaming.events import Delta, Error, Event, Finish, Terminal, Usage

_encode = msgspec.json.Encoder().encode
DONE = b"data: [DONE]\n\n"


class StreamEncoder(Protocol):
    def delta(self, text: str) -> bytes:
        """One delta alone: the usual case, when the client keeps up."""

    def encode(self, events: list[Event]) -> bytes: ...
    def terminal(self, event: Terminal) -> bytes: ...


def _text(events: list[Event]) -> str:
    if len(events) == 1:
        event = events[0]
        return event.text if isinstance(event, Delta) else ""
    return "".join([event.text for event in events if isinstance(event, Delta)])


def _usage(events: list[Event], usage: Usage | None) -> Usage | None:
    for event in events:
        if isinstance(event, Usage):
            usage = event
    return usage


def error_body(error: Error) -> dict[str, str]:
    return {"type": error.type, "code": error.code, "phase": error.phase, "message": error.message}


def usage_body(usage: Usage | None) -> dict[str, int]:
    usage = usage or Usage()
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}


class OpenAIChunks:
    """``chat.completion.chunk`` events, ``[DONE]`` last; an error is an ``{"error": …}`` chunk."""

    def __init__(self, completion_id: str, model: str, include_usage: bool, created: int | None = None) -> None:
        self._head = (
            b'data: {"id":"' + completion_id.encode() + b'","object":"chat.completion.chunk","created":'
            + str(created if created is not None else int(time.time())).encode()
            + b',"model":' + _encode(model) + b',"choices":['
        )
        self._include_usage = include_usage
        self._usage: Usage | None = None
        self._started = False

    def _open(self) -> bytes:
        self._started = True
        return self._head + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'

    def delta(self, text: str) -> bytes:
        out = self._head + b'{"index":0,"delta":{"content":' + _encode(text) + b'},"logprobs":null,"finish_reason":null}]}\n\n'
        return out if self._started else self._open() + out

    def encode(self, events: list[Event]) -> bytes:
        self._usage = _usage(events, self._usage)
        text = _text(events)
        if text:
            return self.delta(text)
        return b"" if self._started else self._open()

    def terminal(self, event: Terminal) -> bytes:
        if isinstance(event, Error):
            return b"data: " + _encode({"error": error_body(event)}) + b"\n\n" + DONE
        out = b"" if self._started else self._open()
        out += self._head + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":' + _encode(event.reason) + b"}]}\n\n"
        if self._include_usage:
            out += self._head + b'],"usage":' + _encode(usage_body(self._usage)) + b"}\n\n"
        return out + DONE


class NativeEvents:
    """``token`` events, then one ``done`` or ``error``; every event has an ``id``."""

    def __init__(self) -> None:
        self._id = 0
        self._usage: Usage | None = None

    def delta(self, text: str) -> bytes:
        self._id += 1
        return b"id: %d\nevent: token\ndata: {\"text\":%b}\n\n" % (self._id, _encode(text))

    def encode(self, events: list[Event]) -> bytes:
        self._usage = _usage(events, self._usage)
        text = _text(events)
        return self.delta(text) if text else b""

    def terminal(self, event: Terminal) -> bytes:
        self._id += 1
        if isinstance(event, Error):
            return b"id: %d\nevent: error\ndata: %b\n\n" % (self._id, _encode(error_body(event)))
        body = {"finish_reason": event.reason, "usage": usage_body(self._usage)}
        return b"id: %d\nevent: done\ndata: %b\n\n" % (self._id, _encode(body))


class Collected(msgspec.Struct):
    """A whole generation gathered for a ``stream: false`` answer."""

    text: str
    usage: Usage | None
    terminal: Terminal


def openai_completion(completion_id: str, model: str, result: Collected) -> dict[str, Any]:
    assert isinstance(result.terminal, Finish)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": result.terminal.reason,
        }],
        "usage": usage_body(result.usage),
    }


def native_completion(result: Collected) -> dict[str, Any]:
    assert isinstance(result.terminal, Finish)
    usage = result.usage or Usage()
    return {"output": result.text, "tokens_used": usage.total_tokens, "finish_reason": result.terminal.reason, "usage": usage_body(usage)}
