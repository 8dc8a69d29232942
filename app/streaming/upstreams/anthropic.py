"""Anthropic's Messages protocol: ``POST {base}/v1/messages`` with ``stream: true``.

The request carries ``x-api-key`` and ``anthropic-version``; system (and developer)
messages become the top-level ``system`` text, the others keep their role (a ``tool``
message is sent as the user's); ``max_tokens``, which Anthropic requires, defaults to
4096 (or the relay's limit, if lower); ``temperature`` is capped at 1, Anthropic's maximum;
``stop`` becomes ``stop_sequences``.

The response is SSE, named events whose data repeats the name in ``type``::

    event: message_start        {"message": {"usage": {"input_tokens": 25, "output_tokens": 1}}}
    event: content_block_delta  {"delta": {"type": "text_delta", "text": "Hello"}}
    event: message_delta        {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}
    event: message_stop
    event: ping                 (ignored, as are content_block_start/stop and non-text deltas)
    event: error                {"error": {"type": "overloaded_error", "message": "Overloaded"}}

``message_stop`` ends the stream (a body that ends after ``message_delta``'s stop reason is
taken as finished too); ``stop_reason`` maps to OpenAI's finish reasons (``end_turn`` and
``stop_sequence``: ``stop``; ``max_tokens``: ``length``; ``tool_use``: ``tool_calls``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from app.streaming.events import Delta, Event, Finish, Usage
from app.streaming.request import GenerationRequest, content_text
from app.streaming.upstreams.handler import ErrorBody, SSEStreamHandler, decode_repaired, error_code

VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
_PASSED = ("top_p", "top_k")


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def prompt_tokens(self) -> int | None:
        if self.input_tokens is None:
            return None
        return self.input_tokens + (self.cache_creation_input_tokens or 0) + (self.cache_read_input_tokens or 0)


class _Message(msgspec.Struct):
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    message: _Message | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: ErrorBody | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_encode = msgspec.json.Encoder().encode


def build_request(request: GenerationRequest, api_key: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if not isinstance(message, dict):
            continue
        role, text = message.get("role", "user"), content_text(message.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        else:
            messages.append({"role": "assistant" if role == "assistant" else "user", "content": text})
    body: dict[str, Any] = {key: request.extra[key] for key in _PASSED if request.extra.get(key) is not None}
    max_tokens = request.token_limit() or min(DEFAULT_MAX_TOKENS, request.max_tokens_limit or DEFAULT_MAX_TOKENS)
    body.update(model=request.model, max_tokens=max_tokens, messages=messages, stream=True)
    if system:
        body["system"] = "\n\n".join(system)
    temperature = request.sampling_temperature()
    if temperature is not None:
        body["temperature"] = min(temperature, 1.0)
    stop = request.extra.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    headers = [
        ("Content-Type", "application/json"), ("Accept", "text/event-stream"), ("anthropic-version", VERSION),
        ("X-Request-Id", request.request_id),
    ]
    if api_key:
        headers.append(("x-api-key", api_key))
    return "/v1/messages", headers, _encode(body)


class MessageStream(SSEStreamHandler):
    __slots__ = ("_input", "_output", "_stop_reason")

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        super().__init__(emit, flush)
        self._stop_reason: str | None = None
        self._input: int | None = None
        self._output: int | None = None

    def _on_event(self, data: str) -> None:
        try:
            event = _decode_event(data)
        except msgspec.DecodeError as exc:
            repaired = decode_repaired(_decode_event, data)
            if repaired is None:
                self._end(self._malformed("event", exc))
                return
            event = repaired
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            if delta is not None and delta.type == "text_delta" and delta.text:
                self._tokens = True
                self._emit(Delta(delta.text))
        elif kind == "message_start":
            usage = event.message.usage if event.message is not None else None
            if usage is not None:
                self._count(usage)
        elif kind == "message_delta":
            if event.delta is not None and event.delta.stop_reason is not None:
                self._stop_reason = event.delta.stop_reason
            if event.usage is not None:
                self._count(event.usage)
        elif kind == "message_stop":
            self._finish()
        elif kind == "error":
            error = event.error or ErrorBody()
            self._end(self._error(error_code(error), error.message))

    def _count(self, usage: _Usage) -> None:
        if usage.input_tokens is not None:
            self._input = usage.prompt_tokens()
        if usage.output_tokens is not None:
            self._output = usage.output_tokens  # cumulative

    def _finish(self) -> None:
        self._emit(Usage.counted(self._input, self._output))
        reason = self._stop_reason or "end_turn"
        self._end(Finish(_FINISH.get(reason, reason)))

    def _at_end(self) -> None:
        if self._stop_reason is not None:
            self._finish()
        else:
            self._end(self._incomplete("message_stop"))
