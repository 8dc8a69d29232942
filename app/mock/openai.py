"""The mock's OpenAI chat completions (``POST …/chat/completions``): SSE chunks and ``[DONE]``, or one ``chat.completion``.

Beyond text it streams what OpenAI and vLLM stream: ``delta.reasoning_content`` (or vLLM's newer
``reasoning``), ``delta.refusal``, ``delta.tool_calls`` (a call's first chunk with its index, id,
type, name and ``arguments: ""``, then its index and an arguments fragment, the calls'
fragments interleaved), ``logprobs`` per chunk, ``n`` choices, and usage with its details.
"""

from __future__ import annotations

from itertools import zip_longest
from typing import Any

import msgspec

from app.mock.answer import Call, Choice, ToolCall, logprob
from app.mock.wire import FunctionTool, Message, Wire, function_tools, prompt_of, trailing_results

_encode = msgspec.json.Encoder().encode


class _Options(msgspec.Struct):
    include_usage: bool = False


class MockRequest(msgspec.Struct):
    """The part of an OpenAI chat completions request the mock reads."""

    model: str = "mock"
    messages: list[Message] = []
    stream: bool = False
    stream_options: _Options | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    n: int | None = None


decode_request = msgspec.json.Decoder(MockRequest).decode


def tool_choice_of(choice: str | dict[str, Any] | None) -> str | None:
    """``"none"``, the name of a tool the request insists on, or None (the model chooses)."""
    if isinstance(choice, dict):
        function = choice.get("function")
        return str(function.get("name")) if isinstance(function, dict) else None
    return "none" if choice == "none" else None


class OpenAIWire(Wire):
    reasoning_field = "reasoning_content"

    def prepare(self) -> None:
        answer = self.answer
        self._head = b'data: {"id":"%b","object":"chat.completion.chunk","created":%d,"model":%b,"choices":[' % (
            answer.id.encode(), self.created, _encode(answer.model))
        if answer.reasoning_style == "vllm":
            self.reasoning_field = "reasoning"

    @staticmethod
    def parse(body: bytes) -> Call:
        request = decode_request(body)
        include_usage = request.stream_options is not None and request.stream_options.include_usage
        return Call(
            request.model, prompt_of(request.messages), request.stream, request.max_completion_tokens or request.max_tokens, include_usage,
            tools=function_tools(request.tools), tool_choice=tool_choice_of(request.tool_choice), parallel=request.parallel_tool_calls is not False,
            results=trailing_results(request.messages), reasoning=request.reasoning_effort not in (None, "none"),
            logprobs=min(request.top_logprobs or 0, 20) if request.logprobs else None, n=request.n or 1,
        )

    def head(self) -> bytes:
        if self.answer.plain:
            return self._head + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
        return b"".join(self._chunk(choice.index, {"role": "assistant", "content": "" if self._texts(choice) else None})
                        for choice in self.answer.choices)

    def token(self, index: int) -> bytes:
        return self._head + b'{"index":0,"delta":{"content":' + _encode(self._tokens[index]) + b'},"finish_reason":null}]}\n\n'

    def frames(self) -> list[bytes]:
        # Choices take turns, a frame each, as a server generating them together sends them.
        per_choice = [self._choice_frames(choice) for choice in self.answer.choices]
        return [frame for step in zip_longest(*per_choice) for frame in step if frame is not None]

    def _choice_frames(self, choice: Choice) -> list[bytes]:
        index, top = choice.index, self.answer.logprobs
        frames = [self._chunk(index, {self.reasoning_field: token}) for token in choice.reasoning]
        for field, tokens in (("content", choice.content), ("refusal", choice.refusal)):
            for position, token in enumerate(tokens):
                logprobs = None if top is None else {"content": None, "refusal": None} | {field: [logprob(token, position, top)]}
                frames.append(self._chunk(index, {field: token}, logprobs))
        return frames + self._call_frames(choice)

    def _call_frames(self, choice: Choice) -> list[bytes]:
        per_call = [[{"index": k, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}},
                     *({"index": k, "function": {"arguments": fragment}} for fragment in call.fragments)]
                    for k, call in enumerate(choice.calls)]
        steps = zip_longest(*per_call) if self.answer.interleaved else per_call
        return [self._chunk(choice.index, {"tool_calls": [delta]}) for step in steps for delta in step if delta is not None]

    def _chunk(self, index: int, delta: dict[str, Any], logprobs: dict[str, Any] | None = None, reason: str | None = None) -> bytes:
        choice: dict[str, Any] = {"index": index, "delta": delta}
        if self.answer.logprobs is not None:
            choice["logprobs"] = logprobs
        choice["finish_reason"] = reason
        return self._head + _encode(choice) + b"]}\n\n"

    @staticmethod
    def _texts(choice: Choice) -> bool:
        """Whether the message has content text: it is ``""`` then, else ``null`` (only calls or a refusal)."""
        return bool(choice.content) or not (choice.calls or choice.refusal)

    def tail(self, include_usage: bool) -> bytes:
        if self.answer.plain:
            end = self._head + b'{"index":0,"delta":{},"finish_reason":' + _encode(self.answer.reason) + b"}]}\n\n"
        else:
            end = b"".join(self._chunk(choice.index, {}, reason=choice.reason) for choice in self.answer.choices)
        if include_usage:
            end += self._head + b'],"usage":' + _encode(self._usage()) + b"}\n\n"
        return end + b"data: [DONE]\n\n"

    def _usage(self) -> dict[str, Any]:
        answer = self.answer
        prompt, completion = answer.prompt_tokens, answer.completion_tokens
        return {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": answer.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
        }

    def error_event(self) -> bytes:
        error = {"error": {"message": "mock fault: the model failed mid-stream", "type": "server_error", "code": "mock_fault"}}
        return b"data: " + _encode(error) + b"\n\ndata: [DONE]\n\n"

    def whole(self) -> Any:
        answer = self.answer
        return {
            "id": answer.id, "object": "chat.completion", "created": self.created, "model": answer.model,
            "choices": [self._whole_choice(choice) for choice in answer.choices], "usage": self._usage(),
        }

    def _whole_choice(self, choice: Choice) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(choice.content) if self._texts(choice) else None}
        if choice.reasoning:
            message[self.reasoning_field] = "".join(choice.reasoning)
        if choice.refusal:
            message["refusal"] = "".join(choice.refusal)
        if choice.calls:
            message["tool_calls"] = [self._whole_call(call) for call in choice.calls]
        whole: dict[str, Any] = {"index": choice.index, "message": message, "finish_reason": choice.reason}
        top = self.answer.logprobs
        if top is not None:
            content = [logprob(token, position, top) for position, token in enumerate(choice.content)]
            refusal = [logprob(token, position, top) for position, token in enumerate(choice.refusal)]
            whole["logprobs"] = {"content": content or None, "refusal": refusal or None} if content or refusal else None
        return whole

    @staticmethod
    def _whole_call(call: ToolCall) -> dict[str, Any]:
        return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.text}}
