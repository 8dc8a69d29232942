"""Resumable streams: ``POST /v1/streams``, ``GET /v1/streams/{id}/events``, ``DELETE /v1/streams/{id}``.

The events route is written for ``EventSource``, which gives up for good on any answer but a
200 with ``text/event-stream``, and reconnects by itself after anything else (a dropped
connection, the end of the body). So it answers:

- 401 for a missing, wrong or expired token (the reader must not go on);
- 204 for a stream that is unknown, expired, or finished and fully read (stop reconnecting),
  and for one that another API key created: a key sees only its own streams;
- 400 for a ``Last-Event-ID`` the stream cannot have (not an id, or past its last event);
- 200 with only a ``retry:`` hint when the relay is at its limit of readers (come back later);
- 200 with one ``error`` event, code ``log_unavailable``, when the event log (Redis) cannot be
  reached, now or while the reader follows the stream: a terminal error rather than a hang;
- otherwise 200: the events after ``Last-Event-ID``, then the live ones, up to the terminal one.

With Redis, any process answers for any stream: what it knows of it (its API key, whether it
has ended) comes from the log, and a ``DELETE`` reaches the process that generates it.
"""

from __future__ import annotations

import datetime

import anyio

from app.capability import CANCEL, READ, Capabilities
from app.errors import RequestError
from app.ops import seam
from app.ops.keys import key_of
from app.ops.record import RequestRecord
from app.routes.completions import admit_chat, generation_request
from app.routes.generate import admit_generate, with_default_model
from app.routes.http import SSE_HEADERS, ClientGone, convert, decode_object, header, json_body, read_body, request_id, send_error, send_json
from app.runtime import Runtime
from app.schemas import GenerateRequest
from app.streaming.eventlog import InvalidEventId, LogUnavailable, StreamInfo
from app.streaming.reader import LOG_UNAVAILABLE, READ_BATCH, Reader
from app.streaming.resumable import ResumableStream, ResumableStreams
from app.types import Receive, Scope, Send

# Who a signed URL's token lets in: whoever holds it, with or without a key.
BY_TOKEN = "token"


async def create_stream(scope: Scope, receive: Receive, send: Send) -> None:
    runtime: Runtime = scope["state"]["runtime"]
    streams: ResumableStreams = scope["state"]["streams"]
    rid = request_id(scope)
    record = seam.begin(scope, "resumable", rid, resumable=True)
    stream: ResumableStream | None = None
    try:
        stream = await _start(scope, receive, send, runtime, streams, record)
    finally:
        if stream is None:  # else the stream ends its record, when its generation ends
            seam.end(scope, record)
    if stream is None:
        return
    await _created(scope, send, stream, rid)


async def _start(scope: Scope, receive: Receive, send: Send, runtime: Runtime, streams: ResumableStreams, record: RequestRecord) -> ResumableStream | None:
    """The stream started, or ``None`` once the request has been answered with an error."""
    settings = runtime.settings
    rid = record.request_id
    try:
        raw = decode_object(await read_body(scope, receive, settings.max_body_bytes))
        if "messages" in raw:  # a chat body, as for /v1/chat/completions, but the model may be left to the relay
            if "model" not in raw:
                raw["model"] = await runtime.catalog.default_model()
            record.model = seam.model_of(raw)
            chat, upstream = admit_chat(runtime, raw, choices=False)
            request = generation_request(rid, chat.model, raw, settings.max_tokens_limit)
        else:
            upstream, request = admit_generate(runtime, rid, await with_default_model(runtime, convert(raw, GenerateRequest)))
        if streams.running >= settings.max_streams:
            raise RequestError(
                429, "too_many_streams", "the relay is at its limit of resumable streams; retry shortly", headers={"Retry-After": "2"},
            )
        if streams.full:
            raise RequestError(
                503, "stream_log_full", "the streams being generated fill the relay's event log; retry shortly", headers={"Retry-After": "5"},
            )
        record.model = request.model
        record.admission = await runtime.admit_key(scope, request)
        stream = await streams.start(upstream, request, owner=_key_name(scope), record=record)
        record.status = 201
        return stream
    except ClientGone:
        record.outcome = "client_left"
    except RequestError as exc:
        record.refused(exc.status, exc.code)
        await send_error(send, exc)
    except LogUnavailable:
        unavailable = RequestError(503, "log_unavailable", "the relay's event log (Redis) cannot be reached; retry shortly", headers={"Retry-After": "2"})
        record.refused(unavailable.status, unavailable.code)
        await send_error(send, unavailable)
    return None


async def _created(scope: Scope, send: Send, stream: ResumableStream, rid: str) -> None:
    capabilities: Capabilities = scope["state"]["capabilities"]
    base = _origin(scope) + "/v1/streams/" + stream.id
    read_token, expires = capabilities.issue(stream.id, READ)
    cancel_token, _ = capabilities.issue(stream.id, CANCEL)
    body = {
        "id": stream.id,
        "object": "stream",
        "events_url": f"{base}/events?token={read_token}",
        "cancel_url": f"{base}?token={cancel_token}",
        "expires_at": datetime.datetime.fromtimestamp(expires, datetime.UTC).isoformat().replace("+00:00", "Z"),
    }
    # The answer holds the stream's capabilities: no cache may keep it.
    await send_json(send, 201, json_body(body), [(b"x-request-id", rid.encode()), (b"cache-control", b"no-store")])


