"""What a client asks a model for, independent of the wire format it asked in."""

from __future__ import annotations

from typing import Any

import msgspec


class GenerationRequest(msgspec.Struct, frozen=True):
    request_id: str
    model: str
    messages: list[Any]
    max_tokens: int | None = None
    temperature: float | None = None
    # Extra OpenAI parameters the client sent (top_p, stop, seed…), passed through as sent.
    extra: dict[str, Any] = {}
