"""The API contract: every route's request, answers and stream events, as msgspec types, and the OpenAPI 3.1 document built from them.

Requests are the types the routes decode with (app/schemas.py). Answers are written by the
encoders as dicts and bytes, for speed; the types here describe them, and the tests hold the
encoders to them (tests/test_contract.py decodes real answers and stream events with these
types, strictly). Each route is registered with its ``Operation`` (app/main.py): a route
cannot be added without saying what it answers.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from app.dialects.anthropic import MessagesRequest
from app.dialects.responses_request import ResponsesRequest
from app.schemas import ChatRequest, GenerateRequest
from app.streaming.events import Usage


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An answer's or an event's body: it has the fields named, and no other."""


class ErrorDetail(Body, frozen=True):
    """What went wrong: ``type`` is the broad class, ``code`` the precise cause; ``param`` the path of a bad field,
    ``phase`` (``connect``, ``first_token``, ``stream``, ``total``) where a generation failed."""

    message: str
    type: str
    code: str
    param: str | None = None
    phase: str | None = None


class ErrorAnswer(Body, frozen=True):
    error: ErrorDetail


class CallFunction(Body, frozen=True):
    name: str | None
    arguments: str


class MessageToolCall(Body, frozen=True):
    id: str | None
    type: Literal["function"]
    function: CallFunction


class Logprobs(Body, frozen=True):
    """The model server's token logprob objects, as it sent them."""

    content: list[dict[str, Any]] | None
    refusal: list[dict[str, Any]] | None


class AssistantMessage(Body, frozen=True):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: list[MessageToolCall] = []
    reasoning_content: str | None = None


class CompletionChoice(Body, frozen=True):
    index: int
    message: AssistantMessage
    logprobs: Logprobs | None
    finish_reason: str


class ChatCompletion(Body, frozen=True):
    """A whole chat completion (``stream: false``). ``usage`` is ``null`` when the model server gave none."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None


class DeltaFunction(Body, frozen=True):
    arguments: str
    name: str | None = None


class DeltaToolCall(Body, frozen=True):
    """A fragment of call ``index``: its ``id`` and name come first, then its arguments in fragments to concatenate."""

    index: int
    function: DeltaFunction
    id: str | None = None
    type: Literal["function"] | None = None


class ChunkDelta(Body, frozen=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    refusal: str | None = None
    tool_calls: list[DeltaToolCall] = []


class ChunkChoice(Body, frozen=True):
    index: int
    delta: ChunkDelta
    logprobs: Logprobs | None
    finish_reason: str | None


class ChatCompletionChunk(Body, frozen=True):
    """One event of a streamed chat completion; the last one has ``usage`` when the request asked for it."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class NativeToolCall(Body, frozen=True):
    index: int
    id: str | None
    name: str | None
    arguments: str


class GenerateAnswer(Body, frozen=True):
    """A whole native generation (``stream: false``)."""

    output: str
    tokens_used: int | None
    finish_reason: str
    usage: Usage | None
    reasoning: str | None
    refusal: str | None
    tool_calls: list[NativeToolCall]
    logprobs: Logprobs | None


class TextEvent(Body, frozen=True):
    text: str
    choice: int = 0


class ReasoningEvent(Body, frozen=True):
    text: str
    signature: str | None = None
    choice: int = 0


class RedactedReasoningEvent(Body, frozen=True):
    data: str
    choice: int = 0


class ToolCallEvent(Body, frozen=True):
    index: int
    id: str | None
    name: str | None
    arguments: str
    choice: int = 0


class LogprobsEvent(Body, frozen=True):
    content: list[dict[str, Any]] | None
    refusal: list[dict[str, Any]] | None
    choice: int = 0


class DoneEvent(Body, frozen=True):
    finish_reason: str
    usage: Usage | None


class ErrorEvent(Body, frozen=True):
    type: str
    code: str
    phase: str
    message: str


class ChunkError(Body, frozen=True):
    """A streamed chat completion that failed after its head: this event, then ``data: [DONE]``."""

    error: ErrorEvent


# The native stream's events by name (app/streaming/encoders.py native_parts): parts, then one ``done`` or ``error``.
NATIVE_EVENTS: dict[str, Any] = {
    "reasoning": ReasoningEvent,
    "redacted_reasoning": RedactedReasoningEvent,
    "token": TextEvent,
    "refusal": TextEvent,
    "tool_call": ToolCallEvent,
    "logprobs": LogprobsEvent,
    "done": DoneEvent,
    "error": ErrorEvent,
}
CHUNK_EVENTS: dict[str, Any] = {"message": ChatCompletionChunk | ChunkError}


