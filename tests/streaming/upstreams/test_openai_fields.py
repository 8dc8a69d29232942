"""The OpenAI adapter reads every field of a chat stream (tests/streaming/upstreams/fixtures/), however the bytes are split:
tool calls, reasoning under both names, refusals, logprobs, usage details, several choices."""

from __future__ import annotations

import itertools
import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.streaming.events import (
    CompletionTokensDetails,
    Delta,
    Event,
    Finish,
    Logprobs,
    PromptTokensDetails,
    Reasoning,
    Refusal,
    ToolCall,
    Usage,
)
from app.streaming.upstreams.openai import MAX_CALLS, Calls, ChatStream, _Chunk
from tests.streaming.upstreams.test_wire_formats import FIXTURES, events_of, run


def raw(value: object) -> msgspec.Raw:
    """A logprob object as the fixtures write it (compact JSON)."""
    return msgspec.Raw(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def token(text: str, logprob: float, top: list[tuple[str, float]]) -> msgspec.Raw:
    return raw({"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": [
        {"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in top
    ]})


NO_DETAILS = (PromptTokensDetails(0, 0), CompletionTokensDetails(0, 0, 0, 0))
VLLM_REASONED = [
    Reasoning("Okay"), Reasoning(", the user"), Reasoning(" asks for"), Reasoning(" the weather."),
    Delta("\n\n"), Delta("I'll look it up."),
    ToolCall(0, "chatcmpl-tool-5d2f1c8e", "get_weather"), ToolCall(0, arguments='{"city": "'), ToolCall(0, arguments='Dallas", "state": "TX"}'),
    Usage(212, 56, 268), Finish("tool_calls"),
]

CASES: dict[str, list[Event]] = {
    "openai-parallel-tools.sse": [
        ToolCall(0, "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather"),
        *[ToolCall(0, arguments=part) for part in ['{"lo', "catio", 'n": "P', "aris, F", 'rance"}']],
        ToolCall(1, "call_ABCDEFGHIJKLMNOPQRSTUVWX", "get_weather"),
        *[ToolCall(1, arguments=part) for part in ['{"lo', "catio", 'n": "B', "ogotá, ", 'Colombia"}']],
        Usage(82, 37, 119, *NO_DETAILS), Finish("tool_calls"),
    ],
    "openai-interleaved-tools.sse": [
        ToolCall(0, "call_weather_1", "get_weather"), ToolCall(1, "call_time_2", "get_time"),
        ToolCall(0, arguments='{"city":'), ToolCall(1, arguments='{"zone":'), ToolCall(0, arguments='"Oslo"}'), ToolCall(1, arguments='"CET"}'),
        Finish("tool_calls"),
    ],
    "openai-text-then-call.sse": [
        Delta("Let me"), Delta(" check."),
        ToolCall(0, "call_Q9aUyu3", "get_weather"), ToolCall(0, arguments='{"city"'), ToolCall(0, arguments=':"Paris"}'),
        Finish("tool_calls"),
    ],
    "openai-zero-arg-call.sse": [
        ToolCall(0, "call_now_1", "get_time"), ToolCall(1, "call_rnd_2", "roll_dice"), ToolCall(1, arguments="{}"), Finish("tool_calls"),
    ],
    "openai-call-length.sse": [
        ToolCall(0, "call_long_1", "write_file"), ToolCall(0, arguments='{"path":"a.txt",'), ToolCall(0, arguments='"text":"once upon'),
        Usage(40, 16, 56, *NO_DETAILS), Finish("length"),
    ],
    "vllm-reasoning-content-call.sse": VLLM_REASONED,
    "vllm-reasoning-call.sse": VLLM_REASONED,
    "openai-logprobs.sse": [
        Logprobs(()),
        Delta("Hello"), Logprobs((token("Hello", -0.31725305, [("Hello", -0.31725305), ("Hi", -1.3190403)]),)),
        Delta("!"), Logprobs((token("!", -0.02380986, [("!", -0.02380986), (" there", -3.787621)]),)),
        Delta(" How"), Logprobs((token(" How", -0.000054669687, [(" How", -0.000054669687), ("<|end|>", -10.953937)]),)),
        Finish("stop"),
    ],
    "openai-refusal.sse": [
        Logprobs(None, ()),
        Refusal("I'm sorry,"), Logprobs(None, (token("I'm", -0.0012, [("I'm", -0.0012)]), token(" sorry,", -0.0004, [(" sorry,", -0.0004)]))),
        Refusal(" I can't help with that."), Logprobs(None, (token(" I can't help with that.", -0.02, []),)),
        Finish("stop"),
    ],
    "openai-usage-details.sse": [
        Delta("4"), Usage(13, 138, 151, PromptTokensDetails(0, 0), CompletionTokensDetails(128, 0, 0, 0)), Finish("stop"),
    ],
    "ollama-v1-tools.sse": [
        ToolCall(0, "call_ltz1ub3d", "get_current_weather", '{"location":"Paris","unit":"celsius"}'),
        ToolCall(1, "call_x9ka2m0q", "get_current_time", "{}"),
        Usage(180, 41, 221), Finish("tool_calls"),
    ],
    "openai-n2.sse": [
        Delta("Blue"), Delta("The sky", 1), Delta("."), Delta(" is blue", 1), Usage(12, 6, 18, *NO_DETAILS), Finish("stop", ("stop", "length")),
    ],
}


@pytest.mark.parametrize("size", [None, 1, 7, 64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_field_becomes_its_event_however_split(name: str, size: int | None) -> None:
    assert run("openai", (FIXTURES / name).read_bytes(), size=size) == CASES[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_event_a_read_takes_the_fast_path_to_the_same_events(name: str) -> None:
    body = (FIXTURES / name).read_bytes()
    assert events_of("openai", [event + b"\n\n" for event in body.split(b"\n\n") if event]) == CASES[name]


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(CASES)), cuts=st.lists(st.floats(0, 1), max_size=40))
def test_any_split_gives_the_same_events(name: str, cuts: list[float]) -> None:
    body = (FIXTURES / name).read_bytes()
    points = sorted({int(cut * len(body)) for cut in cuts} | {0, len(body)})
    assert events_of("openai", [body[a:b] for a, b in itertools.pairwise(points) if b > a]) == CASES[name]


def test_a_call_cut_off_by_length_stays_length() -> None:
    events = run("openai", (FIXTURES / "openai-call-length.sse").read_bytes())
    assert events[-1] == Finish("length") and any(isinstance(event, ToolCall) for event in events)


def test_a_body_that_ends_before_every_choice_finished_is_incomplete() -> None:
    body = (FIXTURES / "openai-n2.sse").read_bytes()
    cut = body[: body.index(b'"finish_reason":"length"')]
    [*_, last] = run("openai", cut[: cut.rindex(b"\n\n") + 2])
    assert last.code == "upstream_incomplete"  # type: ignore[union-attr]


def test_reasoning_sent_under_both_names_is_read_once() -> None:
    chunk = b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"Hm","reasoning":"Hm"}}]}\n\n'
    assert run("openai", chunk + b"data: [DONE]\n\n") == [Reasoning("Hm"), Finish("stop")]


