"""Ollama's native chat protocol: ``POST {base}/api/chat``, answered in NDJSON.

The request is ``{"model", "messages", "stream": true, "options": {...}}``: message
contents are plain text (text parts of a list are joined), ``max_tokens`` becomes
``num_predict`` (the relay's limit when the client gave none). Beyond text:

- ``tools`` go as sent (OpenAI's function tools are Ollama's shape); Ollama has no
  ``tool_choice``, so ``"none"`` sends no tools and a named function sends that tool alone;
- an assistant message's ``tool_calls`` go in Ollama's shape, ``{"function": {"name",
  "arguments": {…}}}`` with the arguments decoded to an object (arguments that are not a JSON
  object go as sent, for Ollama to refuse); its ``reasoning_content`` (or ``reasoning``) goes as
  ``thinking``; a ``tool`` message gets the ``tool_name`` of the call its ``tool_call_id`` answers;
- ``think`` as the client sent it, else ``true`` when it asked for reasoning
  (``reasoning_effort``, ``false`` for ``"none"``).

Each line of the response is one JSON object::

    {"model":"llama3.2","created_at":"...","message":{"role":"assistant","content":"The"},"done":false}

``message.thinking`` is reasoning, ``message.content`` text, and ``message.tool_calls`` whole
calls (no index, no id in the documented API; arguments an object). Each call becomes one
``ToolCall`` with the next index of the stream (across lines), its arguments JSON-encoded, and
its own ``id`` if Ollama gave one, else ``call_`` and 24 hex digits of a hash of the line's
``created_at``, the model, the call's index, name and arguments: the same bytes give the same id
however they are split, and Ollama's nanosecond timestamps make it differ between answers.

The last line has ``"done": true`` with ``done_reason`` (``stop``, ``length``…),
``prompt_eval_count`` and ``eval_count`` (the token counts, ``None`` when left out). Ollama says
``stop`` after tool calls: that is ``tool_calls``, as its own OpenAI-compatible API says it
(``length`` stays ``length``). An error is a line ``{"error": "..."}``, or an error status with
that body. A body that ends before the ``done`` line is ``upstream_incomplete``; a line longer
than 1 MiB is ``upstream_malformed``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from app.streaming.events import Delta, Event, Finish, Reasoning, ToolCall, Usage
from app.streaming.request import GenerationRequest, content_text
from app.streaming.upstreams.handler import LinesStreamHandler
from app.streaming.upstreams.openai import MAX_CALLS


class _Function(msgspec.Struct):
    name: str = ""
    arguments: dict[str, Any] | list[Any] | str | None = None


class _ToolCall(msgspec.Struct):
    function: _Function | None = None
    id: str | None = None


class _Message(msgspec.Struct):
    content: str = ""
    thinking: str = ""
    tool_calls: list[_ToolCall] | None = None


class _Line(msgspec.Struct):
    message: _Message | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None  # left out when the prompt was cached
    eval_count: int | None = None
    error: str | None = None


class _Stamp(msgspec.Struct):
    """What a generated call id is derived from: read again from the line, only for such a call."""

    created_at: str = ""
    model: str = ""


_decode_line = msgspec.json.Decoder(_Line).decode
_decode_stamp = msgspec.json.Decoder(_Stamp).decode
_encode = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode


def _arguments(arguments: Any) -> Any:
    """OpenAI's arguments (JSON text) as Ollama wants them: an object."""
    if not isinstance(arguments, str):
        return arguments if arguments is not None else {}
    if not arguments.strip():
        return {}
    try:
        decoded = _decode_json(arguments)
    except msgspec.DecodeError:
        return arguments
    return decoded if isinstance(decoded, dict) else arguments


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}  # a call's id → its function's name, for the tool message that answers it
    sent: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role", "user")
        out: dict[str, Any] = {"role": role, "content": content_text(message.get("content"))}
        calls = message.get("tool_calls")
        if role == "assistant" and isinstance(calls, list) and calls:
            out["tool_calls"] = []
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    continue
                name = str(function.get("name") or "")
                if isinstance(call.get("id"), str):
                    names[call["id"]] = name
                out["tool_calls"].append({"function": {"name": name, "arguments": _arguments(function.get("arguments"))}})
        reasoning = message.get("reasoning_content", message.get("reasoning")) if role == "assistant" else None
        if isinstance(reasoning, str) and reasoning:
            out["thinking"] = reasoning
        if role == "tool":
            tool_name = message.get("name") or names.get(str(message.get("tool_call_id")))
            if isinstance(tool_name, str) and tool_name:
                out["tool_name"] = tool_name
        sent.append(out)
    return sent


