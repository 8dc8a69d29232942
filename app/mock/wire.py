"""The mock model server's wire formats: what each protocol's request and answer look like.

``MockModel`` (server.py) decides what to say and when; a ``Wire`` here says it in one
protocol: OpenAI chat completions (SSE, ``[DONE]``), TGI ``/generate_stream`` (SSE, details
on the last event) and ``/generate``, Ollama ``/api/chat`` (NDJSON, ``done``) and Anthropic
``/v1/messages`` (named SSE events, ``message_stop``). The frames follow each server's
public documentation; tests/streaming/upstreams/fixtures/ holds transcribed examples.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode


class _Message(msgspec.Struct):
    role: str = "user"
    content: str | list[dict[str, Any]] | None = None


class _Options(msgspec.Struct):
    include_usage: bool = False


class MockRequest(msgspec.Struct):
    """The part of an OpenAI chat completions request the mock reads."""

    model: str = "mock"
    messages: list[_Message] = []
    stream: bool = False
    stream_options: _Options | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class _TGIParameters(msgspec.Struct):
    max_new_tokens: int | None = None


class _TGIRequest(msgspec.Struct):
    inputs: str = ""
    parameters: _TGIParameters | None = None


class _OllamaOptions(msgspec.Struct):
    num_predict: int | None = None


class _OllamaRequest(msgspec.Struct):
    model: str = "mock"
    messages: list[_Message] = []
    stream: bool = True
    options: _OllamaOptions | None = None


class _AnthropicRequest(msgspec.Struct):
    model: str = "mock"
    messages: list[_Message] = []
    max_tokens: int | None = None
    stream: bool = False


decode_request = msgspec.json.Decoder(MockRequest).decode
_decode_tgi = msgspec.json.Decoder(_TGIRequest).decode
_decode_ollama = msgspec.json.Decoder(_OllamaRequest).decode
_decode_anthropic = msgspec.json.Decoder(_AnthropicRequest).decode


def prompt_of(request: MockRequest | _OllamaRequest | _AnthropicRequest) -> str:
    """The last user message's text: what the mock's answer is derived from."""
    for message in reversed(request.messages):
        if message.role == "user":
            content = message.content
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(part.get("text", "")) for part in content)
    return ""


class Call(msgspec.Struct):
    """A request, whatever its protocol: what the mock needs to answer it."""

    model: str
    prompt: str
    stream: bool
    max_tokens: int | None = None
    include_usage: bool = False


class Answer(msgspec.Struct):
    """What the mock answers: its tokens, why it stops, its usage."""

    id: str
    model: str
    tokens: list[str]
    reason: str  # "stop" or "length"
    prompt_tokens: int


class Wire:
    """One protocol: parse a request; frame an answer (streamed or whole) and the faults."""

    content_type = b"text/event-stream"

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.created = int(time.time())

    @staticmethod
    def parse(body: bytes) -> Call:
        raise NotImplementedError

    @staticmethod
    def error_status(status: int, message: str) -> Any:
        kind = "rate_limit_error" if status == 429 else "server_error"
        return {"error": {"message": message, "type": kind, "code": "mock_fault"}}

    def head(self) -> bytes:
        """Sent with the first token."""
        return b""

    def token(self, index: int) -> bytes:
        raise NotImplementedError

    def tail(self, include_usage: bool) -> bytes:
        """Everything after the last token, end marker included."""
        raise NotImplementedError

    def error_event(self) -> bytes:
        raise NotImplementedError

    malformed = b'data: {"choices": [\n\n'

    def whole(self) -> Any:
        raise NotImplementedError


class OpenAIWire(Wire):
    def __init__(self, answer: Answer) -> None:
        super().__init__(answer)
        self._head = b'data: {"id":"%b","object":"chat.completion.chunk","created":%d,"model":%b,"choices":[' % (
            answer.id.encode(), self.created, _encode(answer.model))

    @staticmethod
    def parse(body: bytes) -> Call:
        request = decode_request(body)
        include_usage = request.stream_options is not None and request.stream_options.include_usage
        return Call(request.model, prompt_of(request), request.stream, request.max_completion_tokens or request.max_tokens, include_usage)

    def head(self) -> bytes:
        return self._head + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'

    def token(self, index: int) -> bytes:
        return self._head + b'{"index":0,"delta":{"content":' + _encode(self.answer.tokens[index]) + b'},"finish_reason":null}]}\n\n'

    def tail(self, include_usage: bool) -> bytes:
        end = self._head + b'{"index":0,"delta":{},"finish_reason":' + _encode(self.answer.reason) + b"}]}\n\n"
        if include_usage:
            end += self._head + b'],"usage":' + _encode(self._usage()) + b"}\n\n"
        return end + b"data: [DONE]\n\n"

    def _usage(self) -> dict[str, int]:
        prompt, completion = self.answer.prompt_tokens, len(self.answer.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def error_event(self) -> bytes:
        error = {"error": {"message": "mock fault: the model failed mid-stream", "type": "server_error", "code": "mock_fault"}}
        return b"data: " + _encode(error) + b"\n\ndata: [DONE]\n\n"

    def whole(self) -> Any:
        answer = self.answer
        return {
            "id": answer.id, "object": "chat.completion", "created": self.created, "model": answer.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(answer.tokens)}, "finish_reason": answer.reason}],
            "usage": self._usage(),
        }


class TGIWire(Wire):
    """TGI writes ``data:`` with no space; its last event is a token with ``generated_text`` and ``details``."""

    @staticmethod
    def parse(body: bytes) -> Call:
        request = _decode_tgi(body)
        limit = request.parameters.max_new_tokens if request.parameters is not None else None
        return Call("tgi", request.inputs, True, limit)

    @staticmethod
    def error_status(status: int, message: str) -> Any:
        return {"error": message, "error_type": "overloaded" if status == 429 else "generation"}

    def _details(self) -> bytes:
        answer = self.answer
        reason = "length" if answer.reason == "length" else "eos_token"
        return b'"generated_text":%b,"details":{"finish_reason":"%b","generated_tokens":%d,"seed":null,"input_length":%d}' % (
            _encode("".join(answer.tokens)), reason.encode(), len(answer.tokens), answer.prompt_tokens)

    def token(self, index: int) -> bytes:
        last = index == len(self.answer.tokens) - 1 and self.answer.reason == "length"
        end = self._details() if last else b'"generated_text":null,"details":null'
        text = _encode(self.answer.tokens[index])
        return b'data:{"index":%d,"token":{"id":%d,"text":%b,"logprob":-0.5,"special":false},%b}\n\n' % (index + 1, 100 + index, text, end)

    def tail(self, include_usage: bool) -> bytes:
        if self.answer.reason == "length":
            return b""
        index = len(self.answer.tokens) + 1
        return b'data:{"index":%d,"token":{"id":2,"text":"</s>","logprob":-0.1,"special":true},%b}\n\n' % (index, self._details())

    def error_event(self) -> bytes:
        return b'data:{"error":"mock fault: the model failed mid-stream","error_type":"generation"}\n\n'

    malformed = b'data:{"index":\n\n'

    def whole(self) -> Any:
        answer = self.answer
        reason = "length" if answer.reason == "length" else "eos_token"
        details = {"finish_reason": reason, "generated_tokens": len(answer.tokens), "seed": None, "input_length": answer.prompt_tokens}
        return {"generated_text": "".join(answer.tokens), "details": details}


class OllamaWire(Wire):
    content_type = b"application/x-ndjson"

    @staticmethod
    def parse(body: bytes) -> Call:
        request = _decode_ollama(body)
        limit = request.options.num_predict if request.options is not None else None
        return Call(request.model, prompt_of(request), request.stream, limit)

    @staticmethod
    def error_status(status: int, message: str) -> Any:
        return {"error": message}

    def _line(self, content: str, done: bool) -> dict[str, Any]:
        return {"model": self.answer.model, "created_at": "2024-07-22T20:33:28.123456Z", "message": {"role": "assistant", "content": content}, "done": done}

    def token(self, index: int) -> bytes:
        return _encode(self._line(self.answer.tokens[index], False)) + b"\n"

    def _done(self, content: str) -> dict[str, Any]:
        answer = self.answer
        return self._line(content, True) | {
            "done_reason": answer.reason, "total_duration": 4883583458, "load_duration": 1334875, "prompt_eval_count": answer.prompt_tokens,
            "prompt_eval_duration": 342546000, "eval_count": len(answer.tokens), "eval_duration": 4535599000,
        }

    def tail(self, include_usage: bool) -> bytes:
        return _encode(self._done("")) + b"\n"

    def error_event(self) -> bytes:
        return b'{"error":"mock fault: the model failed mid-stream"}\n'

    malformed = b'{"message": {"content": \n'

    def whole(self) -> Any:
        return self._done("".join(self.answer.tokens))


class AnthropicWire(Wire):
    @staticmethod
    def parse(body: bytes) -> Call:
        request = _decode_anthropic(body)
        return Call(request.model, prompt_of(request), request.stream, request.max_tokens)

    @staticmethod
    def error_status(status: int, message: str) -> Any:
        return {"type": "error", "error": {"type": "rate_limit_error" if status == 429 else "api_error", "message": message}}

    @staticmethod
    def _event(name: str, data: Any) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"

    def _stop_reason(self) -> str:
        return "max_tokens" if self.answer.reason == "length" else "end_turn"

    def head(self) -> bytes:
        answer = self.answer
        message: dict[str, Any] = {
            "id": answer.id, "type": "message", "role": "assistant", "content": [], "model": answer.model, "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": 1},
        }
        return (self._event("message_start", {"type": "message_start", "message": message})
                + self._event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
                + self._event("ping", {"type": "ping"}))

    def token(self, index: int) -> bytes:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": self.answer.tokens[index]}}
        return self._event("content_block_delta", delta)

    def tail(self, include_usage: bool) -> bytes:
        usage = {"output_tokens": len(self.answer.tokens)}
        delta = {"type": "message_delta", "delta": {"stop_reason": self._stop_reason(), "stop_sequence": None}, "usage": usage}
        return (self._event("content_block_stop", {"type": "content_block_stop", "index": 0}) + self._event("message_delta", delta)
                + self._event("message_stop", {"type": "message_stop"}))

    def error_event(self) -> bytes:
        return self._event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "mock fault: the model failed mid-stream"}})

    malformed = b'event: content_block_delta\ndata: {"type": "content_block_delta", \n\n'

    def whole(self) -> Any:
        answer = self.answer
        return {
            "id": answer.id, "type": "message", "role": "assistant", "model": answer.model,
            "content": [{"type": "text", "text": "".join(answer.tokens)}], "stop_reason": self._stop_reason(), "stop_sequence": None,
            "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": len(answer.tokens)},
        }


def wire_for(path: str) -> type[Wire] | None:
    """The protocol a request path speaks, if any."""
    if path.endswith("/chat/completions"):
        return OpenAIWire
    if path.endswith("/api/chat"):
        return OllamaWire
    if path.endswith("/messages"):
        return AnthropicWire
    if path.endswith(("/generate_stream", "/generate")):
        return TGIWire
    return None
