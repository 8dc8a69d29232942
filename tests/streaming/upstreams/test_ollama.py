"""Ollama's native ``/api/chat`` carries tool calls, thinking and its finish reasons (tests/streaming/upstreams/fixtures/),
however the bytes are split, and the request carries tools, tool results and ``think`` in Ollama's shape."""

from __future__ import annotations

import itertools
import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.streaming.events import Delta, Event, Finish, Reasoning, ToolCall, Usage
from app.streaming.request import GenerationRequest
from app.streaming.upstreams.adapters import ADAPTERS
from tests.streaming.upstreams.test_wire_formats import FIXTURES, events_of, run

WEATHER = "get_current_weather"
CASES: dict[str, list[Event]] = {
    "ollama-thinking-call.ndjson": [
        Reasoning("Okay, the user"), Reasoning(" wants the weather"), Reasoning(" in Toronto."), Delta("Let me check."),
        ToolCall(0, "call_0", WEATHER, '{"format":"celsius","location":"Toronto"}'),
        Usage(186, 72, 258), Finish("tool_calls"),
    ],
    "ollama-parallel-tools.ndjson": [
        ToolCall(0, "call_0", WEATHER, '{"format":"celsius","location":"Paris, FR"}'),
        ToolCall(1, "call_1", WEATHER, '{"format":"celsius","location":"Bogotá, CO"}'),
        ToolCall(2, "call_2", "get_current_time", "{}"),
        Usage(122, 33, 155), Finish("tool_calls"),
    ],
    "ollama-length.ndjson": [Delta("The"), Delta(" sky"), Usage(None, 2, None), Finish("length")],
    "ollama-whole-tools.json": [
        Reasoning("The user wants Paris."), ToolCall(0, "call_0", WEATHER, '{"format":"celsius","location":"Paris, FR"}'),
        Usage(122, 33, 155), Finish("tool_calls"),
    ],
}
GENERATED = re.compile(r"call_[0-9a-f]{24}")


def with_ids_named(events: list[Event]) -> list[Event]:
    """The events with each generated call id replaced by ``call_<index>``, once it is checked to be one."""
    named: list[Event] = []
    for event in events:
        if isinstance(event, ToolCall) and event.id is not None:
            assert GENERATED.fullmatch(event.id), event.id
            event = msgspec.structs.replace(event, id=f"call_{event.index}")
        named.append(event)
    return named


def ids(events: list[Event]) -> list[str | None]:
    return [event.id for event in events if isinstance(event, ToolCall)]


@pytest.mark.parametrize("size", [None, 1, 7, 64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_calls_thinking_and_finish_reasons_become_their_events_however_split(name: str, size: int | None) -> None:
    assert with_ids_named(run("ollama", (FIXTURES / name).read_bytes(), size=size)) == CASES[name]


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(CASES)), cuts=st.lists(st.floats(0, 1), max_size=40))
def test_any_split_gives_the_same_events_and_the_same_ids(name: str, cuts: list[float]) -> None:
    body = (FIXTURES / name).read_bytes()
    points = sorted({int(cut * len(body)) for cut in cuts} | {0, len(body)})
    events = events_of("ollama", [body[a:b] for a, b in itertools.pairwise(points) if b > a])
    assert with_ids_named(events) == CASES[name]
    assert ids(events) == ids(run("ollama", body))


def test_generated_ids_are_distinct_and_differ_between_answers() -> None:
    body = (FIXTURES / "ollama-parallel-tools.ndjson").read_bytes()
    first = ids(run("ollama", body))
    assert len(set(first)) == 3
    later = ids(run("ollama", body.replace(b"2024-07-22T20:33:28.123648Z", b"2024-07-22T20:35:01.000017Z")))
    assert later[0] != first[0] and later[1] != first[1] and later[2] == first[2], "an id is derived from the line of its call"


