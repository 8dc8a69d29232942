"""OpenAI's chat request as Anthropic's Messages request (``POST {base}/v1/messages``; its headers: ``MessageStream``).

- system (and developer) messages become the top-level ``system`` text; a ``user`` message
  keeps its text;
- an ``assistant`` message with ``tool_calls`` becomes content blocks: its text (when it has
  any: never an empty text block), then a ``tool_use`` block per call, ``{id, name, input}``
  with ``input`` the call's parsed JSON arguments (``{}`` for ``""``). Its ``thinking_blocks``
  (LiteLLM's field: ``thinking`` blocks with their signature, ``redacted_thinking``), if any,
  go first, as they came: Anthropic wants them back on the turn that called the tools;
- a ``tool`` message becomes a ``tool_result`` block (``tool_use_id``, ``content``) of a user
  message; messages of one role in a row are merged into one, since Anthropic's alternate;
- ``tools`` (function tools) become ``{name, description, input_schema}``; ``tool_choice``
  ``auto``, ``none``, ``required`` (Anthropic's ``any``) or a named function (``{"type": "tool",
  "name"}``); ``parallel_tool_calls: false`` is ``disable_parallel_tool_use``;
- ``thinking`` as the client sent it (an Anthropic parameter, e.g. through the OpenAI SDK's
  ``extra_body``), else ``reasoning_effort`` as ``thinking: {type: enabled, budget_tokens}``:
  ``minimal``/``low`` 1024 (Anthropic's least), ``medium`` 4096, ``high`` 16384, below
  ``max_tokens`` (too small a ``max_tokens`` for 1024 sends no ``thinking``);
- ``max_tokens``, which Anthropic requires, is the client's length, else 4096 (plus the thinking
  budget), or the relay's limit, if lower; ``temperature`` is capped at 1, Anthropic's maximum;
  ``stop`` becomes ``stop_sequences``; ``top_p`` and ``top_k`` pass through.

A request that came in Anthropic's own dialect (``GenerationRequest.anthropic``) is sent as the
client wrote it instead, with the route's model, its length and ``stream: true``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.streaming.request import GenerationRequest, content_text

DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

_decode = msgspec.json.decode


def request_body(request: GenerationRequest, parameters: dict[str, Any]) -> dict[str, Any]:
    """The Messages request for ``request``: a Messages client's own body as it sent it (``request.anthropic``), else the
    chat request translated, with the client's ``parameters`` Anthropic takes (``top_p``, ``top_k``, ``stop_sequences``)."""
    if request.anthropic is not None:
        return _native(request)
    extra, body = request.extra, parameters
    system, messages = _conversation(request.messages)
    effort = extra.get("reasoning_effort")
    budget = THINKING_BUDGETS.get(effort, 0) if isinstance(effort, str) else 0
    max_tokens = request.token_limit() or min(DEFAULT_MAX_TOKENS + budget, request.max_tokens_limit or DEFAULT_MAX_TOKENS + budget)
    body.update(model=request.model, max_tokens=max_tokens, messages=messages, stream=True)
    if system:
        body["system"] = "\n\n".join(system)
    temperature = request.sampling_temperature()
    if temperature is not None:
        body["temperature"] = min(temperature, 1.0)
    tools = _tools(extra.get("tools"))
    if tools:
        body["tools"] = tools
        choice = _tool_choice(extra.get("tool_choice"), extra.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    thinking = extra.get("thinking")
    if isinstance(thinking, dict):
        body["thinking"] = thinking
    elif min(budget, max_tokens - 1) >= MIN_THINKING_BUDGET:
        body["thinking"] = {"type": "enabled", "budget_tokens": min(budget, max_tokens - 1)}
    return body


def _native(request: GenerationRequest) -> dict[str, Any]:
    """The Messages request a client sent (already validated), for the model its route names, streamed."""
    return {**(request.anthropic or {}), "model": request.model, "max_tokens": request.token_limit(), "stream": True}


def _conversation(messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The system texts, and the other messages as Anthropic's, alternating."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role, content = message.get("role", "user"), message.get("content")
        if role in ("system", "developer"):
            system.append(content_text(content))
        elif role == "assistant":
            _add(out, "assistant", _assistant(message))
        elif role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": str(message.get("tool_call_id") or "")}
            text = content_text(content)
            if text:
                result["content"] = text
            _add(out, "user", [result])
        else:
            _add(out, "user", content_text(content))
    return system, out


def _add(messages: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"] = _blocks(messages[-1]["content"]) + _blocks(content)
    else:
        messages.append({"role": role, "content": content})


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []


def _assistant(message: dict[str, Any]) -> str | list[dict[str, Any]]:
    text = content_text(message.get("content"))
    calls, thinking = message.get("tool_calls"), message.get("thinking_blocks")
    blocks: list[dict[str, Any]] = [
        block for block in thinking if isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking")
    ] if isinstance(thinking, list) else []
    if text:
        blocks.append({"type": "text", "text": text})
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) and call.get("type", "function") == "function" else None
        if isinstance(function, dict):
            blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": _input(function.get("arguments"))})
    return blocks or text


def _input(arguments: Any) -> Any:
    """A call's arguments as Anthropic's ``input``: the JSON they are (what is not JSON is sent as it is, for Anthropic to refuse)."""
    if not isinstance(arguments, str):
        return arguments if arguments is not None else {}
    if not arguments.strip():
        return {}
    try:
        return _decode(arguments)
    except msgspec.DecodeError:
        return arguments


def _tools(tools: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        if not isinstance(function, dict) or not function.get("name"):
            continue
        declared: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            declared["description"] = function["description"]
        parameters = function.get("parameters")
        declared["input_schema"] = parameters if isinstance(parameters, dict) else _NO_PARAMETERS
        out.append(declared)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    match choice:
        case "auto":
            chosen: dict[str, Any] | None = {"type": "auto"}
        case "none":
            chosen = {"type": "none"}
        case "required":
            chosen = {"type": "any"}
        case {"function": {"name": str(name)}}:
            chosen = {"type": "tool", "name": name}
        case _:
            chosen = None
    if parallel is False:
        chosen = chosen or {"type": "auto"}
        if chosen["type"] != "none":
            chosen["disable_parallel_tool_use"] = True
    return chosen
