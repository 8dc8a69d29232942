"""The Messages API encoder: blocks in the order of the parts, one at a time, whatever batches the parts come in."""

from __future__ import annotations

from typing import Any

import pytest

from app.dialects.anthropic_events import PING, MessageEvents, whole_message
from app.streaming.encoders import Collected
from app.streaming.events import (
    Delta,
    Error,
    Finish,
    Logprobs,
    Part,
    PromptTokensDetails,
    Reasoning,
    RedactedReasoning,
    Refusal,
    Terminal,
    ToolCall,
    Usage,
)
from app.streaming.message import Merged
from app.streaming.sse import SSEParser
from tests.dialects.messages import reassembled

# Parallel calls interleaved as OpenAI's servers send them, after reasoning and text; then the usage.
INTERLEAVED: list[Part] = [
    Reasoning("Let me "), Reasoning("think."), Reasoning("", signature="sig=="), Delta("Checking "), Delta("both."),
    ToolCall(0, "call_a", "get_weather"), ToolCall(1, "call_b", "get_time"),
    ToolCall(0, arguments='{"city":'), ToolCall(1, arguments='{"zone":'), ToolCall(0, arguments='"Oslo"}'), ToolCall(1, arguments='"CET"}'),
    Usage(10, 7, 17),
]
EXPECTED = [
    {"type": "thinking", "thinking": "Let me think.", "signature": "sig=="},
    {"type": "text", "text": "Checking both."},
    {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Oslo"}},
    {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {"zone": "CET"}},
]


LIMIT = 1 << 20


def stream(batches: list[list[Part]], terminal: Terminal) -> dict[str, Any]:
    encoder = MessageEvents("msg_1", "m", LIMIT)
    body = b"".join(encoder.delta(batch[0].text) if len(batch) == 1 and type(batch[0]) is Delta else encoder.encode(batch) for batch in batches)
    return reassembled(SSEParser().feed(body + encoder.terminal(terminal)))


def split(parts: list[Part], size: int) -> list[list[Part]]:
    return [parts[start:start + size] for start in range(0, len(parts), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, len(INTERLEAVED)])
def test_blocks_are_well_formed_and_whole_however_the_parts_are_batched(size: int) -> None:
    answer = stream(split(INTERLEAVED, size), Finish("tool_calls"))
    assert answer["content"] == EXPECTED
    assert answer["message"]["stop_reason"] == "tool_use"
    assert answer["message"]["usage"] == {"input_tokens": 10, "output_tokens": 7}


def test_a_batch_is_one_delta_per_block() -> None:
    encoder = MessageEvents("msg_1", "m", LIMIT)
    events = SSEParser().feed(encoder.encode(INTERLEAVED) + encoder.terminal(Finish("tool_calls")))
    assert [event.event for event in events].count("content_block_delta") == 5  # thinking, its signature, text, and each call's input


def test_the_usage_known_before_the_content_is_in_message_start() -> None:
    encoder = MessageEvents("msg_1", "m", LIMIT)
    usage = Usage(30, None, None, PromptTokensDetails(cached_tokens=20, cache_write_tokens=4))
    [start, *_] = SSEParser().feed(encoder.encode([usage, Delta("hi")]) + encoder.terminal(Finish()))
    assert '"usage":{"input_tokens":6,"output_tokens":0,"cache_read_input_tokens":20,"cache_creation_input_tokens":4}' in start.data


def test_text_after_a_call_is_a_block_of_its_own() -> None:
    parts: list[Part] = [Delta("a"), ToolCall(0, "c", "f", '{"x":1}'), Delta("b")]
    answer = stream([[part] for part in parts], Finish("tool_calls"))
    assert [block["type"] for block in answer["content"]] == ["text", "tool_use", "text"]


def test_a_call_without_arguments_still_gets_its_block() -> None:
    answer = stream([[ToolCall(0, "c0", "now")], [ToolCall(1, "c1", "later", "{}")]], Finish("tool_calls"))
    assert answer["content"] == [{"type": "tool_use", "id": "c0", "name": "now", "input": {}},
                                 {"type": "tool_use", "id": "c1", "name": "later", "input": {}}]


def test_redacted_thinking_refusal_and_logprobs() -> None:
    parts: list[Part] = [Reasoning("r", signature="s"), RedactedReasoning("opaque"), Refusal("I can't."), Logprobs(content=())]
    answer = stream([parts], Finish("content_filter"))
    assert answer["content"] == [{"type": "thinking", "thinking": "r", "signature": "s"}, {"type": "redacted_thinking", "data": "opaque"},
                                 {"type": "text", "text": "I can't."}]
    assert answer["message"]["stop_reason"] == "refusal"


@pytest.mark.parametrize(("reason", "stop_reason"), [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("pause_turn", "pause_turn")])
def test_finish_reasons_are_stop_reasons(reason: str, stop_reason: str) -> None:
    assert stream([], Finish(reason))["message"]["stop_reason"] == stop_reason


def test_an_error_after_the_head_stops_the_open_blocks_and_is_the_last_event() -> None:
    encoder = MessageEvents("msg_1", "m", LIMIT)
    error = Error("upstream_error", "upstream_disconnected", "gone", "stream")
    body = encoder.encode([Delta("half"), ToolCall(0, "c", "f", '{"a":')]) + encoder.terminal(error)
    events = SSEParser().feed(body)
    answer = reassembled(events[:-2] + events[-1:])  # the call's input is cut off: read its block without it
    assert answer["error"] == {"type": "api_error", "message": "gone", "code": "upstream_disconnected", "phase": "stream"}
    assert [event.event for event in events[-3:]] == ["content_block_delta", "content_block_stop", "error"]


def test_an_error_before_anything_is_the_only_event() -> None:
    events = SSEParser().feed(MessageEvents("msg_1", "m", LIMIT).terminal(Error("timeout", "first_token_timeout", "slow", "first_token")))
    assert [event.event for event in events] == ["error"]
    assert reassembled(events)["error"]["type"] == "timeout_error"


def test_the_heartbeat_is_a_ping_event() -> None:
    [ping] = SSEParser().feed(MessageEvents("msg_1", "m", LIMIT).heartbeat)
    assert (ping.event, ping.data, PING) == ("ping", '{"type":"ping"}', MessageEvents.heartbeat)


def test_the_whole_message_has_its_blocks_in_order_and_its_usage() -> None:
    message = whole_message("msg_1", "m", Collected(Merged.of(INTERLEAVED), Finish("tool_calls")))
    assert message == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": EXPECTED,
        "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 7},
    }


def test_fragments_held_back_past_the_limit_let_go_and_the_encoder_is_full() -> None:
    """Calls' fragments wait for the open call's block to end: what a model server sends that way is bounded, not by its tokens."""
    encoder = MessageEvents("msg_1", "m", 100)
    encoder.encode([ToolCall(0, "call_a", "get_weather", '{"city": ')])
    encoder.encode([ToolCall(1, "call_b", "get_time", "x" * 60)])
    assert not encoder.full
    encoder.encode([ToolCall(1, None, None, "x" * 60)])
    assert encoder.full
    events = SSEParser().feed(encoder.terminal(Error("relay_error", "response_too_large", "full", "stream")))
    assert [event.event for event in events][-1] == "error"
