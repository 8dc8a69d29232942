"""``POST /v1/responses``: the OpenAI Responses API, stateless, streaming and not (app/dialects/responses*.py)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from app.dialects.responses import ResponseEvents, response_object, whole_response
from app.dialects.responses_request import ResponsesRequest, generation_request, refuse_state
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
from app.streaming.respond import relay_collected, relay_stream
from app.types import Receive, Scope, Send


def _echo(request: ResponsesRequest) -> dict[str, Any]:
    """What the response repeats of the request's settings."""
    return {
        "instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
        "parallel_tool_calls": request.parallel_tool_calls is not False, "temperature": request.temperature, "top_p": request.top_p,
        "tool_choice": request.tool_choice or "auto", "tools": request.tools or [], "top_logprobs": request.top_logprobs,
        "reasoning": {"effort": request.reasoning.effort, "summary": request.reasoning.summary} if request.reasoning is not None else None,
        "text": request.text or {"format": {"type": "text"}}, "truncation": "disabled", "metadata": request.metadata or {},
        "user": request.user,
    }


async def _answer(scope: Scope, receive: Receive, send: Send, record: RequestRecord) -> Coroutine[Any, Any, None] | None:
    """Answer a refused or non-streamed request; for a stream, return the relay to run (it sends the head)."""
    runtime: Runtime = scope["state"]["runtime"]
    settings = runtime.settings
    rid = record.request_id
    headers = [(b"x-request-id", rid.encode())]
    try:
        raw = decode_object(await read_body(scope, receive, settings.max_body_bytes))
        record.model = seam.model_of(raw)
        request = convert(raw, ResponsesRequest)
        refuse_state(request)
        generation = generation_request(rid, request, settings.max_tokens_limit)
        runtime.admit(request.lengths())
        route = runtime.upstream_for(request.model)
        record.admission = await runtime.admit_key(scope, generation)
    except ClientGone:
        record.outcome = "client_left"
        return None
    except RequestError as exc:
        record.refused(exc.status, exc.code)
        await send_error(send, exc)
        return None
    response = response_object("resp_" + rid, request.model, _echo(request))
    if request.stream:
        record.status = 200  # unless the upstream refuses it before the head (``seam.Refusal``)
        return relay_stream(
            receive, send, route, generation, ResponseEvents(response, settings.max_collected_bytes), settings, runtime.live,
            head={"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers},
            refuse=seam.Refusal(record, send, headers, openai=True), record=record,
        )
    result = await relay_collected(receive, route, generation, runtime.live, limit=settings.max_collected_bytes, record=record)
    if result is None:
        return None
    await seam.send_whole(record, send, headers, result, lambda whole: whole_response(response, whole), openai=True)
    return None


responses = seam.endpoint("openai_responses", _answer)
