"""``POST /v1/chat/completions``: the OpenAI-compatible endpoint, streaming and not."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from app.errors import RequestError
from app.ops import seam
from app.ops.record import RequestRecord
from app.routes.http import (
    SSE_HEADERS,
    ClientGone,
    convert,
    decode_object,
    read_body,
    send_error,
)
from app.runtime import Runtime
from app.schemas import ChatRequest
from app.streaming.encoders import OpenAIChunks, openai_completion
from app.streaming.generation import Route
from app.streaming.request import GenerationRequest
from app.streaming.respond import relay_collected, relay_stream
from app.types import Receive, Scope, Send

# What the relay decides itself; every other field the client sent goes to the upstream as sent.
_RELAY_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})


async def _answer(scope: Scope, receive: Receive, send: Send, record: RequestRecord) -> Coroutine[Any, Any, None] | None:
    """Answer a refused or non-streamed request; for a stream, return the relay to run (it sends the head)."""
    runtime: Runtime = scope["state"]["runtime"]
    settings = runtime.settings
    rid = record.request_id
    headers = [(b"x-request-id", rid.encode())]
    try:
        raw = decode_object(await read_body(scope, receive, settings.max_body_bytes))
        record.model = seam.model_of(raw)
        chat, upstream = admit_chat(runtime, raw)
        request = generation_request(rid, chat.model, raw, settings.max_tokens_limit)
        record.admission = await runtime.admit_key(scope, request)
    except ClientGone:
        record.outcome = "client_left"
        return None
    except RequestError as exc:
        record.refused(exc.status, exc.code)
        await send_error(send, exc)
        return None
    model = chat.model
    completion_id = "chatcmpl-" + rid
    if chat.stream:
        include_usage = chat.stream_options is not None and chat.stream_options.include_usage
        encoder = OpenAIChunks(completion_id, model, include_usage)
        record.status = 200  # unless the upstream refuses it before the head (``seam.Refusal``)
        return relay_stream(
            receive, send, upstream, request, encoder, settings, runtime.live,
            head={"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers},
            refuse=seam.Refusal(record, send, headers, openai=True), record=record,
        )
    result = await relay_collected(receive, upstream, request, runtime.live, limit=settings.max_collected_bytes, record=record)
    if result is None:
        return None
    await seam.send_whole(record, send, headers, result, lambda whole: openai_completion(completion_id, model, whole), openai=True)
    return None


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


chat_completions = seam.endpoint("openai_chat", _answer)
