"""The OpenAI Responses API's request (``POST /v1/responses``), translated into a chat-shaped ``GenerationRequest``.

The relay keeps no conversations, so what asks for state is refused with a 400 that says so:
``store: true``, ``previous_response_id``, ``background``, ``conversation``, and ``item_reference``
items (an item stored by an earlier response). ``store`` left out is not a request for state: the
relay answers ``"store": false``. Tools other than functions, and input items and content the
chat shape cannot carry, are refused (400, ``param`` naming them) rather than dropped.

The translation: ``instructions`` becomes the first system message; ``input`` (a string, one user
message) or its items become chat messages (a ``function_call`` item joins the assistant message
before it as a tool call; a ``function_call_output`` is a ``tool`` message; a ``reasoning`` item is
left out, as chat messages have no place for it); function tools and ``tool_choice`` take the chat
shape; ``max_output_tokens`` is the length, ``reasoning.effort`` becomes ``reasoning_effort``
(each adapter maps it: Anthropic's ``thinking`` budget, Ollama's ``think``; TGI has none).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from app.errors import RequestError
from app.schemas import Temperature, TokenCount
from app.streaming.request import GenerationRequest

TopP = Annotated[float, msgspec.Meta(ge=0, le=1)]
TopLogprobs = Annotated[int, msgspec.Meta(ge=0, le=20)]

# Passed on to the model server under the same name, as chat completions calls them.
_PASSED = ("parallel_tool_calls", "user", "service_tier", "prompt_cache_key", "safety_identifier")
_ROLES = ("user", "system", "developer", "assistant")
_LOGPROBS = "message.output_text.logprobs"


class ReasoningConfig(msgspec.Struct, frozen=True):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(msgspec.Struct, frozen=True):
    """The fields the relay reads; any other is neither passed on nor refused (see the README)."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    input: str | list[dict[str, Any]] | None = None  # required: checked by ``messages_of``, which names it
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: TopLogprobs | None = None
    include: list[str] | None = None
    stream: bool = False
    reasoning: ReasoningConfig | None = None
    text: dict[str, Any] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    user: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None

    def lengths(self) -> list[tuple[str, int]]:
        return [("$.max_output_tokens", self.max_output_tokens)] if self.max_output_tokens is not None else []

    def logprobs(self) -> bool:
        return self.top_logprobs is not None or _LOGPROBS in (self.include or ())


def _unsupported(message: str, param: str) -> RequestError:
    return RequestError(400, "unsupported_parameter", message, param=param)


def refuse_state(request: ResponsesRequest) -> None:
    """The relay keeps no responses or conversations: a request that needs them is refused, never half-answered."""
    stateless = "the relay is stateless and keeps no responses; send the whole conversation in input"
    if request.store:
        raise _unsupported(f"store: true is not supported: {stateless} (and store: false, or leave store out)", "$.store")
    if request.previous_response_id is not None:
        raise _unsupported(f"previous_response_id is not supported: {stateless}", "$.previous_response_id")
    if request.background:
        raise _unsupported("background is not supported: the relay answers in the request (stream it for long answers)", "$.background")
    if request.conversation is not None:
        raise _unsupported(f"conversation is not supported: {stateless}", "$.conversation")


