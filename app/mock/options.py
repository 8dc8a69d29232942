"""What a request asks the mock for beyond its body: faults and answer kinds, by model name, path segment or header.

A name ``mock-<option>[-<kind>]`` (as the model, or as a segment of the path, so that an upstream's
base URL can choose) and a header ``x-mock-<option>: <kind>`` choose the same thing; the header wins.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

FAULTS = ("http-500", "http-429", "error-midstream", "reset", "no-done", "stall-head", "stall-first", "stall-midstream", "malformed")
TOOL_KINDS = ("parallel", "sequential", "one", "no-args", "text-then-call", "length")
REASONING_KINDS = ("on", "vllm", "redacted")
SERVERS = ("tgi",)
_KINDS = {"fault": FAULTS, "tools": TOOL_KINDS, "reasoning": REASONING_KINDS, "refusal": ("on",), "server": SERVERS}
_BARE = ("tools", "reasoning", "refusal")  # may be named without a kind (``mock-reasoning``): they take their first

MODELS = (
    "mock",
    *(f"mock-{option}" for option in ("reasoning", "refusal")),
    *(f"mock-{option}-{kind}" for option, kinds in _KINDS.items() for kind in kinds if (option, kind) not in {("reasoning", "on"), ("refusal", "on")}),
)


class Options(msgspec.Struct, frozen=True):
    fault: str | None = None
    tools: str = "parallel"
    reasoning: str | None = None
    refusal: bool = False
    server: str | None = None


class UnknownOption(ValueError):
    """A ``mock-…`` name or ``x-mock-…`` header whose kind the mock does not have."""


def options_of(path: str, headers: Mapping[str, str], model: str) -> Options:
    """The options a request chooses; raises ``UnknownOption`` for a kind that does not exist."""
    chosen: dict[str, str] = {}
    for name in (*path.split("/"), model):
        for option in _KINDS:
            prefix = f"mock-{option}"
            if name.startswith(prefix + "-") or (name == prefix and option in _BARE):
                chosen[option] = name[len(prefix) + 1:] or _KINDS[option][0]
    for option in _KINDS:
        if f"x-mock-{option}" in headers:
            chosen[option] = headers[f"x-mock-{option}"]
    for option, kind in chosen.items():
        if kind not in _KINDS[option]:
            raise UnknownOption(f"no such fault {kind!r}" if option == "fault" else f"no such mock {option} {kind!r}")
    return Options(
        fault=chosen.get("fault"), tools=chosen.get("tools", "parallel"), reasoning=chosen.get("reasoning"),
        refusal="refusal" in chosen, server=chosen.get("server"),
    )
