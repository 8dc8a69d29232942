"""The mock model server's wire formats: what each protocol's request and answer look like.

``MockModel`` (server.py) decides when to speak and ``compose`` (answer.py) what to say; a
``Wire`` says it in one protocol: OpenAI chat completions (openai.py), TGI's native API and its
Messages API (tgi.py), Ollama ``/api/chat`` (ollama.py) and Anthropic ``/v1/messages``
(anthropic.py). The frames follow each server's public documentation;
tests/streaming/upstreams/fixtures/ holds transcribed examples.

A streamed answer is ``head()``, then ``count`` frames paced one by one (``framer()``), then
``tail()``. A plain text answer frames each token as it goes (``token(i)``), the cheapest path;
any other answer is framed whole up front (``frames()``), since it is short.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from app.mock.answer import Answer, Call, Tool
from app.mock.options import Options

_encode = msgspec.json.Encoder().encode


class Message(msgspec.Struct):
    role: str = "user"
    content: str | list[dict[str, Any]] | None = None


class Function(msgspec.Struct):
    name: str = ""
    parameters: dict[str, Any] | None = None


class FunctionTool(msgspec.Struct):
    """A tool as OpenAI and Ollama declare it."""

    type: str = "function"
    function: Function | None = None


def text_of(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content)
    return content or ""


def prompt_of(messages: list[Message]) -> str:
    """The last user message's text: what the mock's answer is derived from (a message of tool results alone is passed over)."""
    for message in reversed(messages):
        if message.role == "user":
            if isinstance(message.content, list) and not any("text" in part for part in message.content):
                continue
            return text_of(message.content)
    return ""


def trailing_results(messages: list[Message], role: str = "tool") -> list[str]:
    """The contents of the ``role`` messages that end the conversation: tool results waiting for an answer."""
    results: list[str] = []
    for message in reversed(messages):
        if message.role != role:
            break
        results.insert(0, text_of(message.content))
    return results


def tool_of(name: str, schema: dict[str, Any] | None) -> Tool:
    """A declared tool: its name and each parameter's JSON type, from its JSON schema."""
    properties = schema.get("properties") if schema is not None else None
    if not isinstance(properties, dict):
        return Tool(name)
    types = {}
    for key, spec in properties.items():
        kind = spec.get("type", "string") if isinstance(spec, dict) else "string"
        types[str(key)] = kind if isinstance(kind, str) else next((k for k in kind if k != "null"), "string")
    return Tool(name, types)


def function_tools(tools: list[FunctionTool] | None) -> list[Tool]:
    return [tool_of(tool.function.name, tool.function.parameters) for tool in tools or () if tool.function is not None]


class Wire:
    """One protocol: parse a request; frame an answer (streamed or whole) and the faults."""

    content_type = b"text/event-stream"

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.created = int(time.time())
        self._tokens = answer.tokens  # what token() reads, bound once: it runs for every token of a plain answer
        self.prepare()
        self._frames = None if answer.plain else self.frames()
        self.count = len(self._tokens) if self._frames is None else len(self._frames)

    def framer(self) -> Callable[[int], bytes]:
        """What frames ``i`` (of ``count``), bound for each caller: kept on the wire, it would make a cycle."""
        return self.token if self._frames is None else self._frames.__getitem__

    def prepare(self) -> None:
        """Build once what the frames share, before any is framed."""

    @staticmethod
    def parse(body: bytes) -> Call:
        raise NotImplementedError

    @staticmethod
    def narrow(call: Call, options: Options) -> tuple[Call, Options]:
        """What of ``call`` and ``options`` this protocol can answer: the rest is left out."""
        return call, options

    @staticmethod
    def error_status(status: int, message: str) -> Any:
        kind = "rate_limit_error" if status == 429 else "server_error"
        return {"error": {"message": message, "type": kind, "code": "mock_fault"}}

    def head(self) -> bytes:
        """Sent with the first frame."""
        return b""

    def token(self, index: int) -> bytes:
        """The frame of a plain text answer's token ``index``."""
        raise NotImplementedError

    def frames(self) -> list[bytes]:
        """Every frame of any other answer."""
        raise NotImplementedError

    def tail(self, include_usage: bool) -> bytes:
        """Everything after the last frame, end marker included."""
        raise NotImplementedError

    def error_event(self) -> bytes:
        raise NotImplementedError

    malformed = b'data: {"choices": [\n\n'

    def whole(self) -> Any:
        raise NotImplementedError
