"""Plain-ASGI helpers the routes share: reading a bounded body, decoding it, answering JSON."""

from __future__ import annotations

import re
import uuid
from typing import Any, TypeVar

import msgspec

from app.errors import RequestError
from app.schemas import ErrorBody, ErrorEnvelope, FailureBody, RejectionBody, encoder, json_decoder
from app.streaming.events import Error
from app.types import Receive, Scope, Send

T = TypeVar("T")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_JSON = (b"content-type", b"application/json")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The deepest nesting a request body may have (serde_json's default). Well under what Python's
# recursion limit lets msgspec decode and encode from inside a request's or a stream's stack.
MAX_JSON_DEPTH = 128


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def request_id(scope: Scope) -> str:
    given = header(scope, b"x-request-id")
    return given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes; a body that came in one message (the usual case) is returned as it came, uncopied."""
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if not body and not more and len(chunk) <= limit:
            return chunk
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
        if not more:
            return bytes(body)


def _too_large(limit: int) -> RequestError:
    return RequestError(413, "request_too_large", f"the request body is larger than {limit} bytes")


def decode(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from exc
    except msgspec.DecodeError as exc:
        raise RequestError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise _too_deep() from exc


def decode_object(body: bytes) -> dict[str, Any]:
    """A body that is one JSON object, of any fields, at most ``MAX_JSON_DEPTH`` levels deep."""
    value = decode(body, json_decoder)
    if not isinstance(value, dict):
        raise RequestError(422, "invalid_request", "the request body must be a JSON object", param="$")
    # A body with fewer brackets than the limit cannot nest past it: the common request is never walked.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and not _nests_within(value, MAX_JSON_DEPTH - 1):
        raise _too_deep()
    return value


def _nests_within(container: dict[str, Any] | list[Any], room: int) -> bool:
    """Whether no value inside ``container`` nests more than ``room`` levels below it."""
    for item in container.values() if type(container) is dict else container:
        if type(item) is dict or type(item) is list:
            if room == 0 or not _nests_within(item, room - 1):
                return False
    return True


def _too_deep() -> RequestError:
    return RequestError(400, "too_deeply_nested", f"the request body nests JSON arrays and objects deeper than {MAX_JSON_DEPTH} levels")


def convert(value: Any, type_: type[T]) -> T:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from exc


def invalid(exc: msgspec.ValidationError) -> RequestError:
    message = str(exc)
    match = re.search(r" - at `(\$[^`]*)`$", message)
    param = match.group(1) if match else None
    unknown = re.match(r"Object contains unknown field `([^`]+)`", message)
    if unknown:
        param = f"{param or '$'}.{unknown.group(1)}"
    missing = re.match(r"Object missing required field `([^`]+)`", message)
    if missing:
        param = f"{param or '$'}.{missing.group(1)}"
    return RequestError(422, "invalid_request", message, param=param)


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [_JSON, (b"content-length", str(len(body)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})


def json_body(value: Any) -> bytes:
    return encoder.encode(value)


async def send_error(send: Send, exc: RequestError) -> None:
    body = encoder.encode(ErrorEnvelope(ErrorBody(message=exc.message, type=exc.type, code=exc.code, param=exc.param)))
    headers = [(name.lower().encode(), value.encode()) for name, value in exc.headers.items()]
    await send_json(send, exc.status, body, headers)


def upstream_failure_status(error: Error) -> int:
    """The HTTP status for a generation that failed before anything was sent: a refusal keeps the model server's."""
    if error.refused and error.status is not None:
        return error.status
    if error.type == "timeout":
        return 504
    if error.code == "shutting_down":
        return 503
    if error.status == 429:
        return 429
    return 502


def failure_envelope(error: Error, *, openai: bool) -> ErrorEnvelope:
    """The body of a failure before anything was sent; a refusal speaks with the model server's own type, code, message and param."""
    if not error.refused:
        return ErrorEnvelope(FailureBody(message=error.message, type=error.type, code=error.code, phase=error.phase))
    detail = error.detail
    message = detail.message if detail is not None else error.message
    type_ = detail.type if detail is not None and detail.type else "invalid_request_error"
    code = detail.code if detail is not None and detail.code else error.code
    param = detail.param if detail is not None else None
    if openai:
        return ErrorEnvelope(ErrorBody(message=message, type=type_, code=code, param=param))
    return ErrorEnvelope(RejectionBody(message=message, type=type_, code=code, param=param, phase=error.phase))


async def send_upstream_failure(send: Send, error: Error, extra_headers: list[tuple[bytes, bytes]], *, openai: bool) -> None:
    """Answer a generation that failed before anything was sent (``openai``: in the OpenAI shape, else the native one)."""
    body = encoder.encode(failure_envelope(error, openai=openai))
    await send_json(send, upstream_failure_status(error), body, extra_headers)
