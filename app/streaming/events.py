"""The normalised event model every upstream adapter produces and every encoder consumes.

A generation is a sequence of ``Delta`` events, at most one ``Usage``, and exactly one
terminal event: ``Finish`` or ``Error``.
"""

from __future__ import annotations

import msgspec


class Delta(msgspec.Struct, frozen=True):
    """A piece of generated text."""

    text: str


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Finish(msgspec.Struct, frozen=True):
    """The generation ended normally."""

    reason: str = "stop"


class Error(msgspec.Struct, frozen=True):
    """The generation ended abnormally.

    ``type`` is a broad class (``upstream_error``, ``timeout``, ``relay_error``),
    ``code`` the precise cause (``upstream_status_500``, ``idle_timeout``, ``slow_consumer``…),
    ``phase`` where it happened: ``connect``, ``first_token``, ``stream`` or ``total``.
    """

    type: str
    code: str
    message: str
    phase: str


Event = Delta | Usage | Finish | Error
Terminal = Finish | Error
