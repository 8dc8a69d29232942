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

    def token_limit(self) -> int | None:
        """The client's token limit, whichever field it came in (``max_completion_tokens`` wins, as with OpenAI)."""
        limit = self.max_tokens or self.extra.get("max_completion_tokens") or self.extra.get("max_tokens")
        return limit if isinstance(limit, int) else None

    def sampling_temperature(self) -> float | None:
        temperature = self.temperature if self.temperature is not None else self.extra.get("temperature")
        return float(temperature) if isinstance(temperature, (int, float)) else None


def content_text(content: Any) -> str:
    """A message's text: its string, or the text parts of a list of OpenAI content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type", "text") == "text")
    return ""


def prompt_text(messages: list[Any]) -> str:
    """One prompt for a completion-style model server: a lone user message as it is, else a transcript.

    The transcript is ``role: text`` lines ending in ``assistant:``; it is no model's chat template,
    so a chat should go to a server that applies its own (TGI's Messages API, through ``openai``).
    """
    if len(messages) == 1 and isinstance(messages[0], dict) and messages[0].get("role") == "user":
        return content_text(messages[0].get("content"))
    lines = [f"{message.get('role', 'user')}: {content_text(message.get('content'))}" for message in messages if isinstance(message, dict)]
    return "\n".join([*lines, "assistant:"])
