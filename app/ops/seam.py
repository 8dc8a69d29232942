"""Where the routes open and close a request's record: the one seam between them and the operators' modules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from app.ops.keys import key_of
from app.ops.record import Operations, RequestRecord
from app.routes.http import json_body, request_id, send_json, send_upstream_failure, upstream_failure_status
from app.streaming.encoders import Collected
from app.streaming.events import Error
from app.types import Receive, Scope, Send


def begin(scope: Scope, dialect: str, request_id: str, *, resumable: bool = False) -> RequestRecord:
    """The record of the request ``scope`` begins; ``end`` must follow, in a ``finally``."""
    operations: Operations = scope["state"]["operations"]
    return operations.begin(request_id, dialect, key_name(scope), resumable=resumable)


def end(scope: Scope, record: RequestRecord) -> None:
    operations: Operations = scope["state"]["operations"]
    operations.end(record)


def key_name(scope: Scope) -> str | None:
    """The name of the request's key (the middleware found it), for the log line, the metrics and what it owns: never the key itself."""
    key = key_of(scope)
    return key.name if key is not None else None


def model_of(raw: dict[str, Any]) -> str | None:
    """The model a decoded request body names, if it names one."""
    model = raw.get("model")
    return model if isinstance(model, str) else None


Answer = Callable[[Scope, Receive, Send, RequestRecord], Awaitable[Coroutine[Any, Any, None] | None]]


def endpoint(dialect: str, answer: Answer) -> Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]:
    """The endpoint of a generation route: its record begins, ``answer`` refuses the request, answers it whole, or returns its stream.

    The stream runs outside ``answer``'s frame: a stream can last minutes, and that frame holds
    the request body, which the upstream has had since the first second. The record ends in every case.
    """

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        record = begin(scope, dialect, request_id(scope))
        try:
            stream = await answer(scope, receive, send, record)
            if stream is not None:
                await stream
        finally:
            end(scope, record)

    serve.__name__ = serve.__qualname__ = dialect
    return serve


async def send_failure(record: RequestRecord, send: Send, headers: list[tuple[bytes, bytes]], error: Error, *, openai: bool) -> None:
    """A generation that failed before anything was sent, answered in OpenAI's shape or the native one; the record learns the status."""
    record.status = upstream_failure_status(error)
    await send_upstream_failure(send, error, headers, openai=openai)


class Refusal:
    """``send_failure`` for a stream whose head is held: what it sends, in place of the stream, when the upstream refuses the request.

    Four slots, made for every stream while it waits, where a ``functools.partial`` would be three
    objects (it, its arguments, its keywords: about 260 bytes more).
    """

    __slots__ = ("_headers", "_openai", "_record", "_send")

    def __init__(self, record: RequestRecord, send: Send, headers: list[tuple[bytes, bytes]], *, openai: bool) -> None:
        self._record, self._send, self._headers, self._openai = record, send, headers, openai

    async def __call__(self, error: Error) -> None:
        await send_failure(self._record, self._send, self._headers, error, openai=self._openai)


async def send_whole(
    record: RequestRecord, send: Send, headers: list[tuple[bytes, bytes]], result: Collected, answer: Callable[[Collected], Any], *, openai: bool,
) -> None:
    """A ``stream: false`` answer: its failure (``send_failure``), else ``answer(result)`` as JSON; the record learns the status."""
    if isinstance(result.terminal, Error):
        await send_failure(record, send, headers, result.terminal, openai=openai)
    else:
        record.status = 200
        await send_json(send, 200, json_body(answer(result)), headers)
