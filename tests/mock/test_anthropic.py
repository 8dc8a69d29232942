"""The mock's Anthropic Messages: tool_use blocks, thinking with signatures, refusals and cache usage, as the SDK reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message

from app.mock import mock_text
from tests.mock.chats import ANTHROPIC_TOOLS, PROMPT, RESULT, chat, typed
from tests.sse import data, post_stream

WORDS = 8


@pytest.fixture
async def sdk(base: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=base, api_key="unused", max_retries=0, timeout=10) as client:
        yield client


async def streamed(sdk: anthropic.AsyncAnthropic, body: dict[str, Any], headers: dict[str, str] | None = None) -> Message:
    """What the SDK's ``messages.stream()`` helper reassembles from the mock's stream."""
    async with sdk.messages.stream(max_tokens=1024, **body, extra_headers=headers) as stream:
        return await stream.get_final_message()


def uses(message: Message) -> list[tuple[str, str, object]]:
    return [(block.id, block.name, block.input) for block in message.content if block.type == "tool_use"]


async def test_tools_get_two_tool_use_blocks_with_parsed_input(sdk: anthropic.AsyncAnthropic) -> None:
    message = await streamed(sdk, chat(tools=ANTHROPIC_TOOLS))
    assert message.stop_reason == "tool_use"
    calls = uses(message)
    assert [name for _, name, _ in calls] == ["get_weather", "search"]
    assert len({call_id for call_id, _, _ in calls}) == 2 and all(call_id.startswith("toolu_") for call_id, _, _ in calls)
    assert all(isinstance(arguments, dict) and typed(name, arguments) for _, name, arguments in calls)


async def test_tool_use_streams_as_input_json_deltas(base: str, client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, base + "/v1/messages", chat(tools=ANTHROPIC_TOOLS, max_tokens=100, stream=True))
    starts = [data(e)["content_block"] for e in events if e.event == "content_block_start"]
    assert [(block["type"], block["input"]) for block in starts] == [("tool_use", {}), ("tool_use", {})]
    fragments = [data(e)["delta"] for e in events if e.event == "content_block_delta"]
    assert {delta["type"] for delta in fragments} == {"input_json_delta"} and len(fragments) >= 6
    assert [data(e)["delta"]["stop_reason"] for e in events if e.event == "message_delta"] == ["tool_use"]


async def test_tool_use_variants(sdk: anthropic.AsyncAnthropic) -> None:
    one = await streamed(sdk, chat(tools=ANTHROPIC_TOOLS), {"x-mock-tools": "one"})
    assert [name for _, name, _ in uses(one)] == ["get_weather"]
    empty = await streamed(sdk, chat(tools=ANTHROPIC_TOOLS), {"x-mock-tools": "no-args"})
    assert [(name, arguments) for _, name, arguments in uses(empty)] == [("get_weather", {})]
    text = await streamed(sdk, chat(tools=ANTHROPIC_TOOLS), {"x-mock-tools": "text-then-call"})
    assert [block.type for block in text.content] == ["text", "tool_use"]
    assert text.content[0].type == "text" and text.content[0].text == "".join(mock_text(PROMPT, WORDS))
    cut = await streamed(sdk, chat(tools=ANTHROPIC_TOOLS), {"x-mock-tools": "length"})
    assert cut.stop_reason == "max_tokens" and [name for _, name, _ in uses(cut)] == ["get_weather"]
    none = await streamed(sdk, chat(tools=ANTHROPIC_TOOLS, tool_choice={"type": "none"}))
    assert [block.type for block in none.content] == ["text"] and none.stop_reason == "end_turn"


async def test_a_tool_result_gets_a_final_answer_that_mentions_it(sdk: anthropic.AsyncAnthropic) -> None:
    first = await streamed(sdk, chat(tools=ANTHROPIC_TOOLS), {"x-mock-tools": "one"})
    [(call_id, name, arguments)] = uses(first)
    history = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": [{"type": "tool_use", "id": call_id, "name": name, "input": arguments}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": [{"type": "text", "text": RESULT}]}]},
    ]
    final = await streamed(sdk, {"model": "mock", "messages": history, "tools": ANTHROPIC_TOOLS})
    assert final.stop_reason == "end_turn" and [block.type for block in final.content] == ["text"]
    assert final.content[0].type == "text" and RESULT in final.content[0].text


async def test_thinking_blocks_carry_a_signature(sdk: anthropic.AsyncAnthropic) -> None:
    message = await streamed(sdk, chat("mock-reasoning"))
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    asked = await streamed(sdk, chat(thinking={"type": "enabled", "budget_tokens": 1024}))
    assert [block.type for block in asked.content] == ["thinking", "text"], "a request that asks for thinking gets it"


async def test_redacted_thinking_by_header(sdk: anthropic.AsyncAnthropic) -> None:
    message = await streamed(sdk, chat("mock-reasoning", tools=ANTHROPIC_TOOLS), {"x-mock-reasoning": "redacted"})
    assert [block.type for block in message.content] == ["thinking", "redacted_thinking", "tool_use", "tool_use"]
    assert message.content[1].type == "redacted_thinking" and message.content[1].data


async def test_a_refusal_stops_with_refusal(sdk: anthropic.AsyncAnthropic) -> None:
    message = await streamed(sdk, chat("mock-refusal"))
    assert message.stop_reason == "refusal"
    assert [block.type for block in message.content] == ["text"]


async def test_usage_counts_cached_input_apart(base: str, client: httpx.AsyncClient, sdk: anthropic.AsyncAnthropic) -> None:
    message = await streamed(sdk, chat())
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (4, 2, WORDS)
    _, events = await post_stream(client, base + "/v1/messages", chat(content="hi", max_tokens=100, stream=True))
    assert data(events[0])["message"]["usage"]["cache_read_input_tokens"] == 0


VARIANTS = {  # the request, its headers, and the blocks of its answer
    "parallel calls": (chat(tools=ANTHROPIC_TOOLS), None, ["tool_use", "tool_use"]),
    "text then a call": (chat(tools=ANTHROPIC_TOOLS), {"x-mock-tools": "text-then-call"}, ["text", "tool_use"]),
    "thinking then calls": (chat("mock-reasoning", tools=ANTHROPIC_TOOLS), {"x-mock-reasoning": "redacted"},
                            ["thinking", "redacted_thinking", "tool_use", "tool_use"]),
    "refusal": (chat("mock-refusal"), None, ["text"]),
}


@pytest.mark.parametrize("variant", VARIANTS)
async def test_not_streamed_is_the_same_message_whole(sdk: anthropic.AsyncAnthropic, variant: str) -> None:
    body, headers, blocks = VARIANTS[variant]
    whole = await sdk.messages.create(max_tokens=1024, **body, extra_headers=headers)
    assert [block.type for block in whole.content] == blocks
    message = await streamed(sdk, body, headers)
    assert [block.to_dict() for block in whole.content] == [block.to_dict() for block in message.content]
    assert (whole.stop_reason, whole.usage.to_dict()) == (message.stop_reason, message.usage.to_dict())
