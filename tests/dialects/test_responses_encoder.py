"""The Responses stream encoder: items and parts open and close in the right places, whether parts come one by one
or coalesced in batches (a slow reader), and the stream always ends with exactly one terminal event."""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from app.dialects.responses import ResponseEvents, response_object
from app.streaming.events import (
    CompletionTokensDetails,
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
from tests.responses_sdk import checked_bytes, final, view

TOKEN = msgspec.Raw(b'{"token":"Hi","logprob":-0.5,"bytes":[72,105],"top_logprobs":[]}')
# A message's parts in its order: a signed thinking block, a redacted one, an unsigned one, text with logprobs,
# a refusal, then two calls whose fragments interleave, and the usage.
PARTS: list[Part] = [
    Reasoning("Let me"), Reasoning(" think."), Reasoning("", signature="sig-1"), RedactedReasoning("opaque"),
    Reasoning("More thought."),
    Delta("Hel"), Logprobs(content=(TOKEN,)), Delta("lo"), Refusal("I can't"), Refusal(" do that."),
    ToolCall(0, id="call_a", name="get_weather", arguments='{"ci'), ToolCall(1, id="call_b", name="get_time"),
    ToolCall(0, arguments='ty":"Paris"}'), ToolCall(1, arguments="{}"),
    Usage(5, 7, 12, PromptTokensDetails(cached_tokens=2), CompletionTokensDetails(reasoning_tokens=3)),
]
EXPECTED = [
    ("reasoning", ("Let me think.", "sig-1")),
    ("reasoning", ("", "opaque")),
    ("reasoning", ("More thought.", None)),
    ("message", [("output_text", "Hello"), ("refusal", "I can't do that.")]),
    ("function_call", ("call_a", "get_weather", '{"city":"Paris"}')),
    ("function_call", ("call_b", "get_time", "{}")),
]


def streamed(batches: list[list[Part]], terminal: Terminal) -> list[dict[str, Any]]:
    encoder = ResponseEvents(response_object("resp_r1", "m", {}), limit=1 << 20)
    out = b""
    for batch in batches:
        lone = batch[0] if len(batch) == 1 else None
        out += encoder.delta(lone.text) if type(lone) is Delta else encoder.encode(batch)
    return checked_bytes(out + encoder.terminal(terminal))


def test_each_kind_of_part_is_an_item_or_a_content_part_of_its_own() -> None:
    bodies = streamed([[part] for part in PARTS], Finish("tool_calls"))
    response = final(bodies)
    assert bodies[-1]["type"] == "response.completed" and response["status"] == "completed"
    assert view(response) == EXPECTED
    assert response["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 7,
                                 "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 12}
    deltas = [body for body in bodies if body["type"] == "response.output_text.delta"]
    assert [(d["delta"], d["logprobs"]) for d in deltas] == [("Hel", []), ("", [json.loads(bytes(TOKEN))]), ("lo", [])]
    assert response["output"][3]["content"][0]["logprobs"] == [json.loads(bytes(TOKEN))]
    summaries = [body["delta"] for body in bodies if body["type"] == "response.reasoning_summary_text.delta"]
    assert "".join(summaries) == "Let me think.More thought."


@given(st.lists(st.integers(min_value=1, max_value=len(PARTS)), max_size=len(PARTS)))
def test_coalesced_batches_keep_every_item_and_part_boundary(cuts: list[int]) -> None:
    edges = sorted({0, len(PARTS), *cuts})
    batches = [PARTS[start:end] for start, end in itertools.pairwise(edges)]
    assert view(final(streamed(batches, Finish("tool_calls")))) == EXPECTED


def test_a_length_finish_is_response_incomplete_with_its_reason() -> None:
    bodies = streamed([[Delta("cut")], [ToolCall(0, id="c", name="f", arguments='{"a')]], Finish("length"))
    response = final(bodies)
    assert bodies[-1]["type"] == "response.incomplete"
    assert (response["status"], response["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    assert [item["status"] for item in response["output"]] == ["completed", "incomplete"]
    assert response["usage"] is None, "usage nobody reported is null"


def test_an_error_after_the_head_is_one_small_response_failed() -> None:
    error = Error("upstream_error", "upstream_disconnected", "the model server dropped the connection", "stream")
    bodies = streamed([[Reasoning("hm")], [Delta("par" * 1000)], [Delta("tial")]], error)
    response = final(bodies)
    assert bodies[-1]["type"] == "response.failed" and response["status"] == "failed"
    assert response["error"] == {"type": "upstream_error", "code": "upstream_disconnected", "phase": "stream",
                                 "message": "the model server dropped the connection"}
    assert response["output"] is None, "the deltas said it: the error does not repeat it"
    assert not any(body["type"] == "response.output_text.done" for body in bodies), "nothing cut short is said to be done"


def test_an_error_before_any_part_still_opens_the_response() -> None:
    bodies = streamed([], Error("timeout", "first_token_timeout", "no first token", "first_token"))
    assert [body["type"] for body in bodies] == ["response.created", "response.in_progress", "response.failed"]
    assert final(bodies)["output"] is None
