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

from app.errors import UpstreamError, UpstreamStatusError
from app.streaming.events import Delta, Error, Event, Finish, Usage
from app.streaming.request import GenerationRequest
from app.streaming.sse import SSEParser

MAX_ERROR_BODY = 65_536


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    message: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _ErrorBody(msgspec.Struct):
    message: str = "the model server reported an error"
    type: str | None = None
    code: str | int | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: _ErrorBody | str | None = None


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


class ChatStream:
    """Response handler: turns the upstream's bytes into events for ``emit``; ``flush`` after each read."""

    __slots__ = ("_body", "_emit", "_ended", "_finish_reason", "_flush", "_is_sse", "_parser", "_status", "_tokens")

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        self._emit = emit
        self._flush = flush
        self._parser = SSEParser()
        self._status = 0
        self._is_sse = True
        self._body = bytearray()
        self._finish_reason: str | None = None
        self._tokens = False
        self._ended = False

    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._status = status
        content_type = next((value for name, value in headers if name == b"content-type"), b"")
        self._is_sse = status == 200 and content_type.startswith(b"text/event-stream")

    def on_body(self, data: bytes) -> None:
        if self._ended:
            return
        if not self._is_sse:
            if len(self._body) < MAX_ERROR_BODY:
                self._body += data[: MAX_ERROR_BODY - len(self._body)]
            return
        single = self._parser.single_data(data)
        if single is not None:
            self._on_data(single)
        else:
            for event in self._parser.feed(data):
                self._on_data(event.data)
                if self._ended:
                    break
        if not self._ended:
            self._flush()

    def on_end(self) -> None:
        if self._ended:
            return
        if self._status != 200:
            self._end(UpstreamStatusError(self._status, _error_message(bytes(self._body), self._status)).event())
        elif not self._is_sse:
            self._on_completion(bytes(self._body))
        elif self._finish_reason is not None:
            self._end(Finish(self._finish_reason))
        else:
            self._end(self._error("upstream_incomplete", "the model server ended the stream before [DONE]"))

    def on_lost(self, exc: Exception) -> None:
        if self._ended:
            return
        if isinstance(exc, UpstreamError):
            self._end(Error(exc.type, exc.code, exc.message, self._phase()))
        else:
            self._end(self._error("upstream_disconnected", f"lost the model server: {exc}"))

    def _on_data(self, data: str | bytes) -> None:
        if data == b"[DONE]" or data == "[DONE]":
            self._end(Finish(self._finish_reason or "stop"))
            return
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError as exc:
            self._end(self._error("upstream_malformed", f"malformed chunk from the model server: {exc}"))
            return
        if chunk.error is not None:
            error = chunk.error
            if isinstance(error, str):
                self._end(self._error("upstream_error", error))
            else:
                code = str(error.code) if error.code is not None else (error.type or "upstream_error")
                self._end(self._error(code, error.message))
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
            self._end(self._error("upstream_malformed", "the model server answered neither SSE nor JSON"))
            return
        if chunk.error is None and not chunk.choices:
            self._end(self._error("upstream_malformed", "the model server's answer has no choices"))
            return
        self._on_data(body)
        if not self._ended:
            self._end(Finish(self._finish_reason or "stop"))

    def _phase(self) -> str:
        return "stream" if self._tokens else "first_token"

    def _error(self, code: str, message: str) -> Error:
        return Error("upstream_error", code, message, self._phase())

    def _end(self, event: Finish | Error) -> None:
        self._ended = True
        self._emit(event)


def _error_message(body: bytes, status: int) -> str:
    try:
        chunk = _decode_chunk(body)
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()[:500]
        return f"the model server answered {status}" + (f": {text}" if text else "")
    error = chunk.error
    if isinstance(error, _ErrorBody):
        return f"the model server answered {status}: {error.message}"
    if isinstance(error, str):
        return f"the model server answered {status}: {error}"
    return f"the model server answered {status}"
