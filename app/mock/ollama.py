"""The mock's Ollama ``POST …/api/chat``: NDJSON lines up to ``done: true``, or one message (``"stream": false``).

As Ollama's API documents it: ``message.thinking`` lines before the content (for a thinking model,
or ``think`` in the request), and the tool calls whole in one line, ``message.tool_calls``
``[{"function": {"name", "arguments": {…}}}]`` with arguments as an object, no index and no id.
A call cut off by the token limit never appears (Ollama sends a call only once it parses), and
``done_reason`` is ``stop`` after calls. A refusal is plain content: Ollama has no field for it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.mock.answer import Call, Choice
from app.mock.wire import FunctionTool, Message, Wire, function_tools, prompt_of, trailing_results

_encode = msgspec.json.Encoder().encode


class _Options(msgspec.Struct):
    num_predict: int | None = None


class _Request(msgspec.Struct):
    model: str = "mock"
    messages: list[Message] = []
    stream: bool = True
    options: _Options | None = None
    tools: list[FunctionTool] | None = None
    think: bool | str | None = None


_decode = msgspec.json.Decoder(_Request).decode


class OllamaWire(Wire):
    content_type = b"application/x-ndjson"

    @staticmethod
    def parse(body: bytes) -> Call:
        request = _decode(body)
        limit = request.options.num_predict if request.options is not None else None
        return Call(request.model, prompt_of(request.messages), request.stream, limit, tools=function_tools(request.tools),
                    results=trailing_results(request.messages), reasoning=request.think not in (None, False))

    @staticmethod
    def error_status(status: int, message: str) -> Any:
        return {"error": message}

    def _line(self, content: str, done: bool, **message: Any) -> dict[str, Any]:
        return {"model": self.answer.model, "created_at": "2024-07-22T20:33:28.123456Z",
                "message": {"role": "assistant", "content": content, **message}, "done": done}

    def token(self, index: int) -> bytes:
        return _encode(self._line(self._tokens[index], False)) + b"\n"

    @staticmethod
    def _calls(choice: Choice) -> list[dict[str, Any]]:
        return [{"function": {"name": call.name, "arguments": call.arguments}} for call in choice.calls if call.complete]

    def frames(self) -> list[bytes]:
        choice = self.answer.choices[0]
        lines = [self._line("", False, thinking=token) for token in choice.reasoning]
        lines += [self._line(token, False) for token in choice.content + choice.refusal]
        if calls := self._calls(choice):
            lines.append(self._line("", False, tool_calls=calls))
        return [_encode(line) + b"\n" for line in lines]

    def _done(self, content: str, **message: Any) -> dict[str, Any]:
        answer = self.answer
        return self._line(content, True, **message) | {
            "done_reason": "length" if answer.reason == "length" else "stop", "total_duration": 4883583458, "load_duration": 1334875,
            "prompt_eval_count": answer.prompt_tokens, "prompt_eval_duration": 342546000, "eval_count": answer.completion_tokens,
            "eval_duration": 4535599000,
        }

    def tail(self, include_usage: bool) -> bytes:
        return _encode(self._done("")) + b"\n"

    def error_event(self) -> bytes:
        return b'{"error":"mock fault: the model failed mid-stream"}\n'

    malformed = b'{"message": {"content": \n'

    def whole(self) -> Any:
        choice = self.answer.choices[0]
        message: dict[str, Any] = {}
        if choice.reasoning:
            message["thinking"] = "".join(choice.reasoning)
        if calls := self._calls(choice):
            message["tool_calls"] = calls
        return self._done("".join(choice.content + choice.refusal), **message)
