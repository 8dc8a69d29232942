"""The OpenAI chat-completions protocol (vLLM, llama.cpp server, Ollama /v1, TGI Messages, OpenAI).

Maps a ``GenerationRequest`` to a streaming ``POST {base}/chat/completions`` (always with
``stream_options.include_usage``) and the response's SSE chunks to normalised events:
content deltas become ``Delta``, the usage chunk ``Usage``, ``[DONE]`` the ``Finish``
carrying the last ``finish_reason``. An in-band ``{"error": ...}`` frame, a malformed
chunk, an error status or a body that ends before ``[DONE]`` (and before any
``finish_reason``) become an ``Error``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from app.streaming.events import Delta, Event, Finish, Usage
from app.streaming.request import GenerationRequest
from app.streaming.upstreams.handler import MAX_ERROR_BODY, ErrorBody, SSEStreamHandler, decode_repaired, error_code


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    message: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: ErrorBody | str | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_encode = msgspec.json.Encoder().encode


def build_request(request: GenerationRequest, api_key: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
    body: dict[str, Any] = dict(request.extra)
    body["model"] = request.model
    body["messages"] = request.messages
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    headers = [("Content-Type", "application/json"), ("Accept", "text/event-stream"), ("X-Request-Id", request.request_id)]
    if api_key:
        headers.append(("Authorization", f"Bearer {api_key}"))
    return "/chat/completions", headers, _encode(body)


class ChatStream(SSEStreamHandler):
    """Response handler: turns the upstream's bytes into events for ``emit``; ``flush`` after each read."""

    __slots__ = ("_finish_reason",)

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        super().__init__(emit, flush)
        self._finish_reason: str | None = None

    def on_body(self, data: bytes) -> None:
        # The hot path, written out in full: most chunks are one whole ``data:`` event.
        if self._ended:
            return
        if not self._ok:
            if len(self._body) < MAX_ERROR_BODY:
                self._body += data[: MAX_ERROR_BODY - len(self._body)]
            return
        single = self._parser.single_data(data)
        if single is not None:
            self._on_event(single)
        else:
            self._feed_lines(data)
        if not self._ended:
            self._flush()

    def _at_end(self) -> None:
        if self._finish_reason is not None:
            self._end(Finish(self._finish_reason))
        else:
            self._end(self._incomplete("[DONE]"))

    def _unexpected(self, body: bytes) -> None:
        self._on_completion(body)

    def _on_event(self, data: str | bytes) -> None:
        if data == b"[DONE]" or data == "[DONE]":
            self._end(Finish(self._finish_reason or "stop"))
            return
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError as exc:
            repaired = decode_repaired(_decode_chunk, data)
            if repaired is None:
                self._end(self._malformed("chunk", exc))
                return
            chunk = repaired
        if chunk.error is not None:
            error = chunk.error
            if isinstance(error, str):
                self._end(self._error("upstream_error", error))
            else:
                self._end(self._error(error_code(error), error.message))
            return
        for choice in chunk.choices:
            delta = choice.delta or choice.message
            if delta is not None and delta.content:
                self._tokens = True
                self._emit(Delta(delta.content))
            if choice.finish_reason is not None:
                self._finish_reason = choice.finish_reason
        if chunk.usage is not None:
            self._emit(Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens))

    def _on_completion(self, body: bytes) -> None:
        """The server ignored ``stream: true`` and answered with one JSON completion."""
        try:
            chunk = _decode_chunk(body)
        except msgspec.DecodeError:
            repaired = decode_repaired(_decode_chunk, body)
            if repaired is None:
                self._end(self._error("upstream_malformed", "the model server answered neither SSE nor JSON"))
                return
            chunk = repaired
        if chunk.error is None and not chunk.choices:
            self._end(self._error("upstream_malformed", "the model server's answer has no choices"))
            return
        self._on_event(body)
        if not self._ended:
            self._end(Finish(self._finish_reason or "stop"))
