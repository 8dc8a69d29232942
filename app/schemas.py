"""Wire types of the client-facing API, decoded with msgspec (codecs are built once, here)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import msgspec

from app.streaming.events import MAX_CHOICES
from app.streaming.request import LENGTH_FIELDS, NESTED_LENGTH_FIELDS

Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
TokenCount = Annotated[int, msgspec.Meta(ge=1)]
# A count of candidates to choose from: each costs a whole generation, so only one is allowed.
One = Annotated[int, msgspec.Meta(ge=1, le=1)]
# A count of choices, each a whole generation, all relayed.
Choices = Annotated[int, msgspec.Meta(ge=1, le=MAX_CHOICES)]


class Message(msgspec.Struct, frozen=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class OllamaOptions(msgspec.Struct, frozen=True):
    """Ollama's ``options``, of which only the length is looked at (the others pass on as sent)."""

    num_predict: TokenCount | None = None


class TGIParameters(msgspec.Struct, frozen=True):
    """TGI's ``parameters``, of which only the length is looked at (the others pass on as sent)."""

    max_new_tokens: TokenCount | None = None


class ChatRequest(msgspec.Struct, frozen=True):
    """OpenAI chat completions request. Fields not named here are passed to the upstream as sent.

    A length may come under any name a model server reads (``LENGTH_FIELDS``): each is checked
    here as a positive integer (``-1``, "no limit" to llama.cpp and Ollama, is refused) and
    against the relay's limit when admitted, so whichever one the model server reads is bounded.
    """

    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    max_output_tokens: TokenCount | None = None
    max_new_tokens: TokenCount | None = None
    n_predict: TokenCount | None = None
    num_predict: TokenCount | None = None
    min_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None  # vLLM: a floor is a length too
    options: OllamaOptions | None = None
    parameters: TGIParameters | None = None
    temperature: Temperature | None = None
    n: Choices | None = None
    best_of: One | None = None

    def lengths(self) -> Iterator[tuple[str, int]]:
        """Every length the client gave, by its path."""
        for name in LENGTH_FIELDS:
            value = getattr(self, name)
            if value is not None:
                yield "$." + name, value
        if self.min_tokens is not None:
            yield "$.min_tokens", self.min_tokens
        for outer, name in NESTED_LENGTH_FIELDS:
            nested = getattr(self, outer)
            if nested is not None and getattr(nested, name) is not None:
                yield f"$.{outer}.{name}", getattr(nested, name)


class GenerateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The native API's request; ``max_tokens`` defaults to 512 (or the relay's limit, if lower)."""

    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: TokenCount | None = None
    temperature: Temperature = 0.7
    stream: bool = False
    model: str | None = None

    def lengths(self) -> Iterator[tuple[str, int]]:
        if self.max_tokens is not None:
            yield "$.max_tokens", self.max_tokens


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


class RejectionBody(msgspec.Struct, frozen=True):
    """A model server's refusal of the request, in the native API: its own error's fields, and the phase."""

    message: str
    type: str
    code: str
    param: str | None
    phase: str


class ErrorEnvelope(msgspec.Struct, frozen=True):
    error: ErrorBody | FailureBody | RejectionBody


json_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
generate_decoder = msgspec.json.Decoder(GenerateRequest)
encoder = msgspec.json.Encoder()