def test_a_completion_answered_whole_keeps_its_calls_reasoning_and_logprobs() -> None:
    """A server that ignores ``stream: true``: its one JSON completion is read with ``message`` for ``delta``."""
    body = json.dumps({"choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": {"content": [{"token": "x", "logprob": -1.0}]},
                                    "message": {"role": "assistant", "content": None, "reasoning_content": "why", "tool_calls": [
                                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                                        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"a":1}'}}]}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}).encode()
    assert events_of("openai", [body], content_type=b"application/json") == [
        Reasoning("why"), ToolCall(0, "c1", "f", "{}"), ToolCall(1, "c2", "g", '{"a":1}'),
        Logprobs((msgspec.Raw(b'{"token": "x", "logprob": -1.0}'),)), Usage(3, 4, 7), Finish("tool_calls"),
    ]


def test_calls_that_all_come_at_index_0_are_told_apart_by_their_id() -> None:
    """Ollama's way: each call whole, every one at index 0; the fragments that follow belong to the latest."""
    calls = Calls()
    assert calls.place(0, "a", "f") == (0, "a", "f")
    assert calls.place(0, "b", "g") == (1, "b", "g")
    assert calls.place(0, None, None) == (1, None, None)
    assert calls.place(None, "c", "h") == (2, "c", "h")


def test_an_id_or_a_name_given_again_is_not_given_twice() -> None:
    """A client appends what it is sent: a repeated id would become ``call_1call_1``."""
    calls = Calls()
    assert calls.place(0, "call_1", "f") == (0, "call_1", "f")
    assert calls.place(0, "call_1", "f") == (0, None, None)
    assert calls.place(1, None, "g") == (1, None, "g")
    assert calls.place(1, "call_2", None) == (1, "call_2", None)  # the id of the call at its index, which had none


def test_arguments_sent_as_an_object_are_json_encoded() -> None:
    chunk = b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"id":"c","function":{"name":"f","arguments":{"q":"caf\\u00e9","n":[1,2]}}}]}}]}\n\n'
    assert run("openai", chunk + b"data: [DONE]\n\n") == [ToolCall(0, "c", "f", '{"q":"café","n":[1,2]}'), Finish("stop")]


