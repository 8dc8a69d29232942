"""What a client asks a model for, independent of the wire format it asked in."""

from __future__ import annotations

from typing import Any

import msgspec

# The names a chat client may give a generation's length under: OpenAI's, then other model servers'
# (the Responses API and Gemini, TGI, llama.cpp, Ollama), and those nested in Ollama's options and TGI's parameters.
LENGTH_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens", "max_new_tokens", "n_predict", "num_predict")
NESTED_LENGTH_FIELDS = (("options", "num_predict"), ("parameters", "max_new_tokens"))


class GenerationRequest(msgspec.Struct, frozen=True):
    request_id: str
    model: str
    messages: list[Any]
    max_tokens: int | None = None
    temperature: float | None = None
    # Extra OpenAI parameters the client sent (top_p, stop, seed…), passed through as sent.
    extra: dict[str, Any] = {}
    # The relay's limit: what a protocol that must bound a generation asks for when the client gave no length.
    max_tokens_limit: int | None = None
    # The Messages API body as a client sent it (the Anthropic dialect, app/dialects/anthropic.py): an Anthropic
    # upstream is sent it as it is (but for model, max_tokens and stream), thinking signatures and all; others read ``messages``.
    anthropic: dict[str, Any] | None = None

    def token_limit(self) -> int | None:
        """The client's token limit: ``max_tokens``, else the smallest length it gave under any name in ``extra``."""
        if self.max_tokens is not None:
            return self.max_tokens
        extra = self.extra
        given = [value for name in LENGTH_FIELDS if type(value := extra.get(name)) is int]
        for outer, name in NESTED_LENGTH_FIELDS:
            nested = extra.get(outer)
            if type(nested) is dict and type(value := nested.get(name)) is int:
                given.append(value)
        return min(given, default=None)

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