async def stream_events(scope: Scope, receive: Receive, send: Send) -> None:
    runtime: Runtime = scope["state"]["runtime"]
    streams: ResumableStreams = scope["state"]["streams"]
    settings = runtime.settings
    stream_id: str = scope["path_params"]["stream_id"]
    query = _query(scope)
    grant = _grant(scope, query, stream_id, READ)
    if grant is None:
        await send_error(send, _unauthorised("read"))
        return
    # The header is what EventSource sends when it reconnects; the query is for a first connection that resumes.
    after = header(scope, b"last-event-id") or query.get("last_event_id") or None
    try:
        info = _visible(await streams.lookup(stream_id), grant)
        entries = await streams.log.read_after(stream_id, after, READ_BATCH) if info is not None else None
    except InvalidEventId:
        await send_error(send, RequestError(400, "invalid_event_id", f"{after!r} is not an event id of this stream", param="Last-Event-ID"))
        return
    except LogUnavailable:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": b"retry: %d\n\n%b" % (settings.stream_retry_ms, LOG_UNAVAILABLE)})
        return
    if info is None or entries is None or (not entries and info.end is not None):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    if streams.readers >= settings.max_stream_readers:
        await send({"type": "http.response.body", "body": b"retry: %d\n: busy\n\n" % settings.stream_busy_retry_ms})
        return
    await send({"type": "http.response.body", "body": b"retry: %d\n\n" % settings.stream_retry_ms, "more_body": True})

    reader = Reader(send, streams.log, stream_id, heartbeat=settings.heartbeat_interval, grace=settings.slow_consumer_grace)
    try:
        async with streams.reading(stream_id), anyio.create_task_group() as tg:
            tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
            await reader.run(after, entries)
            tg.cancel_scope.cancel()
    except LogUnavailable:  # joining as a reader of a stream another process owns failed
        await reader.end_with(LOG_UNAVAILABLE)


async def cancel_stream(scope: Scope, receive: Receive, send: Send) -> None:
    streams: ResumableStreams = scope["state"]["streams"]
    stream_id: str = scope["path_params"]["stream_id"]
    grant = _grant(scope, _query(scope), stream_id, CANCEL)
    if grant is None:
        await send_error(send, _unauthorised("cancel"))
        return
    try:
        info = _visible(await streams.lookup(stream_id), grant)
        if info is not None and info.end is None:
            await streams.cancel(stream_id)
    except LogUnavailable:
        await send_error(send, RequestError(
            503, "log_unavailable", "the relay's event log (Redis) cannot be reached; retry shortly", headers={"Retry-After": "2"},
        ))
        return
    if info is None:
        await send_error(send, RequestError(404, "stream_not_found", f"there is no stream {stream_id!r}: it never existed or has expired"))
        return
    await send_json(send, 200, json_body({"id": stream_id, "cancelled": info.end is None}))


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _query(scope: Scope) -> dict[str, str]:
    """The parameters by their literal names and values: ``&`` separates them, nothing is percent-decoded.

    The relay's own parameters never need escaping, and a token must have one spelling, the one
    the access log's filter and any proxy in between see: ``%74oken=`` is not ``token=``, and a
    ``token`` given twice is none.
    """
    query: dict[str, str] = {}
    for parameter in scope["query_string"].decode("latin-1").split("&"):
        name, _, value = parameter.partition("=")
        query[name] = "" if name == "token" and name in query else value
    return query


def _grant(scope: Scope, query: dict[str, str], stream_id: str, action: str) -> str | None:
    """What lets the request in: ``BY_TOKEN``, the id of its API key, or nothing (``None``: 401).

    A valid token is enough whatever key comes with it: it is the capability the stream's
    creator handed out, for this stream and action alone.
    """
    capabilities: Capabilities = scope["state"]["capabilities"]
    runtime: Runtime = scope["state"]["runtime"]
    token = query.get("token")
    if token is not None and capabilities.check(token, stream_id, action):
        return BY_TOKEN
    key = runtime.keys.identify(scope)
    return key.name if key is not None else None


def _key_name(scope: Scope) -> str | None:
    key = key_of(scope)
    return key.name if key is not None else None


def _visible(info: StreamInfo | None, grant: str) -> StreamInfo | None:
    """The stream, unless the request came with a key other than its creator's: then, as for an unknown one, nothing."""
    if info is None or grant == BY_TOKEN or grant == info.key:
        return info
    return None


def _unauthorised(action: str) -> RequestError:
    return RequestError(401, "invalid_token", f"the token of this URL is missing, wrong or expired: it does not allow to {action} this stream")


def _origin(scope: Scope) -> str:
    """The base of the URLs the relay hands out, absolute so that they work from another origin too.

    The public URL when one is set; else the scheme (``X-Forwarded-Proto`` from a trusted proxy)
    and the ``Host`` the client reached, which the host check has let through.
    """
    runtime: Runtime = scope["state"]["runtime"]
    if runtime.settings.public_url is not None:
        return runtime.settings.public_url.rstrip("/")
    host = header(scope, b"host")
    if host is None:
        server_host, port = scope["server"]
        host = f"{server_host}:{port}"
    return f"{scope['scheme']}://{host}"