class StreamCreated(Body, frozen=True):
    """A resumable stream: read it with ``GET events_url`` (``EventSource``), cancel it with ``DELETE cancel_url``."""

    id: str
    object: Literal["stream"]
    events_url: str
    cancel_url: str
    expires_at: str


class StreamCancelled(Body, frozen=True):
    id: str
    cancelled: bool


class Health(Body, frozen=True):
    status: Literal["ok"]


class UpstreamState(Body, frozen=True):
    protocol: str
    state: Literal["closed", "open", "half_open"]
    in_flight: int
    max_concurrency: int | None
    consecutive_failures: int


class Readiness(Body, frozen=True):
    status: Literal["ready", "not_ready"]
    in_flight: int | None = None
    upstreams: dict[str, UpstreamState] = {}
    redis: Literal["up", "down"] | None = None


class Answer(msgspec.Struct, frozen=True):
    """One status of an operation: a JSON body of type ``json``, a stream of ``events`` (name to data type), or a page."""

    description: str
    json: Any = None
    events: dict[str, Any] | None = None
    html: bool = False
    text: bool = False  # a body of plain text
    headers: tuple[str, ...] = ()


class Operation(msgspec.Struct, frozen=True):
    summary: str
    answers: dict[int, Answer]
    request: Any = None
    parameters: tuple[dict[str, Any], ...] = ()


def _refusals(*statuses: int) -> dict[int, Answer]:
    return {status: Answer(_REFUSALS[status], ErrorAnswer, headers=("Retry-After",) if status in (429, 503) else ()) for status in statuses}


_REFUSALS = {
    400: "Malformed request: not JSON, nested too deep, a bad header, or a Host the relay does not answer",
    401: "The key is missing or wrong (when the relay has keys), or a stream URL's token is",
    404: "No such model or stream",
    405: "Another method is needed",
    413: "The request body is over the relay's limit",
    422: "A field is invalid: `param` is its path",
    429: "Over a limit: resumable streams, or the model server's rate limit; `Retry-After` says when to retry",
    502: "The model server failed before the answer began",
    503: "The relay is shutting down, or its event log is full or unreachable",
    504: "The model server timed out before the answer began",
}
_GENERATION_FAILURES = _refusals(400, 401, 404, 405, 413, 422, 429, 502, 503, 504)
_REQUEST_ID = {
    "name": "x-request-id", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "The request's id (1 to 128 of `A-Za-z0-9._:-`), echoed in the answer and the logs; one is made when it is missing or another",
}
_STREAM_ID = {"name": "stream_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TOKEN = {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
          "description": "The capability token of the URL the stream's creation answered (instead of a key)"}

CHAT = Operation(
    "Chat completions (OpenAI): streamed as SSE with `stream: true`, else one JSON answer. Fields not named here pass on to the model server.",
    {200: Answer("The completion, or its stream of chunks ending with `data: [DONE]`", ChatCompletion, CHUNK_EVENTS),
     **_GENERATION_FAILURES},
    request=ChatRequest, parameters=(_REQUEST_ID,),
)
GENERATE = Operation(
    "The native API: a prompt in, the generation's parts as named SSE events (`stream: true`) or one JSON answer",
    {200: Answer("The generation, or its stream of events ending with `done` or `error`", GenerateAnswer, NATIVE_EVENTS),
     **_GENERATION_FAILURES},
    request=GenerateRequest, parameters=(_REQUEST_ID,),
)
def _model_optional(kind: Any, name: str) -> Any:
    """``kind`` with its ``model`` optional (the relay's default model is used without one), for the document only."""
    fields: list[Any] = []
    for field in msgspec.structs.fields(kind):
        if field.name == "model":
            fields.append(("model", Annotated[str, msgspec.Meta(min_length=1)] | None, None))
        elif field.required:
            fields.append((field.name, field.type))
        else:
            default = field.default if field.default is not msgspec.NODEFAULT else msgspec.field(default_factory=field.default_factory)
            fields.append((field.name, field.type, default))
    fields.sort(key=lambda spec: len(spec) == 3)  # the required ones first, as a Struct declares them
    return msgspec.defstruct(name, fields, frozen=True)


