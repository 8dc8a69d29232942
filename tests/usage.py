"""The usage the embedded mock reports for a short plain prompt, as the relay carries it in OpenAI's shape."""

from __future__ import annotations

from typing import Any

import msgspec

from app.streaming.events import CompletionTokensDetails, PromptTokensDetails


def mock_usage(prompt: int, completion: int, *, details: bool = True) -> dict[str, Any]:
    """With ``details`` (an OpenAI-protocol upstream), none of the prompt cached and no reasoning; else the counts alone."""
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": msgspec.to_builtins(PromptTokensDetails(cached_tokens=0)) if details else None,
        "completion_tokens_details": msgspec.to_builtins(CompletionTokensDetails(reasoning_tokens=0)) if details else None,
    }
