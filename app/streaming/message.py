"""Parts merged as a client merges them: per choice, per field, per call.

``Merged`` adds parts up the way an OpenAI client accumulates a stream: the texts of one
field of one choice concatenated, the fragments of one call concatenated under its index
(never with another call's), logprob lists extended in order, the last usage kept. Reasoning
is kept in blocks: a signature closes its block, and a redacted block stands alone, so that
a thinking block can be sent back as it was.

It serves both ends of coalescing: a batch of parts that waited for a slow client (one event
out for many in: app/streaming/encoders.py), and a whole generation for a ``stream: false``
answer (``CollectedStream``).
"""

from __future__ import annotations

from typing import assert_never

import msgspec

from app.streaming.events import Delta, Logprobs, Part, Reasoning, RedactedReasoning, Refusal, ToolCall, Usage


def size(part: Part) -> int:
    """The characters of text a part carries (bytes, for ASCII), and at least 1: what a lagging client is bounded by.

    At least 1, so that parts without text (a usage, an empty logprobs list) are bounded in number too.
    A direct stream asks this of every part but a content delta: the kinds it sends most come first.
    """
    match part:
        case ToolCall():
            return len(part.arguments) + len(part.id or "") + len(part.name or "") or 1
        case Reasoning():
            return len(part.text) + (len(part.signature) if part.signature is not None else 0) or 1
        case Delta() | Refusal():
            return len(part.text) or 1
        case RedactedReasoning():
            return len(part.data) or 1
        case Logprobs():
            return sum(map(len, part.content or ())) + sum(map(len, part.refusal or ())) or 1
        case Usage():
            return 1
        case _:
            assert_never(part)


class Call:
    """One tool call's fragments."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []


class Thinking:
    """One reasoning block: text parts and the signature that closed it, or a redacted block's data."""

    __slots__ = ("parts", "redacted", "signature")

    def __init__(self, redacted: str | None = None) -> None:
        self.parts: list[str] = []
        self.signature: str | None = None
        self.redacted = redacted

    @property
    def open(self) -> bool:
        return self.signature is None and self.redacted is None


class Choice:
    """What one choice's parts add up to."""

    __slots__ = ("calls", "content", "content_logprobs", "reasoning", "refusal", "refusal_logprobs")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[Thinking] = []
        self.refusal: list[str] = []
        self.calls: dict[int, Call] = {}
        self.content_logprobs: list[msgspec.Raw] | None = None
        self.refusal_logprobs: list[msgspec.Raw] | None = None

    def reasoning_text(self) -> str:
        return "".join([part for block in self.reasoning for part in block.parts])

    def sorted_calls(self) -> list[tuple[int, Call]]:
        return sorted(self.calls.items())


class Merged:
    """Parts added up: ``choices`` by index, and the last ``usage``."""

    __slots__ = ("choices", "usage")

    def __init__(self) -> None:
        self.choices: dict[int, Choice] = {}
        self.usage: Usage | None = None

    @classmethod
    def of(cls, parts: list[Part]) -> Merged:
        merged = cls()
        for part in parts:
            merged.add(part)
        return merged

    def choice(self, index: int) -> Choice:
        choice = self.choices.get(index)
        if choice is None:
            choice = self.choices[index] = Choice()
        return choice

    def sorted_choices(self) -> list[tuple[int, Choice]]:
        return sorted(self.choices.items())

    def add(self, part: Part) -> None:
        match part:
            case Delta():
                self.choice(part.choice).content.append(part.text)
            case Reasoning():
                blocks = self.choice(part.choice).reasoning
                if not blocks or not blocks[-1].open:
                    blocks.append(Thinking())
                blocks[-1].parts.append(part.text)
                blocks[-1].signature = part.signature
            case RedactedReasoning():
                self.choice(part.choice).reasoning.append(Thinking(part.data))
            case ToolCall():
                calls = self.choice(part.choice).calls
                call = calls.get(part.index)
                if call is None:
                    call = calls[part.index] = Call()
                # An id or a name comes once; should an upstream send more of one, the client would append it.
                if part.id is not None:
                    call.id = part.id if call.id is None else call.id + part.id
                if part.name is not None:
                    call.name = part.name if call.name is None else call.name + part.name
                call.arguments.append(part.arguments)
            case Refusal():
                self.choice(part.choice).refusal.append(part.text)
            case Logprobs():
                choice = self.choice(part.choice)
                if part.content is not None:
                    if choice.content_logprobs is None:
                        choice.content_logprobs = []
                    choice.content_logprobs.extend(part.content)
                if part.refusal is not None:
                    if choice.refusal_logprobs is None:
                        choice.refusal_logprobs = []
                    choice.refusal_logprobs.extend(part.refusal)
            case Usage():
                self.usage = part
            case _:
                assert_never(part)