def _tools(extra: dict[str, Any]) -> list[Any] | None:
    tools, choice = extra.get("tools"), extra.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if isinstance(choice, dict) and isinstance(function := choice.get("function"), dict):
        named = [tool for tool in tools if isinstance(tool, dict) and (tool.get("function") or {}).get("name") == function.get("name")]
        return named or tools
    return tools


def _think(extra: dict[str, Any]) -> Any:
    if extra.get("think") is not None:
        return extra["think"]
    effort = extra.get("reasoning_effort")
    return None if effort is None else effort != "none"


def call_id(line: bytes | str, index: int, name: str, arguments: str) -> str:
    """A stable id for a call Ollama gave none, from the line that carried it."""
    try:
        stamp = _decode_stamp(line)
    except msgspec.DecodeError:  # a line read only once repaired
        stamp = _Stamp()
    seed = "\0".join((stamp.created_at, stamp.model, str(index), name, arguments)).encode()
    return "call_" + hashlib.blake2b(seed, digest_size=12).hexdigest()


class ChatLines(LinesStreamHandler):
    __slots__ = ("_calls",)

    path = "/api/chat"
    passes = ("top_p", "top_k", "seed", "frequency_penalty", "presence_penalty")  # OpenAI's parameters Ollama takes in its options
    stop = "stop"
    end_marker = 'its "done" line'

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        super().__init__(emit, flush)
        self._calls = 0

    @classmethod
    def body(cls, request: GenerationRequest, parameters: dict[str, Any]) -> Any:
        extra, options = request.extra, parameters
        # Without num_predict Ollama generates until the model stops, however long: the relay's limit bounds it.
        limit, temperature = request.token_limit() or request.max_tokens_limit, request.sampling_temperature()
        if limit is not None:
            options["num_predict"] = limit
        if temperature is not None:
            options["temperature"] = temperature
        body: dict[str, Any] = {"model": request.model, "messages": _messages(request.messages), "stream": True, "options": options}
        if (tools := _tools(extra)) is not None:
            body["tools"] = tools
        if (think := _think(extra)) is not None:
            body["think"] = think
        return body

    def _on_event(self, line: bytes | str) -> None:
        try:
            parsed = _decode_line(line)
        except msgspec.DecodeError as exc:
            repaired = self._repaired(_decode_line, line, "line", exc)
            if repaired is None:
                return
            parsed = repaired
        if parsed.error is not None:
            self._failed(parsed.error)
            return
        message = parsed.message
        if message is not None:
            if message.thinking:
                self._emit(Reasoning(message.thinking))
            if message.content:
                self._emit(Delta(message.content))
            if message.tool_calls:
                self._on_calls(line, message.tool_calls)
                if self._ended:
                    return
        if parsed.done:
            self._emit(Usage.counted(parsed.prompt_eval_count, parsed.eval_count))
            reason = parsed.done_reason or "stop"
            self._end(Finish("tool_calls" if reason == "stop" and self._calls else reason))

    def _on_calls(self, line: bytes | str, calls: list[_ToolCall]) -> None:
        for call in calls:
            if self._calls >= MAX_CALLS:
                self._end(self._error("upstream_malformed", f"more than {MAX_CALLS} tool calls in one choice from the model server"))
                return
            function = call.function or _Function()
            arguments = function.arguments
            text = arguments if isinstance(arguments, str) else _encode(arguments if arguments is not None else {}).decode()
            index, self._calls = self._calls, self._calls + 1
            self._emit(ToolCall(index, call.id or call_id(line, index, function.name, text), function.name, text))
