"""What each encoder writes for every kind of part, alone and coalesced, and for a whole answer."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from app.streaming.encoders import Collected, NativeEvents, OpenAIChunks, native_completion, openai_completion
from app.streaming.events import (
    CompletionTokensDetails,
    Delta,
    Finish,
    Logprobs,
    PromptTokensDetails,
    Reasoning,
    RedactedReasoning,
    Refusal,
    ToolCall,
    Usage,
)
from app.streaming.message import Merged
from app.streaming.sse import SSEParser
from tests.sdk import sse_chunks

LOGPROB = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}
TOKEN = msgspec.Raw(json.dumps(LOGPROB).encode())


def chunks(encoder: OpenAIChunks, *batches: list[Any], end: Finish | None = None) -> list[dict[str, Any]]:
    body = b"".join(encoder.encode(batch) for batch in batches) + (encoder.terminal(end) if end is not None else b"")
    return sse_chunks(body)


def choices(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    return [{key: choice[key] for key in ("index", "delta", "logprobs", "finish_reason")} for choice in chunk["choices"]]


def test_fragments_of_one_call_are_merged_and_of_two_calls_never() -> None:
    encoder = OpenAIChunks("c", "m", include_usage=False, created=0)
    batch = [ToolCall(0, "call_a", "f", ""), ToolCall(0, arguments='{"x"'), ToolCall(1, "call_b", "g", ""),
             ToolCall(0, arguments=":1}"), ToolCall(1, arguments="{}")]
    opening, merged = chunks(encoder, batch)
    assert choices(opening) == [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]
    assert choices(merged) == [{"index": 0, "logprobs": None, "finish_reason": None, "delta": {"tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]}}]
    [later] = chunks(encoder, [ToolCall(1, arguments=" ")])
    assert later["choices"][0]["delta"] == {"tool_calls": [{"index": 1, "function": {"arguments": " "}}]}


def test_each_field_of_each_choice_is_merged_on_its_own() -> None:
    encoder = OpenAIChunks("c", "m", include_usage=False, created=0)
    batch = [Reasoning("Let me "), Delta("B", 1), Reasoning("think."), Delta("A"), Refusal("no", 1), Delta("b", 1),
             Logprobs((TOKEN,)), Logprobs((TOKEN,)), Delta("!")]
    *opening, merged = chunks(encoder, batch)
    assert [choice["index"] for chunk in opening for choice in chunk["choices"]] == [0, 1], "choices open in index order"
    assert choices(merged) == [
        {"index": 0, "delta": {"reasoning_content": "Let me think.", "content": "A!"}, "finish_reason": None,
         "logprobs": {"content": [LOGPROB] * 2, "refusal": None}},
        {"index": 1, "delta": {"content": "Bb", "refusal": "no"}, "logprobs": None, "finish_reason": None},
    ]


def test_each_choice_finishes_with_its_own_reason_and_unknown_usage_is_null() -> None:
    encoder = OpenAIChunks("c", "m", include_usage=True, created=0)
    *sent, usage = chunks(encoder, [Delta("x")], end=Finish("stop", ("stop", "length")))
    finished = [(c["index"], c["finish_reason"]) for chunk in sent for c in chunk["choices"] if c["finish_reason"] is not None]
    assert finished == [(0, "stop"), (1, "length")]
    assert usage["choices"] == [] and usage["usage"] is None


def test_usage_details_keep_a_zero_and_leave_the_unknown_null() -> None:
    encoder = OpenAIChunks("c", "m", include_usage=True, created=0)
    usage = Usage(10, 5, 15, PromptTokensDetails(cached_tokens=0), CompletionTokensDetails(reasoning_tokens=3))
    *_, last = chunks(encoder, [usage], end=Finish())
    assert last["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert last["usage"]["prompt_tokens_details"]["audio_tokens"] is None
    assert last["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3


def test_an_answer_that_begins_with_text_opens_with_empty_content_as_openai_does() -> None:
    encoder = OpenAIChunks("c", "m", include_usage=False, created=0)
    opening, _ = sse_chunks(encoder.delta("Hi"))
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def native(events: bytes) -> list[tuple[str, Any]]:
    return [(event.event, json.loads(event.data)) for event in SSEParser().feed(events)]


def test_native_events_carry_every_kind_with_ids() -> None:
    encoder = NativeEvents()
    body = encoder.encode([
        Reasoning("a"), Reasoning("b"), Reasoning("", signature="sig1"), RedactedReasoning("opaque"), Reasoning("c"),
        Delta("x"), ToolCall(0, "call_1", "f", '{"a":'), ToolCall(0, arguments="1}"), Refusal("no"), Logprobs((TOKEN,)),
        Usage(1, 2, 3),
    ]) + encoder.terminal(Finish("tool_calls"))
    assert native(body) == [
        ("reasoning", {"text": "ab", "signature": "sig1"}),
        ("redacted_reasoning", {"data": "opaque"}),
        ("reasoning", {"text": "c"}),
        ("token", {"text": "x"}),
        ("refusal", {"text": "no"}),
        ("tool_call", {"index": 0, "id": "call_1", "name": "f", "arguments": '{"a":1}'}),
        ("logprobs", {"content": [LOGPROB], "refusal": None}),
        ("done", {"finish_reason": "tool_calls", "usage": {
            "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "prompt_tokens_details": None, "completion_tokens_details": None,
        }}),
    ]
    assert [event.id for event in SSEParser().feed(body)] == [str(n) for n in range(1, 9)]


def test_a_native_stream_without_usage_says_null() -> None:
    encoder = NativeEvents()
    assert native(encoder.encode([Delta("x")]) + encoder.terminal(Finish())) == [
        ("token", {"text": "x"}), ("done", {"finish_reason": "stop", "usage": None}),
    ]


def whole(*parts: Any, finish: Finish | None = None) -> Collected:
    return Collected(Merged.of(list(parts)), finish or Finish("tool_calls"))


def test_a_whole_answer_with_only_tool_calls_has_null_content() -> None:
    answer = openai_completion("c", "m", whole(Reasoning("hm"), ToolCall(0, "call_1", "f", ""), ToolCall(0, arguments="{}"), ToolCall(1, "call_2", "g")))
    assert answer["choices"] == [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": None, "refusal": None, "reasoning_content": "hm", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
        ],
    }}]
    assert answer["usage"] is None


def test_a_whole_answer_has_one_choice_per_index_with_its_reason_and_logprobs() -> None:
    answer = openai_completion("c", "m", whole(Delta("a"), Delta("b", 1), Logprobs((TOKEN,), None, 1), Usage(1, 2, 3),
                                              finish=Finish("stop", ("stop", "length"))))
    body = msgspec.json.decode(msgspec.json.encode(answer))
    assert [(c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [("a", "stop"), ("b", "length")]
    assert body["choices"][1]["logprobs"] == {"content": [LOGPROB], "refusal": None}
    assert body["usage"]["total_tokens"] == 3


def test_a_whole_native_answer_carries_reasoning_calls_and_refusal() -> None:
    answer = msgspec.json.decode(msgspec.json.encode(native_completion(whole(Reasoning("r"), Delta("t"), Refusal("x"), ToolCall(0, "c", "f", "{}")))))
    assert answer == {
        "output": "t", "tokens_used": None, "finish_reason": "tool_calls", "usage": None, "reasoning": "r", "refusal": "x",
        "tool_calls": [{"index": 0, "id": "c", "name": "f", "arguments": "{}"}], "logprobs": None,
    }


_text = st.text(st.characters(codec="utf-8"), max_size=6)
_lone = st.one_of(
    st.builds(ToolCall, st.integers(0, 40), st.one_of(st.none(), _text), st.one_of(st.none(), _text), _text, st.integers(0, 2)),
    st.builds(Reasoning, _text, st.integers(0, 2), st.one_of(st.none(), _text)),
    st.builds(Delta, _text, st.integers(0, 2)),
)


@settings(max_examples=500, deadline=None)
@given(_lone)
def test_a_lone_part_on_its_fast_path_is_the_chunk_the_general_path_writes(part: ToolCall | Reasoning | Delta) -> None:
    """A part alone (an argument fragment, a reasoning or content delta: a client that keeps up) is written with no merging; the bytes must be the same."""
    fast, general = (OpenAIChunks("chatcmpl-1", "m", include_usage=True, created=0) for _ in range(2))
    assert fast.delta("") == general._merged([Delta("")])  # both opened, as a stream is after its first part
    written = fast.delta(part.text) if type(part) is Delta and not part.choice else fast.encode([part])
    assert written == general._merged([part])