def _content(content: Any, path: str) -> str | list[dict[str, Any]]:
    """A message's content in the chat shape: its string, or its text and image parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(422, "invalid_request", "content must be a string or a list of content parts", param=path)
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        where = f"{path}[{index}]"
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _unsupported(f"content part {kind!r} is not supported here (input_text, output_text, refusal, input_image with an image_url)",
                               where + ".type")
    return parts


def _text_of(content: str | list[dict[str, Any]]) -> str:
    return content if isinstance(content, str) else "".join(part["text"] for part in content if part["type"] == "text")


def _text_only(content: str | list[dict[str, Any]], path: str, what: str) -> str:
    """The text of a tool result or an assistant message: their chat messages carry no image."""
    if not isinstance(content, str) and any(part["type"] != "text" for part in content):
        raise _unsupported(f"{what} may hold text only: its chat message carries no image", path)
    return _text_of(content)


def _string(item: dict[str, Any], key: str, path: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise RequestError(422, "invalid_request", f"{key} must be a string", param=f"{path}.{key}")
    return value


def messages_of(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The chat messages the request's ``instructions`` and ``input`` add up to."""
    if request.input is None or request.input == []:
        raise RequestError(422, "invalid_request", "input is required: a string, or a list of at least one item", param="$.input")
    messages: list[dict[str, Any]] = [{"role": "system", "content": request.instructions}] if request.instructions else []
    if isinstance(request.input, str):
        return [*messages, {"role": "user", "content": request.input}]
    for index, item in enumerate(request.input):
        path = f"$.input[{index}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise RequestError(422, "invalid_request", f"role must be one of {', '.join(_ROLES)}", param=path + ".role")
            content = _content(item.get("content"), path + ".content")
            messages.append({"role": role, "content": _text_only(content, path + ".content", "an assistant message") if role == "assistant" else content})
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", path), "type": "function",
                    "function": {"name": _string(item, "name", path), "arguments": _string(item, "arguments", path)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text_only(_content(output, path + ".output"), path + ".output", "a function_call_output")
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", path), "content": text})
        elif kind == "reasoning":
            continue  # chat messages cannot carry it back, and a model server needs none of it
        elif kind == "item_reference":
            raise _unsupported("item_reference is not supported: the relay is stateless and keeps no items; send the item itself "
                               "(with the AI SDK: providerOptions.openai.store = false)", path)
        else:
            raise _unsupported(f"input item {kind!r} is not supported here (message, function_call, function_call_output, reasoning)", path + ".type")
    return messages


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    translated = []
    for index, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise _unsupported(f"tool type {tool.get('type')!r} is not supported: the relay runs no hosted tools; declare functions",
                               f"$.tools[{index}].type")
        function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None}
        if not isinstance(function.get("name"), str):
            raise RequestError(422, "invalid_request", "a function tool needs a name", param=f"$.tools[{index}].name")
        translated.append({"type": "function", "function": function})
    return translated


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise RequestError(422, "invalid_request", "tool_choice must be auto, none, required or a function", param="$.tool_choice")
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _unsupported(f"tool_choice of type {choice.get('type')!r} is not supported: name a function", "$.tool_choice.type")


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    form = text.get("format")
    if not isinstance(form, dict) or form.get("type") in (None, "text"):
        return None
    if form["type"] == "json_object":
        return {"type": "json_object"}
    if form["type"] == "json_schema":
        return {"type": "json_schema", "json_schema": {key: form[key] for key in ("name", "schema", "strict", "description") if key in form}}
    raise _unsupported(f"text format {form['type']!r} is not supported (text, json_object, json_schema)", "$.text.format.type")


def extra_of(request: ResponsesRequest) -> dict[str, Any]:
    """The chat parameters besides the messages and the length."""
    extra: dict[str, Any] = {name: value for name in _PASSED if (value := getattr(request, name)) is not None}
    if request.tools:
        extra["tools"] = _tools(request.tools)
    if request.tool_choice is not None:
        extra["tool_choice"] = _tool_choice(request.tool_choice)
    if request.top_p is not None:
        extra["top_p"] = request.top_p
    if request.reasoning is not None and request.reasoning.effort is not None:
        extra["reasoning_effort"] = request.reasoning.effort
    if request.logprobs():
        extra["logprobs"] = True
        if request.top_logprobs:
            extra["top_logprobs"] = request.top_logprobs
    if request.text is not None and (form := _response_format(request.text)) is not None:
        extra["response_format"] = form
    return extra


def generation_request(rid: str, request: ResponsesRequest, max_tokens_limit: int) -> GenerationRequest:
    return GenerationRequest(
        rid, request.model, messages_of(request), max_tokens=request.max_output_tokens, temperature=request.temperature,
        extra=extra_of(request), max_tokens_limit=max_tokens_limit,
    )
