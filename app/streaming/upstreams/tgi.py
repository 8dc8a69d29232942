"""Hugging Face Text Generation Inference's native protocol: ``POST {base}/generate_stream``.

The request is ``{"inputs": prompt, "parameters": {...}}``: the prompt is the lone user
message, or a plain transcript of the chat (``prompt_text``); ``max_tokens`` becomes
``max_new_tokens``, and ``details`` is always asked for so the last event carries the
finish reason and the token counts.

The response is SSE, one ``data:`` event per token::

    data:{"index":1,"token":{"id":415,"text":" Deep","logprob":-0.4,"special":false},"generated_text":null,"details":null}

The last one carries ``generated_text`` and ``details`` (``finish_reason``: ``length``,
``eos_token`` or ``stop_sequence``; ``generated_tokens``; ``input_length``). Special tokens
(the end-of-sequence token) are not text. An error is an event ``{"error": "...",
"error_type": "generation"}``, or an error status with the same body. A body that ends
before the event with ``details`` is ``upstream_incomplete``.

What this API cannot carry, whatever the relay does: it takes a prompt and gives text. It has
no tools (``tools``, ``tool_choice`` and tool results are not sent: a chat's tool messages become
``tool: …`` lines of the transcript, an assistant's calls are left out), so no tool calls come
back; no reasoning field (a reasoning model's thinking is text, as the model wrote it); no
refusal; one choice. Each token's ``logprob`` is not read. For tools, point the upstream at
TGI's Messages API (``/v1/chat/completions``) with protocol ``openai``, which reads what TGI
sends there: the call's ``id`` ``"0"`` repeated in every chunk goes to the client once, its
``arguments`` as an object (whole answers before TGI 3.2) are JSON-encoded, and its
``finish_reason``, ``stop`` even after a call, is passed on as TGI said it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.streaming.events import Delta, Finish, Usage
from app.streaming.request import GenerationRequest, prompt_text
from app.streaming.upstreams.handler import SSEStreamHandler

_FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}


class _Token(msgspec.Struct):
    text: str = ""
    special: bool = False


class _Details(msgspec.Struct):
    finish_reason: str = "eos_token"
    generated_tokens: int | None = None
    input_length: int | None = None


class _Event(msgspec.Struct):
    token: _Token | None = None
    generated_text: str | None = None
    details: _Details | None = None
    error: str | None = None
    error_type: str | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class GenerateStream(SSEStreamHandler):
    __slots__ = ()

    path = "/generate_stream"
    passes = ("top_p", "top_k", "seed", "repetition_penalty", "frequency_penalty")  # OpenAI's parameters TGI takes under the same name
    stop = "stop"
    end_marker = "its last event (the one with details)"

    @classmethod
    def body(cls, request: GenerationRequest, parameters: dict[str, Any]) -> Any:
        parameters["details"] = True
        limit, temperature = request.token_limit(), request.sampling_temperature()
        if limit is not None:
            parameters["max_new_tokens"] = limit
        if temperature:  # TGI wants > 0; 0 means greedy, its default
            parameters["temperature"] = temperature
        return {"inputs": prompt_text(request.messages), "parameters": parameters}

    def _on_event(self, data: bytes | str) -> None:
        try:
            event = _decode_event(data)
        except msgspec.DecodeError as exc:
            repaired = self._repaired(_decode_event, data, "event", exc)
            if repaired is None:
                return
            event = repaired
        if event.error is not None:
            self._failed(event.error, event.error_type)
            return
        token = event.token
        if token is not None and token.text and not token.special:
            self._emit(Delta(token.text))
        details = event.details
        if details is not None:
            self._emit(Usage.counted(details.input_length, details.generated_tokens))
            self._end(Finish(_FINISH.get(details.finish_reason, details.finish_reason)))
        elif event.generated_text is not None:  # the last event, from a server not asked for details
            self._end(Finish("stop"))
