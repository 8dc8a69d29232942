"""Wire types of the client-facing API, decoded with msgspec (codecs are built once, here)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
TokenCount = Annotated[int, msgspec.Meta(ge=1)]


class Message(msgspec.Struct, frozen=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class ChatRequest(msgspec.Struct, frozen=True):
    """OpenAI chat completions request. Fields not named here are passed to the upstream as sent."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None


class GenerateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The native API's request; ``max_tokens`` defaults to 512 (or the relay's limit, if lower)."""

    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: TokenCount | None = None
    temperature: Temperature = 0.7
    stream: bool = False
    model: str | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    """The OpenAI error shape, used by every route for a refused request."""

    message: str
    type: str
    code: str
    param: str | None = None


class FailureBody(msgspec.Struct, frozen=True):
    """A generation that failed before anything was sent: the terminal error's fields."""

    message: str
    type: str
    code: str
    phase: str


class ErrorEnvelope(msgspec.Struct, frozen=True):
    error: ErrorBody | FailureBody


json_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
generate_decoder = msgspec.json.Decoder(GenerateRequest)
encoder = msgspec.json.Encoder()