CREATE_STREAM = Operation(
    "Start a resumable stream (a chat or a native request); its events are read, from any process, at `events_url`",
    {201: Answer("The stream's URLs", StreamCreated), **_GENERATION_FAILURES},
    request=_model_optional(ChatRequest, "StreamChatRequest") | GenerateRequest, parameters=(_REQUEST_ID,),
)
STREAM_EVENTS = Operation(
    "Read a resumable stream (`EventSource`): every event has an id; `Last-Event-ID` resumes after it",
    {200: Answer("The native stream's events, each with an `id`, ending with `done` or `error`", events=NATIVE_EVENTS),
     204: Answer("The stream has ended and every event was read"), **_refusals(400, 401, 404)},
    parameters=(_STREAM_ID, _TOKEN, {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}}),
)
CANCEL_STREAM = Operation(
    "Cancel a resumable stream: its generation stops, on whichever process runs it",
    {200: Answer("Cancelled, or it had ended already (`cancelled: false`)", StreamCancelled), **_refusals(401, 404)},
    parameters=(_STREAM_ID, _TOKEN),
)
HEALTH = Operation("The process is alive", {200: Answer("Alive", Health)})
READY = Operation(
    "The relay can relay: its client is open and some upstream's circuit is not open",
    {200: Answer("Ready, with each upstream's state", Readiness), 503: Answer("Not ready", Readiness)},
)
METRICS = Operation(
    "Prometheus metrics (text format): no key needed; keep it private at the proxy or with RELAY_METRICS=false",
    {200: Answer("The metrics", text=True), 404: Answer("Metrics are off (RELAY_METRICS=false)", ErrorAnswer)},
)
class ResponsesEvent(msgspec.Struct, frozen=True):
    """An event of a streamed response: its ``type`` is its event's name (the Responses API's events, README)."""

    type: str
    sequence_number: int


class ResponseAnswer(msgspec.Struct, frozen=True):
    """A response object (the Responses API's), with its ``output`` items and ``usage``."""

    id: str
    object: Literal["response"]
    model: str
    status: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None


# The Responses API's event names, each with its ``type`` and ``sequence_number`` (and the fields of its kind).
RESPONSES_EVENTS: dict[str, Any] = {name: ResponsesEvent for name in (
    "response.created", "response.in_progress", "response.output_item.added", "response.output_item.done",
    "response.content_part.added", "response.content_part.done", "response.output_text.delta", "response.output_text.done",
    "response.refusal.delta", "response.refusal.done", "response.function_call_arguments.delta", "response.function_call_arguments.done",
    "response.reasoning_summary_part.added", "response.reasoning_summary_part.done", "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done", "response.completed", "response.incomplete", "response.failed",
)}
RESPONSES = Operation(
    "OpenAI Responses (stateless): streamed as typed SSE events with `stream: true`, else one response object",
    {200: Answer("The response, or its events ending with one of response.completed, response.incomplete, response.failed",
                 ResponseAnswer, RESPONSES_EVENTS), **_GENERATION_FAILURES},
    request=ResponsesRequest, parameters=(_REQUEST_ID,),
)
class AnthropicErrorDetail(msgspec.Struct, frozen=True):
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    phase: str | None = None


class AnthropicError(msgspec.Struct, frozen=True):
    """The Messages API's error (``/v1/messages``), with the relay's ``code`` (and ``param``, ``phase``) beside its own."""

    type: Literal["error"]
    error: AnthropicErrorDetail


