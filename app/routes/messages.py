"""``POST /v1/messages``: Anthropic's Messages API, streamed or not, over any upstream (app/dialects/anthropic.py)."""

from __future__ import annotations

import functools
from collections.abc import Coroutine
from typing import Any

from app.dialects.anthropic import ERROR_TYPES, MessagesRequest, anthropic_status, decode_request, error_envelope, generation_request
from app.dialects.anthropic_events import MessageEvents, whole_message
from app.errors import RequestError
from app.ops import seam
from app.ops.record import RequestRecord
from app.routes.http import SSE_HEADERS, ClientGone, json_body, read_body, send_json, upstream_failure_status
from app.runtime import Runtime
from app.streaming.events import Error
from app.streaming.generation import Route
from app.streaming.respond import relay_collected, relay_stream
from app.types import Receive, Scope, Send


async def _answer(scope: Scope, receive: Receive, send: Send, record: RequestRecord) -> Coroutine[Any, Any, None] | None:
    """Answer a refused or non-streamed request; for a stream, return the relay to run (it sends the head)."""
    runtime: Runtime = scope["state"]["runtime"]
    settings = runtime.settings
    rid = record.request_id
    headers = [(b"x-request-id", rid.encode())]
    try:
        request, raw = decode_request(await read_body(scope, receive, settings.max_body_bytes))
        record.model = request.model
        route = _admit(runtime, request)
        generation = generation_request(rid, request, raw, settings.max_tokens_limit)
        record.admission = await runtime.admit_key(scope, generation)
    except ClientGone:
        record.outcome = "client_left"
        return None
    except RequestError as exc:
        record.refused(anthropic_status(exc.status), exc.code)
        await send_anthropic_error(send, exc)
        return None
    message_id = "msg_" + rid
    if request.stream:
        record.status = 200  # unless the upstream refuses it before the head (``_send_failure``)
        return relay_stream(
            receive, send, route, generation, MessageEvents(message_id, request.model, settings.max_collected_bytes), settings, runtime.live,
            head={"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers},
            refuse=functools.partial(_refused, send, headers, record), record=record,
        )
    result = await relay_collected(receive, route, generation, runtime.live, limit=settings.max_collected_bytes, record=record)
    if result is None:
        return None
    if isinstance(result.terminal, Error):
        await _refused(send, headers, record, result.terminal)
    else:
        record.status = 200
        await send_json(send, 200, json_body(whole_message(message_id, request.model, result)), headers)
    return None


def _admit(runtime: Runtime, request: MessagesRequest) -> Route:
    runtime.admit((("$.max_tokens", request.max_tokens),))
    route = runtime.upstream_for(request.model)
    if request.has_images():
        cannot = sorted({target.upstream.adapter.protocol for target in route.targets if not target.upstream.adapter.images})
        if cannot:
            raise RequestError(400, "invalid_request", f"images cannot go to the model {request.model!r}: its model server speaks {', '.join(cannot)}",
                               param="$.messages")
    return route


async def send_anthropic_error(send: Send, exc: RequestError) -> None:
    """A refused request in the Messages API's shape and statuses, with the relay's ``code`` and ``param``."""
    status = anthropic_status(exc.status)
    body = error_envelope(ERROR_TYPES[status], exc.message, code=exc.code, param=exc.param)
    headers = [(name.lower().encode(), value.encode()) for name, value in exc.headers.items()]
    await send_json(send, status, json_body(body), headers)


async def _refused(send: Send, headers: list[tuple[bytes, bytes]], record: RequestRecord, error: Error) -> None:
    record.status = anthropic_status(upstream_failure_status(error))
    await _send_failure(send, headers, error)


async def _send_failure(send: Send, headers: list[tuple[bytes, bytes]], error: Error) -> None:
    """A generation that failed before anything was sent; a model server's refusal keeps its status, type and message."""
    status = anthropic_status(upstream_failure_status(error))
    detail = error.detail if error.refused else None
    given = detail.type if detail is not None else None
    type_ = given if given is not None and given in ERROR_TYPES.values() else ERROR_TYPES[status]
    message = detail.message if detail is not None else error.message
    body = error_envelope(type_, message, code=error.code, phase=error.phase, param=detail.param if detail is not None else None)
    await send_json(send, status, json_body(body), headers)


messages = seam.endpoint("anthropic_messages", _answer)
