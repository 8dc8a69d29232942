"""Ollama's native chat protocol: ``POST {base}/api/chat``, answered in NDJSON.

The request is ``{"model", "messages", "stream": true, "options": {...}}``: message
contents are plain text (text parts of a list are joined), ``max_tokens`` becomes
``num_predict`` (the relay's limit when the client gave none). Each line of the response is one JSON object::

    {"model":"llama3.2","created_at":"...","message":{"role":"assistant","content":"The"},"done":false}

and the last one has ``"done": true`` with ``done_reason`` (``stop``, ``length``…),
``prompt_eval_count`` and ``eval_count`` (the token counts). An error is a line
``{"error": "..."}``, or an error status with that body. A body that ends before the
``done`` line is ``upstream_incomplete``; a line longer than 1 MiB is ``upstream_malformed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from app.streaming.events import Delta, Event, Finish, Usage
from app.streaming.lines import LineSplitter
from app.streaming.request import GenerationRequest, content_text
from app.streaming.upstreams.handler import StreamHandler, decode_repaired

MAX_LINE = 1_048_576
# OpenAI request parameters Ollama takes in its options, under the same name.
_OPTIONS = ("top_p", "top_k", "seed", "stop", "frequency_penalty", "presence_penalty")


class _Message(msgspec.Struct):
    content: str = ""


class _Line(msgspec.Struct):
    message: _Message | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None  # left out when the prompt was cached
    eval_count: int | None = None
    error: str | None = None


_decode_line = msgspec.json.Decoder(_Line).decode
_encode = msgspec.json.Encoder().encode


def build_request(request: GenerationRequest, api_key: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
    options: dict[str, Any] = {key: request.extra[key] for key in _OPTIONS if request.extra.get(key) is not None}
    # Without num_predict Ollama generates until the model stops, however long: the relay's limit bounds it.
    limit, temperature = request.token_limit() or request.max_tokens_limit, request.sampling_temperature()
    if limit is not None:
        options["num_predict"] = limit
    if temperature is not None:
        options["temperature"] = temperature
    messages = [
        {"role": message.get("role", "user"), "content": content_text(message.get("content"))}
        for message in request.messages if isinstance(message, dict)
    ]
    body = {"model": request.model, "messages": messages, "stream": True, "options": options}
    headers = [("Content-Type", "application/json"), ("Accept", "application/x-ndjson"), ("X-Request-Id", request.request_id)]
    if api_key:
        headers.append(("Authorization", f"Bearer {api_key}"))
    return "/api/chat", headers, _encode(body)


class ChatLines(StreamHandler):
    __slots__ = ("_lines",)

    content_types = (b"application/x-ndjson", b"application/json")

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        super().__init__(emit, flush)
        self._lines = LineSplitter(MAX_LINE)

    def _feed(self, data: bytes) -> None:
        lines, too_long = self._lines.split(data)
        for line in lines:
            if line.strip():
                self._on_line(line)
                if self._ended:
                    return
        if too_long:
            self._end(self._error("upstream_malformed", f"a line of more than {MAX_LINE} bytes from the model server"))

    def _on_line(self, line: bytes) -> None:
        try:
            parsed = _decode_line(line)
        except msgspec.DecodeError as exc:
            repaired = decode_repaired(_decode_line, line)
            if repaired is None:
                self._end(self._malformed("line", exc))
                return
            parsed = repaired
        if parsed.error is not None:
            self._end(self._error("upstream_error", parsed.error))
            return
        if parsed.message is not None and parsed.message.content:
            self._tokens = True
            self._emit(Delta(parsed.message.content))
        if parsed.done:
            self._emit(Usage.counted(parsed.prompt_eval_count, parsed.eval_count))
            self._end(Finish(parsed.done_reason or "stop"))

    def _at_end(self) -> None:
        line = self._lines.take()
        if line.strip():  # a last line without its newline
            self._on_line(line)
            if self._ended:
                return
        self._end(self._incomplete('its "done" line'))
