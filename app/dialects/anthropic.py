"""Anthropic's Messages API as a client dialect: the request, decoded and translated; errors in its shape.

The request is validated with msgspec (a bad field is a 400 naming its path, as the API answers)
and becomes a ``GenerationRequest`` in OpenAI's terms, which any upstream protocol can take:

- ``system`` (a string or text blocks) is a system message; ``messages`` keep their order:
  a user message's ``tool_result`` blocks become ``tool`` messages (their text; OpenAI has no
  ``is_error``), its text and ``image`` blocks its content (an image as an ``image_url`` part:
  base64 as a data URL, or the URL; a tool result's images join that content, since a tool
  message holds text only); an assistant message's text is its content, its ``tool_use``
  blocks its ``tool_calls`` (``input`` JSON-encoded as ``arguments``). Its ``thinking`` and
  ``redacted_thinking`` blocks are for an Anthropic upstream only (below): others take no
  reasoning back;
- ``tools`` are function tools (``input_schema`` is ``parameters``); ``tool_choice`` ``auto``,
  ``any`` (``required``), ``tool`` (a named function), ``none``, ``disable_parallel_tool_use``
  (``parallel_tool_calls: false``); ``stop_sequences`` is ``stop``; ``temperature``, ``top_p``
  and ``top_k`` as sent; ``metadata.user_id`` is ``user``; ``thinking`` is ``reasoning_effort``
  by its budget (under 4096 ``low``, under 16384 ``medium``, else ``high``; ``adaptive``: ``medium``).

An Anthropic upstream is sent the request as the client wrote it (``GenerationRequest.anthropic``):
thinking blocks with their signatures, ``is_error``, images, ``cache_control`` and the exact
``thinking`` budget reach it unchanged. Server tools (a tool with a ``type``) are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from app.errors import RequestError
from app.routes.http import decode_object, invalid
from app.schemas import TokenCount
from app.streaming.request import GenerationRequest

_encode = msgspec.json.Encoder().encode


class TextBlock(msgspec.Struct, tag="text", tag_field="type", frozen=True):
    text: str


class ImageSource(msgspec.Struct, frozen=True):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(msgspec.Struct, tag="image", tag_field="type", frozen=True):
    source: ImageSource


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type", frozen=True):
    id: Annotated[str, msgspec.Meta(min_length=1)]
    name: Annotated[str, msgspec.Meta(min_length=1)]
    input: dict[str, Any]


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type", frozen=True):
    tool_use_id: Annotated[str, msgspec.Meta(min_length=1)]
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type", frozen=True):
    thinking: str
    signature: str


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", tag_field="type", frozen=True):
    data: str


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock


class MessageParam(msgspec.Struct, frozen=True):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(msgspec.Struct, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    input_schema: dict[str, Any] | None = None
    description: str | None = None
    type: str | None = None  # "custom", or a server tool's versioned name (refused)


class ToolChoice(msgspec.Struct, frozen=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(msgspec.Struct, frozen=True):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None


class Metadata(msgspec.Struct, frozen=True):
    user_id: str | None = None


class MessagesRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: TokenCount
    messages: Annotated[list[MessageParam], msgspec.Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    thinking: Thinking | None = None
    metadata: Metadata | None = None
    stream: bool = False
    service_tier: str | None = None  # accepted; the relay has no tiers
    cache_control: dict[str, Any] | None = None  # a prompt-caching hint: an Anthropic upstream gets it, others need none

    def has_images(self) -> bool:
        return any(
            type(block) is ImageBlock or (type(block) is ToolResultBlock and not isinstance(block.content, str)
                                          and any(type(part) is ImageBlock for part in block.content))
            for message in self.messages if not isinstance(message.content, str) for block in message.content
        )


def decode_request(body: bytes) -> tuple[MessagesRequest, dict[str, Any]]:
    """The validated request, and the body as sent (what an Anthropic upstream is given)."""
    raw = decode_object(body)
    try:
        return msgspec.convert(raw, MessagesRequest), raw
    except msgspec.ValidationError as exc:
        raise invalid(exc) from exc


def generation_request(rid: str, request: MessagesRequest, raw: dict[str, Any], max_tokens_limit: int) -> GenerationRequest:
    messages: list[dict[str, Any]] = []
    if request.system:
        system = request.system if isinstance(request.system, str) else "\n\n".join(block.text for block in request.system)
        messages.append({"role": "system", "content": system})
    for number, message in enumerate(request.messages):
        messages.extend(_user(message, number) if message.role == "user" else _assistant(message))
    extra: dict[str, Any] = {}
    for name in ("temperature", "top_p", "top_k"):
        if getattr(request, name) is not None:
            extra[name] = getattr(request, name)
    if request.stop_sequences:
        extra["stop"] = request.stop_sequences
    if request.metadata is not None and request.metadata.user_id is not None:
        extra["user"] = request.metadata.user_id
    if request.tools:
        extra["tools"] = [_tool(tool, number) for number, tool in enumerate(request.tools)]
        extra.update(_tool_choice(request.tool_choice))
    effort = _effort(request.thinking)
    if effort is not None:
        extra["reasoning_effort"] = effort
    native = {key: value for key, value in raw.items() if key != "stream"}
    return GenerationRequest(
        rid, request.model, messages, max_tokens=request.max_tokens, extra=extra, max_tokens_limit=max_tokens_limit, anthropic=native,
    )


def _user(message: MessageParam, number: int) -> list[dict[str, Any]]:
    """Tool results first, as tool messages (they answer the calls just before), then the user's own content.

    A tool message holds text only: the images of a tool result go with the user content after it.
    """
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for place, block in enumerate(message.content):
        path = f"$.messages[{number}].content[{place}]"
        match block:
            case ToolResultBlock():
                inner = [block.content] if isinstance(block.content, str) else block.content
                text = "".join(part if isinstance(part, str) else part.text for part in inner if not isinstance(part, ImageBlock))
                out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
                parts.extend(_image_part(part, f"{path}.content[{index}]") for index, part in enumerate(inner) if isinstance(part, ImageBlock))
            case TextBlock():
                parts.append({"type": "text", "text": block.text})
            case ImageBlock():
                parts.append(_image_part(block, path))
            case _:
                raise RequestError(400, "invalid_request", f"a user message cannot hold a {block.__struct_config__.tag} block", param=path)
    if parts:
        texts = all(part["type"] == "text" for part in parts)
        out.append({"role": "user", "content": "".join(part["text"] for part in parts) if texts else parts})
    return out


def _image_part(block: ImageBlock, path: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": _image_url(block.source, path)}}


def _image_url(source: ImageSource, path: str) -> str:
    if source.type == "url" and source.url:
        return source.url
    if source.type == "base64" and source.data and source.media_type:
        return f"data:{source.media_type};base64,{source.data}"
    needs = "url" if source.type == "url" else "media_type and data"
    raise RequestError(400, "invalid_request", f"an image source of type {source.type} needs {needs}", param=path + ".source")


def _assistant(message: MessageParam) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": "assistant", "content": message.content}]
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if type(block) is TextBlock:
            text.append(block.text)
        elif type(block) is ToolUseBlock:
            arguments = _encode(block.input).decode()
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
    out: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        out["tool_calls"] = calls
    return [out]


def _tool(tool: Tool, number: int) -> dict[str, Any]:
    if tool.type not in (None, "custom"):
        raise RequestError(400, "invalid_request", f"server tools ({tool.type}) are not relayed: only custom tools", param=f"$.tools[{number}].type")
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema or {"type": "object", "properties": {}}}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice | None) -> dict[str, Any]:
    if choice is None:
        return {}
    match choice.type:
        case "auto":
            chosen: Any = "auto"
        case "any":
            chosen = "required"
        case "none":
            chosen = "none"
        case "tool":
            if not choice.name:
                raise RequestError(400, "invalid_request", "tool_choice of type tool needs the tool's name", param="$.tool_choice.name")
            chosen = {"type": "function", "function": {"name": choice.name}}
    out: dict[str, Any] = {"tool_choice": chosen}
    if choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def _effort(thinking: Thinking | None) -> str | None:
    if thinking is None or thinking.type == "disabled":
        return None
    if thinking.type == "adaptive" or thinking.budget_tokens is None:
        return "medium"
    return "low" if thinking.budget_tokens < 4096 else "medium" if thinking.budget_tokens < 16384 else "high"


# Anthropic's error types by status; any other status is said as the nearest of these.
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}


def anthropic_status(status: int) -> int:
    """The status Anthropic would answer for the relay's: a 422 is its 400, a 503 its 529 (overloaded), other 5xx its 500."""
    if status in ERROR_TYPES:
        return status
    if status == 503:
        return 529
    return 500 if status >= 500 else 400


def error_envelope(type_: str, message: str, **fields: str | None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message", …}}``: the Messages API's error, with the relay's own fields (code, phase, param)."""
    return {"type": "error", "error": {"type": type_, "message": message, **{key: value for key, value in fields.items() if value is not None}}}
