"""The mock as TGI: its native ``POST …/generate_stream`` and ``…/generate``, and its Messages API (``x-mock-server: tgi``).

The native API has text only (no tools, reasoning or refusals exist in it): ``data:`` with no
space, the last event a token with ``generated_text`` and ``details``.

The Messages API is OpenAI's chat completions as TGI 3 answers them (router/src/chat.rs and its
integration snapshots): one call at most (TGI has no parallel calls, and a call or text, not
both), every chunk of it with ``index: 0``, ``id: "0"`` and ``type``, ``role`` and
``content: null`` in each delta, the name only in the first (``null`` after), the finish reason
on the last fragment and ``stop`` even after a call; no reasoning field, usage without details.
Whole, the call's ``arguments`` are an object (as TGI sent them before 3.2), with
``description: null``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.mock.answer import Call, Choice, ToolCall
from app.mock.openai import OpenAIWire
from app.mock.options import Options
from app.mock.wire import Wire

_encode = msgspec.json.Encoder().encode


class _Parameters(msgspec.Struct):
    max_new_tokens: int | None = None


class _Request(msgspec.Struct):
    inputs: str = ""
    parameters: _Parameters | None = None


_decode = msgspec.json.Decoder(_Request).decode


class TGIWire(Wire):
    """TGI writes ``data:`` with no space; its last event is a token with ``generated_text`` and ``details``."""

    @staticmethod
    def parse(body: bytes) -> Call:
        request = _decode(body)
        limit = request.parameters.max_new_tokens if request.parameters is not None else None
        return Call("tgi", request.inputs, True, limit)

    @staticmethod
    def narrow(call: Call, options: Options) -> tuple[Call, Options]:
        return call, Options(fault=options.fault)

    @staticmethod
    def error_status(status: int, message: str) -> Any:
        return {"error": message, "error_type": "overloaded" if status == 429 else "generation"}

    def _details(self) -> bytes:
        answer = self.answer
        reason = "length" if answer.reason == "length" else "eos_token"
        return b'"generated_text":%b,"details":{"finish_reason":"%b","generated_tokens":%d,"seed":null,"input_length":%d}' % (
            _encode("".join(answer.tokens)), reason.encode(), len(answer.tokens), answer.prompt_tokens)

    def prepare(self) -> None:
        # A cut answer has no end-of-sequence token: its last token carries the details.
        self._cut_at = len(self._tokens) - 1 if self.answer.reason == "length" else -1

    def token(self, index: int) -> bytes:
        end = self._details() if index == self._cut_at else b'"generated_text":null,"details":null'
        text = _encode(self._tokens[index])
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


def _finish(choice: Choice) -> str:
    return "length" if choice.reason == "length" else "stop"


class TGIMessagesWire(OpenAIWire):
    @staticmethod
    def narrow(call: Call, options: Options) -> tuple[Call, Options]:
        tools = options.tools if options.tools in ("no-args", "length") else "one"
        return msgspec.structs.replace(call, reasoning=False, n=1), Options(fault=options.fault, tools=tools, server="tgi")

    def _call_frames(self, choice: Choice) -> list[bytes]:
        [call] = choice.calls
        return [self._chunk(0, {"role": "assistant", "content": None, "tool_calls": [{
            "index": 0, "id": "0", "type": "function", "function": {"name": None if i else call.name, "arguments": fragment},
        }]}, reason=_finish(choice) if i == len(call.fragments) - 1 else None) for i, fragment in enumerate(call.fragments)]

    def tail(self, include_usage: bool) -> bytes:
        if not self.answer.choices[0].calls:
            return super().tail(include_usage)
        usage = self._head + b'],"usage":' + _encode(self._usage()) + b"}\n\n" if include_usage else b""
        return usage + b"data: [DONE]\n\n"

    def _usage(self) -> dict[str, Any]:
        prompt, completion = self.answer.prompt_tokens, self.answer.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @staticmethod
    def _whole_call(call: ToolCall) -> dict[str, Any]:
        return {"id": "0", "type": "function", "function": {"description": None, "name": call.name, "arguments": call.written()}}

    def _whole_choice(self, choice: Choice) -> dict[str, Any]:
        return super()._whole_choice(choice) | {"finish_reason": _finish(choice)}
