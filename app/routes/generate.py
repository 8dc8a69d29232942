"""``POST /v1/generate``: the native API, ``{prompt, max_tokens, temperature, stream}``."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import msgspec

from app.errors import RequestError
from app.ops import seam
from app.ops.record import RequestRecord
from app.routes.http import (
    SSE_HEADERS,
    ClientGone,
    decode,
    read_body,
    send_error,
)
from app.runtime import Runtime
from app.schemas import GenerateRequest, generate_decoder
from app.streaming.encoders import NativeEvents, native_completion
from app.streaming.generation import Route
from app.streaming.request import GenerationRequest
from app.streaming.respond import relay_collected, relay_stream
from app.types import Receive, Scope, Send

DEFAULT_MAX_TOKENS = 512


async def _answer(scope: Scope, receive: Receive, send: Send, record: RequestRecord) -> Coroutine[Any, Any, None] | None:
    """Answer a refused or non-streamed request; for a stream, return the relay to run (it sends the head)."""
    runtime: Runtime = scope["state"]["runtime"]
    settings = runtime.settings
    rid = record.request_id
    headers = [(b"x-request-id", rid.encode())]
    try:
        body = await with_default_model(runtime, decode(await read_body(scope, receive, settings.max_body_bytes), generate_decoder))
        record.model = body.model
        upstream, request = admit_generate(runtime, rid, body)
        record.model = request.model
        record.admission = await runtime.admit_key(scope, request)
    except ClientGone:
        record.outcome = "client_left"
        return None
    except RequestError as exc:
        record.refused(exc.status, exc.code)
        await send_error(send, exc)
        return None
    if body.stream:
        record.status = 200  # unless the upstream refuses it before the head (``seam.Refusal``)
        return relay_stream(
            receive, send, upstream, request, NativeEvents(), settings, runtime.live,
            head={"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers},
            refuse=seam.Refusal(record, send, headers, openai=False), record=record,
        )
    result = await relay_collected(receive, upstream, request, runtime.live, limit=settings.max_collected_bytes, record=record)
    if result is None:
        return None
    await seam.send_whole(record, send, headers, result, native_completion, openai=False)
    return None


async def with_default_model(runtime: Runtime, body: GenerateRequest) -> GenerateRequest:
    """``body``, naming the relay's default model (the upstream's first, if none is configured) when it names none."""
    if body.model is not None:
        return body
    return msgspec.structs.replace(body, model=await runtime.catalog.default_model())


def admit_generate(runtime: Runtime, rid: str, body: GenerateRequest) -> tuple[Route, GenerationRequest]:
    runtime.admit(body.lengths())
    max_tokens = body.max_tokens or min(DEFAULT_MAX_TOKENS, runtime.settings.max_tokens_limit)
    model = body.model or runtime.default_model
    if model is None:
        raise RequestError(422, "invalid_request", "model is required: this relay has no default model", param="$.model")
    request = GenerationRequest(rid, model, [{"role": "user", "content": body.prompt}], max_tokens=max_tokens, temperature=body.temperature)
    return runtime.upstream_for(model), request


generate = seam.endpoint("native", _answer)