def test_an_id_ollama_gives_is_kept() -> None:
    line = b'{"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_kx81","function":{"name":"f","arguments":{"a":1}}}]},"done":false}\n'
    done = b'{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":1,"eval_count":2}\n'
    assert run("ollama", line + done) == [ToolCall(0, "call_kx81", "f", '{"a":1}'), Usage(1, 2, 3), Finish("tool_calls")]


def test_a_whole_answer_without_its_last_newline_is_read() -> None:
    body = (FIXTURES / "ollama-whole-tools.json").read_bytes().rstrip(b"\n")
    assert with_ids_named(run("ollama", body, content_type=b"application/json")) == CASES["ollama-whole-tools.json"]


def test_stop_without_calls_stays_stop_and_length_after_calls_stays_length() -> None:
    assert run("ollama", (FIXTURES / "ollama-chat.ndjson").read_bytes())[-1] == Finish("stop")
    body = (FIXTURES / "ollama-parallel-tools.ndjson").read_bytes().replace(b'"done_reason":"stop"', b'"done_reason":"length"')
    assert run("ollama", body)[-1] == Finish("length")


def test_too_many_calls_end_the_stream() -> None:
    calls = b",".join([b'{"function":{"name":"f","arguments":{}}}'] * 4097)
    events = run("ollama", b'{"message":{"role":"assistant","content":"","tool_calls":[' + calls + b"]},\"done\":false}\n")
    assert len(events) == 4097 and events[-1].code == "upstream_malformed"  # type: ignore[union-attr]


TOOL = {"type": "function", "function": {"name": WEATHER, "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}
TIME = {"type": "function", "function": {"name": "get_current_time", "parameters": {"type": "object", "properties": {}}}}
AGENT_TURN = [
    {"role": "user", "content": "Weather in Paris, and the time?"},
    {"role": "assistant", "content": None, "reasoning_content": "Two tools.", "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": WEATHER, "arguments": '{"location": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_current_time", "arguments": ""}},
    ]},
    {"role": "tool", "tool_call_id": "call_a", "content": "22°C"},
    {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "12:00"}]},
]


def sent(extra: dict[str, object], messages: list[object] | None = None) -> dict[str, object]:
    request = GenerationRequest("rid", "llama3.2", messages or [{"role": "user", "content": "hi"}], extra=extra)
    return msgspec.json.decode(ADAPTERS["ollama"].build_request(request, None)[2])


def test_tools_and_a_conversation_with_calls_and_results_go_in_ollamas_shape() -> None:
    body = sent({"tools": [TOOL, TIME], "tool_choice": "auto"}, AGENT_TURN)
    assert body["tools"] == [TOOL, TIME] and "tool_choice" not in body and "think" not in body
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris, and the time?"},
        {"role": "assistant", "content": "", "thinking": "Two tools.", "tool_calls": [
            {"function": {"name": WEATHER, "arguments": {"location": "Paris"}}},
            {"function": {"name": "get_current_time", "arguments": {}}},
        ]},
        {"role": "tool", "content": "22°C", "tool_name": WEATHER},
        {"role": "tool", "content": "12:00", "tool_name": "get_current_time"},
    ]


def test_arguments_that_are_no_json_object_go_as_sent() -> None:
    messages = [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1, 2"}}]}]
    assert sent({}, messages)["messages"] == [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "[1, 2"}}]}]


def test_tool_choice_none_sends_no_tools_and_a_named_one_sends_that_tool() -> None:
    assert "tools" not in sent({"tools": [TOOL, TIME], "tool_choice": "none"})
    assert sent({"tools": [TOOL, TIME], "tool_choice": {"type": "function", "function": {"name": "get_current_time"}}})["tools"] == [TIME]


@pytest.mark.parametrize(("extra", "think"), [
    ({"reasoning_effort": "high"}, True), ({"reasoning_effort": "low"}, True), ({"reasoning_effort": "none"}, False),
    ({"think": "medium", "reasoning_effort": "none"}, "medium"), ({}, None),
])
def test_think_follows_the_reasoning_the_client_asked_for(extra: dict[str, object], think: object) -> None:
    assert sent(extra).get("think") == think