class MessageAnswer(msgspec.Struct, frozen=True):
    """A whole message (the Messages API's), with its content blocks and usage."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: str | None
    usage: dict[str, Any]


class MessagesEvent(msgspec.Struct, frozen=True):
    """An event of a streamed message: its ``type`` is its event's name (the Messages API's events, README)."""

    type: str


MESSAGES_EVENTS: dict[str, Any] = {name: MessagesEvent for name in (
    "message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop", "ping",
)} | {"error": AnthropicError}
MESSAGES = Operation(
    "Anthropic Messages: streamed as the Messages API's SSE events with `stream: true`, else one message; errors in its shape",
    {200: Answer("The message, or its events ending with message_stop or one error", MessageAnswer, MESSAGES_EVENTS),
     **{status: Answer(_REFUSALS.get(status, description), AnthropicError) for status, description in (
         (400, ""), (401, ""), (403, ""), (404, ""), (413, ""), (429, ""), (500, "The model server failed before the answer began"),
         (504, ""), (529, "The relay is shutting down, or the model server is overloaded"))},
     405: Answer(_REFUSALS[405], ErrorAnswer)},
    request=MessagesRequest, parameters=(_REQUEST_ID,),
)
class ModelEntry(Body, frozen=True):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Body, frozen=True):
    object: Literal["list"]
    data: list[ModelEntry]


_MODEL_ID = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}, "description": "a model id (it may hold `/`)"}
MODELS = Operation(
    "The model names clients may use (OpenAI's list shape): the configured ones, else the upstreams' own lists",
    {200: Answer("The list", ModelList), 401: Answer(_REFUSALS[401], ErrorAnswer),
     502: Answer("No upstream's own list could be read (the message says why)", ErrorAnswer)},
)
MODEL = Operation(
    "One model of the list",
    {200: Answer("The model", ModelEntry), 401: Answer(_REFUSALS[401], ErrorAnswer), 404: Answer("Not in the list", ErrorAnswer),
     502: Answer("No upstream's own list could be read (the message says why)", ErrorAnswer)},
    parameters=(_MODEL_ID,),
)
CHAT_PAGE = Operation("The chat page", {200: Answer("The page", html=True)})
OPENAPI = Operation("This document", {200: Answer("The OpenAPI 3.1 document", dict[str, Any])})
DOCS = Operation("This document, rendered", {200: Answer("The page", html=True)})


def document(operations: list[tuple[str, str, Operation]], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations`` (path, method, operation), with their types' schemas as components."""
    kinds: list[Any] = []
    for _, _, operation in operations:
        if operation.request is not None:
            kinds.extend(_alternatives(operation.request))
        for answer in operation.answers.values():
            if answer.json is not None:
                kinds.extend(_alternatives(answer.json))
            for kind in (answer.events or {}).values():
                kinds.extend(_alternatives(kind))
    schemas, components = msgspec.json.schema_components(kinds, ref_template="#/components/schemas/{name}")
    by_id = dict(zip(map(id, kinds), schemas, strict=True))

    def schema_of(kind: Any) -> Any:
        alternatives = _alternatives(kind)
        if len(alternatives) == 1:
            return by_id[id(kind)]
        return {"anyOf": [by_id[id(alternative)] for alternative in alternatives]}

    paths: dict[str, dict[str, Any]] = {}
    for path, method, operation in operations:
        # A route's parameter convertor (``{model:path}``) is the router's business: OpenAPI names the parameter only.
        paths.setdefault(_CONVERTOR.sub(r"{\1}", path), {})[method.lower()] = _operation(operation, schema_of, keyed=path.startswith("/v1/"))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Token Relay", "version": version,
                 "description": "Relays LLM token streams from model servers to clients as Server-Sent Events."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}, "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        },
    }


_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def _alternatives(kind: Any) -> tuple[Any, ...]:
    """The members of a union of untagged Structs (which msgspec gives no one schema for), else ``kind`` alone."""
    return typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)


def _operation(operation: Operation, schema_of: Callable[[Any], Any], *, keyed: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": operation.summary, "responses": {
        str(status): _answer(answer, schema_of) for status, answer in operation.answers.items()
    }}
    if operation.parameters:
        out["parameters"] = list(operation.parameters)
    if operation.request is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema_of(operation.request)}}}
    if keyed:
        # Behind the relay's keys (app/middleware.py), when it has any: with none it is open (the empty alternative).
        out["security"] = [{"bearer": []}, {"apiKey": []}, {}]
    return out


def _event(name: str, data: Any) -> dict[str, Any]:
    json_data = {"type": "string", "contentMediaType": "application/json", "contentSchema": data}
    return {
        "type": "object", "required": ["event", "data"],
        "properties": {
            "event": {"const": name}, "id": {"type": "string"}, "retry": {"type": "integer"},
            # A chat completion's stream ends with ``data: [DONE]``, which is not JSON.
            "data": {"anyOf": [{"const": "[DONE]"}, json_data]} if name == "message" else json_data,
        },
    }


def _answer(answer: Answer, schema_of: Callable[[Any], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    content: dict[str, Any] = {}
    if answer.json is not None:
        content["application/json"] = {"schema": schema_of(answer.json)}
    if answer.events is not None:
        # Each event of the stream (as OpenAPI 3.1 readers take an event stream's schema): its name and its data, JSON of that name's schema.
        content["text/event-stream"] = {"schema": {"oneOf": [_event(name, schema_of(kind)) for name, kind in answer.events.items()]}}
    if answer.html:
        content["text/html"] = {"schema": {"type": "string"}}
    if answer.text:
        content["text/plain"] = {"schema": {"type": "string"}}
    if content:
        out["content"] = content
    if answer.headers:
        out["headers"] = {name: {"schema": {"type": "string"}} for name in answer.headers}
    return out
