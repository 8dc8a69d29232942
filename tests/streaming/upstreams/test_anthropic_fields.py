"""The Anthropic adapter reads every block of a Messages stream (tests/streaming/upstreams/fixtures/), however the bytes are split,
and sends OpenAI's tools, tool choice, tool calls and tool results as Anthropic's."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.streaming.events import Delta, Event, Finish, PromptTokensDetails, Reasoning, RedactedReasoning, ToolCall, Usage
from app.streaming.request import GenerationRequest
from app.streaming.upstreams.adapters import ADAPTERS
from tests.streaming.upstreams.test_wire_formats import FIXTURES, events_of, run

SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."
NOT_CACHED = PromptTokensDetails(cached_tokens=0, cache_write_tokens=0)
WEATHER_TEXT = ["Okay", ",", " let", "'s", " check", " the", " weather", " for", " San", " Francisco", ",", " CA", ":"]
WEATHER_ARGS = ['{"location":', ' "San', " Francisc", "o,", ' CA"', ", ", '"unit": "fah', 'renheit"}']

CASES: dict[str, list[Event]] = {
    "anthropic-tool-use.sse": [
        *[Delta(text) for text in WEATHER_TEXT],
        ToolCall(0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather"), *[ToolCall(0, arguments=part) for part in WEATHER_ARGS],
        Usage(472, 89, 561), Finish("tool_calls"),
    ],
    "anthropic-parallel-tools.sse": [
        Delta("I'll check the weather and the time"), Delta(" in San Francisco."),
        ToolCall(0, "toolu_01A09q90qw90lq917835lq9", "get_weather"), ToolCall(0, arguments='{"location": "San Fra'),
        ToolCall(0, arguments='ncisco, CA"}'),
        ToolCall(1, "toolu_01B09q90qw90lq917835lq8", "get_time"), ToolCall(1, arguments='{"timezone": "Amer'),
        ToolCall(1, arguments='ica/Los_Angeles"}'),
        Usage(530, 120, 650, NOT_CACHED), Finish("tool_calls"),
    ],
    "anthropic-thinking.sse": [
        Reasoning("I need to find the GCD of 1071 and 462 using the Euclidean algorithm.\n\n1071 = 2 * 462 + 147"),
        Reasoning("\n462 = 3 * 147 + 21\n147 = 7 * 21 + 0\n\nSo GCD(1071, 462) = 21"), Reasoning("", signature=SIGNATURE),
        Delta("The greatest common divisor of 1071 and 462 is **21**."),
        Usage(41, 178, 219, NOT_CACHED), Finish("stop"),
    ],
    "anthropic-redacted-thinking.sse": [
        Reasoning("Let me think about this."), Reasoning("", signature="ErUBCkYIBRgCIkCMw2vrVx"),
        RedactedReasoning("EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"), Delta("Here is my answer."),
        Usage(92, 45, 137), Finish("stop"),
    ],
    "anthropic-call-max-tokens.sse": [
        ToolCall(0, "toolu_01Wr1teF1leCut0ff", "write_file"), ToolCall(0, arguments='{"path": "a.txt", '),
        ToolCall(0, arguments='"text": "once upon'), Usage(60, 16, 76), Finish("length"),
    ],
    "anthropic-zero-arg-call.sse": [
        ToolCall(0, "toolu_01NoArgs0000000000000001", "get_time"), ToolCall(0, arguments="{}"),
        ToolCall(1, "toolu_01NoArgs0000000000000002", "roll_dice"), ToolCall(1, arguments="{}"),
        Usage(380, 40, 420), Finish("tool_calls"),
    ],
    "anthropic-usage-cache.sse": [
        Delta("The novel's themes"), Usage(188107, 393, 188500, PromptTokensDetails(cached_tokens=0, cache_write_tokens=188086)), Finish("stop"),
    ],
    "anthropic-cache-read-refusal.sse": [
        Delta("Again"), Usage(188107, 5, 188112, PromptTokensDetails(cached_tokens=188086, cache_write_tokens=0)), Finish("content_filter"),
    ],
}


@pytest.mark.parametrize("size", [None, 1, 7, 64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_block_becomes_its_event_however_split(name: str, size: int | None) -> None:
    assert run("anthropic", (FIXTURES / name).read_bytes(), size=size) == CASES[name]


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(CASES)), cuts=st.lists(st.floats(0, 1), max_size=40))
def test_any_split_gives_the_same_events(name: str, cuts: list[float]) -> None:
    body = (FIXTURES / name).read_bytes()
    points = sorted({int(cut * len(body)) for cut in cuts} | {0, len(body)})
    assert events_of("anthropic", [body[a:b] for a, b in itertools.pairwise(points) if b > a]) == CASES[name]


def test_a_call_index_counts_tool_use_blocks_not_content_blocks() -> None:
    """The first call is block 1 (after the text): it is call 0 all the same."""
    events = run("anthropic", (FIXTURES / "anthropic-parallel-tools.sse").read_bytes())
    assert {event.index for event in events if isinstance(event, ToolCall)} == {0, 1}


def test_a_whole_input_in_the_blocks_start_is_the_calls_arguments() -> None:
    body = (b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
            b'"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{"a":1}}}\n\n'
            b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
            b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"}}\n\n'
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert run("anthropic", body) == [ToolCall(0, "toolu_1", "f", '{"a":1}'), Usage(), Finish("tool_calls")]


def sent(**extra: Any) -> dict[str, Any]:
    messages = extra.pop("messages", [{"role": "user", "content": "Weather in Paris?"}])
    _, _, body = ADAPTERS["anthropic"].build_request(GenerationRequest("r", "claude", messages, extra=extra), None)
    decoded: dict[str, Any] = msgspec.json.decode(body)
    return decoded


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}}


def test_function_tools_go_upstream_as_anthropic_tools() -> None:
    bare = {"type": "function", "function": {"name": "get_time"}}
    assert sent(tools=[WEATHER_TOOL, bare])["tools"] == [
        {"name": "get_weather", "description": "The weather in a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert not {"tools", "tool_choice"} & set(sent(tool_choice="auto"))  # a tool choice without tools: Anthropic refuses it


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
])
def test_tool_choice_is_anthropics(choice: object, parallel: bool | None, expected: dict[str, Any]) -> None:
    extra: dict[str, Any] = {"tools": [WEATHER_TOOL], "tool_choice": choice}
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    assert sent(**extra)["tool_choice"] == expected


def test_assistant_tool_calls_and_tool_results_become_blocks_in_alternating_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_3", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_3", "content": "9C"},
        {"role": "user", "content": "Thanks"},
    ]
    assert sent(messages=messages)["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "noon"},
        ]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {"city": "Oslo"}},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3", "content": "9C"}, {"type": "text", "text": "Thanks"}]},
    ]


def test_thinking_blocks_sent_back_go_first_in_their_assistant_message() -> None:
    thinking = [{"type": "thinking", "thinking": "Paris, then.", "signature": "sig"}, {"type": "redacted_thinking", "data": "opaque"}]
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "thinking_blocks": thinking, "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}]
    assert sent(messages=messages)["messages"][1]["content"] == [*thinking, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]


@pytest.mark.parametrize(("extra", "max_tokens", "thinking"), [
    ({"reasoning_effort": "low"}, 4096 + 1024, {"type": "enabled", "budget_tokens": 1024}),
    ({"reasoning_effort": "high"}, 4096 + 16384, {"type": "enabled", "budget_tokens": 16384}),
    ({"reasoning_effort": "medium", "max_tokens": 2000}, 2000, {"type": "enabled", "budget_tokens": 1999}),
    ({"reasoning_effort": "medium", "max_tokens": 1000}, 1000, None),
    ({"reasoning_effort": "none"}, 4096, None),
    ({"thinking": {"type": "enabled", "budget_tokens": 3000}, "reasoning_effort": "high", "max_tokens": 8000}, 8000,
     {"type": "enabled", "budget_tokens": 3000}),
])
def test_reasoning_asked_for_is_a_thinking_budget_below_max_tokens(extra: dict[str, Any], max_tokens: int, thinking: object) -> None:
    body = sent(**extra)
    assert (body["max_tokens"], body.get("thinking")) == (max_tokens, thinking)
