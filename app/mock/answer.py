"""What the mock answers, whatever the protocol: text, reasoning, a refusal or tool calls, derived from the request alone.

A ``Call`` is a request as every protocol's wire reads it; ``compose`` turns it into an ``Answer``
that a wire then frames. Everything is deterministic: the same request gets the same answer.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from app.mock.options import Options

_WORDS = (
    "the quick brown fox jumps over a lazy dog while streams of tokens flow from model to "
    "relay to reader and every event arrives in order with nothing lost nothing doubled "
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u6f22\u5b57 \U0001f680"
).split()
REFUSAL = "I'm sorry, but I can't help with that request."
FRAGMENT = 6  # characters of a call's arguments per streamed fragment
_MAX_RESULT = 200  # characters of each tool result that the final answer quotes
_DEFAULT_PROPERTIES = {"query": "string", "limit": "integer"}  # a tool that declares no parameters

_encode = msgspec.json.Encoder().encode


def mock_text(prompt: str, count: int) -> list[str]:
    """The tokens the mock answers ``prompt`` with: deterministic, a word each."""
    seed = hashlib.sha256(prompt.encode()).digest()
    return [(" " if i else "") + _WORDS[(seed[i % 32] + i * 7) % len(_WORDS)] for i in range(count)]


def words(sentence: str) -> list[str]:
    """A sentence as tokens, a word each, each but the first with the space before it."""
    return re.findall(r"\s*\S+", sentence)


def logprob(token: str, position: int, top: int) -> dict[str, Any]:
    """A token's log probability and its ``top`` most likely alternatives (itself first), OpenAI's shape."""
    value = -(((position * 7 + len(token)) % 13) + 1) / 16  # exact in binary, so it survives any JSON round trip
    space = " " if token.startswith(" ") else ""
    others = [space + word for word in _WORDS[position % 7:] if space + word != token][:max(top - 1, 0)]
    alternatives = [(token, value), *((other, value - 0.5 * (rank + 1)) for rank, other in enumerate(others))][:top]
    return {"token": token, "logprob": value, "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in alternatives]}


class Tool(msgspec.Struct, frozen=True):
    name: str
    properties: dict[str, str] | None = None  # each parameter's JSON type; None when the tool declares none


class Call(msgspec.Struct):
    """A request, whatever its protocol: what the mock needs to answer it."""

    model: str
    prompt: str
    stream: bool
    max_tokens: int | None = None
    include_usage: bool = False
    tools: list[Tool] = []
    tool_choice: str | None = None  # "none", or the name of the tool to call; None lets the model choose
    parallel: bool = True
    results: list[str] = []  # the tool results that came back since the last user message
    reasoning: bool = False  # the request asks for reasoning in its protocol's own way
    logprobs: int | None = None  # how many top logprobs per token, when logprobs are asked for
    n: int = 1


class ToolCall(msgspec.Struct):
    id: str
    name: str
    arguments: dict[str, Any]  # what the model means to pass
    fragments: list[str]  # the arguments' JSON text in the pieces it streams in: fewer when it was cut off
    complete: bool = True

    @property
    def text(self) -> str:
        return "".join(self.fragments)

    def written(self) -> dict[str, Any]:
        """The arguments whose key and value were written whole before a cut (all of them for a complete call)."""
        if self.complete:
            return self.arguments
        items, text = list(self.arguments.items()), self.text
        kept = [k for k in range(1, len(items) + 1) if len(_encode(dict(items[:k]))) - 1 <= len(text)]
        return dict(items[:max(kept, default=0)])


class Choice(msgspec.Struct):
    index: int
    reasoning: list[str]
    content: list[str]
    refusal: list[str]
    calls: list[ToolCall]
    reason: str  # "stop", "length" or "tool_calls"

    @property
    def tokens(self) -> int:
        return len(self.reasoning) + len(self.content) + len(self.refusal) + sum(len(call.fragments) for call in self.calls)


class Answer(msgspec.Struct):
    """What the mock answers: its choices, why each stops, its usage."""

    id: str
    model: str
    choices: list[Choice]
    prompt_tokens: int
    cached_tokens: int
    logprobs: int | None = None
    reasoning_style: str | None = None  # the option that asked for reasoning ("on", "vllm", "redacted")
    interleaved: bool = True  # whether parallel calls stream their fragments in turns, or one call after the other

    @property
    def tokens(self) -> list[str]:
        return self.choices[0].content

    @property
    def reason(self) -> str:
        return self.choices[0].reason

    @property
    def plain(self) -> bool:
        """One choice of text alone, without logprobs: the path every wire keeps cheapest."""
        first, *others = self.choices
        return not others and self.logprobs is None and not (first.reasoning or first.refusal or first.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(choice.tokens for choice in self.choices)

    @property
    def reasoning_tokens(self) -> int:
        return sum(len(choice.reasoning) for choice in self.choices)


def compose(call: Call, options: Options, natural: int, request_id: str) -> Answer:
    """The answer to ``call``: ``natural`` words of text (or reasoning, a refusal, tool calls), cut by its token limit."""
    choices = [_choice(call, options, natural, index) for index in range(max(call.n, 1))]
    prompt_tokens = len(call.prompt.split())
    # Half the prompt counts as cached, in blocks of four words: a short prompt has none, and says 0.
    return Answer("chatcmpl-mock-" + (request_id or "0"), call.model, choices, prompt_tokens, prompt_tokens // 4 * 2, call.logprobs,
                  options.reasoning or ("on" if call.reasoning else None), options.tools != "sequential")


def _choice(call: Call, options: Options, natural: int, index: int) -> Choice:
    seed = call.prompt if index == 0 else f"{call.prompt} #{index}"
    reasoning = mock_text("reasoning: " + seed, max(natural // 2, 1)) if options.reasoning or call.reasoning else []
    content: list[str] = []
    refusal: list[str] = []
    calls: list[ToolCall] = []
    limit = call.max_tokens or None
    if call.results:
        content = words("the tool returned: " + "; ".join(result[:_MAX_RESULT] for result in call.results))
    elif options.refusal:
        refusal = words(REFUSAL)
    elif call.tools and call.tool_choice != "none":
        kind = "one" if options.tools in ("parallel", "sequential") and not call.parallel else options.tools
        if kind == "text-then-call":
            content = mock_text(seed, natural)
        calls = [_tool_call(seed, call, kind, index, k) for k in range(2 if kind in ("parallel", "sequential") else 1)]
        if kind == "length":  # as if the token limit fell halfway through the call's arguments
            cut = len(reasoning) + len(calls[0].fragments) // 2
            limit = cut if limit is None else min(limit, cut)
    else:
        content = mock_text(seed, natural)
    return _cut(Choice(index, reasoning, content, refusal, calls, "tool_calls" if calls else "stop"), limit)


def _tool_call(seed: str, call: Call, kind: str, choice: int, k: int) -> ToolCall:
    name = call.tool_choice or call.tools[k % len(call.tools)].name
    tool = next((tool for tool in call.tools if tool.name == name), Tool(name))
    digest = hashlib.sha256(f"{seed}\x00{choice}\x00{k}".encode()).digest()
    arguments = {} if kind == "no-args" else _arguments(digest, tool)
    text = _encode(arguments).decode()
    return ToolCall("call_" + digest.hex()[:24], name, arguments, [text[i:i + FRAGMENT] for i in range(0, len(text), FRAGMENT)])


def _arguments(digest: bytes, tool: Tool) -> dict[str, Any]:
    """A value of each parameter's declared type, drawn from ``digest``."""
    values: dict[str, Any] = {}
    for j, (name, kind) in enumerate(list((_DEFAULT_PROPERTIES if tool.properties is None else tool.properties).items())[:8]):
        byte = digest[j]
        if kind in ("integer", "number"):
            values[name] = byte % 100 + 1
        elif kind == "boolean":
            values[name] = bool(byte & 1)
        elif kind == "array":
            values[name] = [_WORDS[byte % len(_WORDS)]]
        elif kind == "object":
            values[name] = {}
        else:
            values[name] = f"{_WORDS[byte % len(_WORDS)]} {_WORDS[digest[j + 8] % len(_WORDS)]}"
    return values


def _cut(choice: Choice, limit: int | None) -> Choice:
    """``choice`` as the token limit leaves it: the first ``limit`` tokens, in the order they are generated."""
    if limit is None or choice.tokens <= limit:
        return choice
    left = max(limit, 0)
    reasoning: list[str] = []
    content: list[str] = []
    refusal: list[str] = []
    for whole, kept in ((choice.reasoning, reasoning), (choice.content, content), (choice.refusal, refusal)):
        kept += whole[:left]
        left -= len(kept)
    calls = []
    for call in choice.calls:
        if left > 0:
            calls.append(ToolCall(call.id, call.name, call.arguments, call.fragments[:left], left >= len(call.fragments)))
        left -= len(call.fragments)
    return Choice(choice.index, reasoning, content, refusal, calls, "length")
