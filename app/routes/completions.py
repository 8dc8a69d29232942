"""``POST /v1/chat/completions``: the OpenAI-compatible endpoint, streaming and not."""

from __future__ import annotations

import functools
from collections.abc import Coroutine
from typing import Any

from app.errors import RequestError
from app.routes.http import (
    SSE_HEADERS,
    ClientGone,
    convert,
    decode_object,
    json_body,
    read_body,
    request_id,
    send_error,
    send_json,
    send_upstream_failure,
)
from app.runtime import Runtime
from app.schemas import ChatRequest
from app.streaming.encoders import OpenAIChunks, openai_completion
from app.streaming.events import Error
from app.streaming.generation import Route
from app.streaming.request import GenerationRequest
from app.streaming.respond import relay_collected, relay_stream
from app.types import Receive, Scope, Send

# What the relay decides itself; every other field the client sent goes to the upstream as sent.
_RELAY_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})


async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    stream = await _answer(scope, receive, send)
    if stream is not None:
        # Run the stream outside the frame that decoded the request: a stream can last minutes,
        # and that frame holds the request body, which the upstream has had since the first second.
        await stream


async def _answer(scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None] | None:
    """Answer a refused or non-streamed request; for a stream, return the relay to run (it sends the head)."""
    runtime: Runtime = scope["state"]["runtime"]
    settings = runtime.settings
    rid = request_id(scope)
    headers = [(b"x-request-id", rid.encode())]
    try:
        raw = decode_object(await read_body(scope, receive, settings.max_body_bytes))
        chat, upstream = admit_chat(runtime, raw)
        request = generation_request(rid, chat.model, raw, settings.max_tokens_limit)
        admission = await runtime.admit_key(scope, request)
    except ClientGone:
        return None
    except RequestError as exc:
        await send_error(send, exc)
        return None
    model = chat.model
    completion_id = "chatcmpl-" + rid
    if chat.stream:
        include_usage = chat.stream_options is not None and chat.stream_options.include_usage
        encoder = OpenAIChunks(completion_id, model, include_usage)
        return relay_stream(
            receive, send, upstream, request, encoder, settings, runtime.live,
            head={"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers},
            refuse=functools.partial(_refuse, send, headers), admission=admission,
        )
    result = await relay_collected(receive, upstream, request, runtime.live, limit=settings.max_collected_bytes, admission=admission)
    if result is None:
        return None
    if isinstance(result.terminal, Error):
        await send_upstream_failure(send, result.terminal, headers, openai=True)
    else:
        await send_json(send, 200, json_body(openai_completion(completion_id, model, result)), headers)
    return None


async def _refuse(send: Send, headers: list[tuple[bytes, bytes]], error: Error) -> None:
    await send_upstream_failure(send, error, headers, openai=True)


def admit_chat(runtime: Runtime, raw: dict[str, Any], *, choices: bool = True) -> tuple[ChatRequest, Route]:
    """The request and its route; ``n > 1`` is refused where it cannot be answered (``choices``: the caller can send several)."""
    chat = convert(raw, ChatRequest)
    many = chat.n is not None and chat.n > 1
    if many and not choices:
        raise RequestError(422, "invalid_request", "n must be 1 here: a resumable stream carries one choice", param="$.n")
    runtime.admit(chat.lengths())
    route = runtime.upstream_for(chat.model)
    if many and not all(target.upstream.adapter.choices for target in route.targets):
        raise RequestError(
            422, "invalid_request", f"n must be 1 for the model {chat.model!r}: its model server's protocol answers one choice", param="$.n",
        )
    return chat, route


def generation_request(rid: str, model: str, raw: dict[str, Any], max_tokens_limit: int) -> GenerationRequest:
    """Takes the messages out of ``raw``: what is left of it is only the small extra parameters."""
    messages = raw.pop("messages")
    extra = {key: value for key, value in raw.items() if key not in _RELAY_FIELDS}
    return GenerationRequest(rid, model, messages, extra=extra, max_tokens_limit=max_tokens_limit)