def test_a_usage_without_details_or_counts_leaves_them_unknown() -> None:
    chunk = b'data: {"choices":[],"usage":{"completion_tokens":0}}\n\ndata: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    assert run("openai", chunk + b"data: [DONE]\n\n") == [Usage(None, 0, None), Finish("stop")]


def test_a_call_sent_alone_rather_than_in_a_list_is_read() -> None:
    """Some TGI versions send ``tool_calls`` as one object, with an empty ``id``."""
    chunk = b'data: {"choices":[{"index":0,"delta":{"tool_calls":{"index":0,"id":"","type":"function","function":{"name":"f","arguments":"{}"}}}}]}\n\n'
    assert run("openai", chunk + b"data: [DONE]\n\n") == [ToolCall(0, None, "f", "{}"), Finish("stop")]


def test_a_choice_index_past_the_bound_is_malformed() -> None:
    """The relay opens every choice up to an index: one of a billion must not cost a billion."""
    [error] = run("openai", b'data: {"choices":[{"index":1000000000,"delta":{"content":"x"}}]}\n\n')
    assert (error.code, error.phase) == ("upstream_malformed", "first_token")  # type: ignore[union-attr]


def test_a_flood_of_calls_is_cut_off_at_the_bound() -> None:
    """What the relay remembers of each call (its id, its name) is bounded, whatever the model server sends."""
    body = b"".join(b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"id":"c%d","function":{"name":"f"}}]}}]}\n\n' % n for n in range(MAX_CALLS + 1))
    events = run("openai", body)
    assert len(events) == MAX_CALLS + 1 and events[-1].code == "upstream_malformed"  # type: ignore[union-attr]
    assert "more than 4096 tool calls" in events[-1].message  # type: ignore[union-attr]


# A delta as model servers send them: content, reasoning, refusal, and tool calls in a list (or one alone, as some
# TGI versions do), each with or without its index, id and name, its arguments a text, an object or nothing.
_function = st.fixed_dictionaries({}, optional={"name": st.sampled_from(["f", "g"]), "arguments": st.one_of(
    st.text(max_size=4), st.dictionaries(st.sampled_from("ab"), st.integers(0, 9), max_size=2), st.none())})
_call = st.fixed_dictionaries({}, optional={
    "index": st.one_of(st.integers(0, 2), st.none()), "id": st.sampled_from(["c1", "c2", ""]), "function": _function, "type": st.just("function"),
})
_delta = st.fixed_dictionaries({}, optional={
    "content": st.one_of(st.text(max_size=4), st.none()), "reasoning_content": st.text(max_size=3), "refusal": st.text(max_size=3),
    "tool_calls": st.one_of(st.lists(_call, max_size=3), _call), "role": st.just("assistant"),
})
_chunks = st.lists(st.lists(st.tuples(st.integers(0, 1), _delta), min_size=1, max_size=2), max_size=12)


@settings(max_examples=400, deadline=None)
@given(_chunks)
def test_a_delta_of_calls_alone_gives_what_the_general_path_gives(chunks: list[list[tuple[int, dict[str, object]]]]) -> None:
    """The adapter's fast path for a delta that is calls alone (the usual fragment) emits exactly what ``_on_rich``, which reads every field, emits."""
    bodies = [json.dumps({"choices": [{"index": index, "delta": delta} for index, delta in choices]}).encode() for choices in chunks]
    fast: list[Event] = []
    handler = ChatStream(fast.append, lambda: None)
    handler.on_response(200, [(b"content-type", b"text/event-stream")])
    general: list[Event] = []
    reference = ChatStream(general.append, lambda: None)
    for body in bodies:
        handler.on_body(b"data: " + body + b"\n\n")
        for choice in msgspec.json.decode(body, type=_Chunk).choices:
            if not reference._ended and choice.delta is not None:
                reference._on_rich(choice.delta, choice.index)
    assert fast == general
