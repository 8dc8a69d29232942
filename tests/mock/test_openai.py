"""The mock's OpenAI chat completions: tool calls, reasoning, logprobs, refusals, usage details and n choices, as the SDK reads them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ParsedChatCompletion

from app.mock import mock_text
from tests.mock.chats import PROMPT, RESULT, TOOLS, chat, chunks, deltas, typed

WORDS = 8  # the fixture's answer length


@pytest.fixture
async def sdk(base: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=10) as client:
        yield client


async def streamed(sdk: openai.AsyncOpenAI, body: dict[str, Any], headers: dict[str, str] | None = None) -> ChatCompletion:
    """What the SDK's ``.stream()`` helper reassembles from the mock's stream."""
    try:
        async with sdk.chat.completions.stream(**body, extra_headers=headers) as stream:
            return await stream.get_final_completion()
    except openai.LengthFinishReasonError as exc:  # how the helper ends a message cut short: the message comes with it
        return exc.completion


def calls_of(completion: ChatCompletion, choice: int = 0) -> list[tuple[str, str, str]]:
    return [(call.id, call.function.name, call.function.arguments)
            for call in completion.choices[choice].message.tool_calls or () if call.type == "function"]


async def test_tools_get_two_parallel_calls_that_the_sdk_reassembles(sdk: openai.AsyncOpenAI) -> None:
    completion = await streamed(sdk, chat(tools=TOOLS))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = calls_of(completion)
    assert [name for _, name, _ in calls] == ["get_weather", "search"]
    assert len({call_id for call_id, _, _ in calls}) == 2 and all(call_id.startswith("call_") for call_id, _, _ in calls)
    assert all(typed(name, json.loads(arguments)) for _, name, arguments in calls)


async def test_sequential_calls_for_strict_tools_are_parsed_by_the_sdk_as_they_stream(sdk: openai.AsyncOpenAI) -> None:
    # The helper parses a strict tool's call when the next call's first fragment arrives: it needs them one after the other.
    strict = [{"type": "function", "function": tool["function"] | {"strict": True}} for tool in TOOLS]
    async with sdk.chat.completions.stream(**chat(tools=strict), extra_headers={"x-mock-tools": "sequential"}) as stream:
        completion: ParsedChatCompletion[None] = await stream.get_final_completion()
    parsed = [call.function.parsed_arguments for call in completion.choices[0].message.tool_calls or ()]
    assert [typed(name, arguments) for name, arguments in zip(("get_weather", "search"), parsed, strict=True)] == [True, True]


async def test_the_calls_arguments_arrive_in_fragments_interleaved_between_calls(base: str, client: httpx.AsyncClient) -> None:
    received = await chunks(client, base + "/v1/chat/completions", chat(tools=TOOLS))
    fragments = [call for batch in deltas(received, "tool_calls") for call in batch]
    indices = [call["index"] for call in fragments]
    assert indices != sorted(indices), "the two calls' fragments interleave"
    for index in (0, 1):
        first, *rest = [call for call in fragments if call["index"] == index]
        assert first["function"]["arguments"] == "" and first["type"] == "function"
        assert first["id"] and first["function"]["name"]
        assert len(rest) >= 3
        assert all(call.keys() == {"index", "function"} and call["function"].keys() == {"arguments"} for call in rest)
    assert received[-1]["choices"][0]["finish_reason"] == "tool_calls"
    sequential = await chunks(client, base + "/v1/chat/completions", chat(tools=TOOLS), {"x-mock-tools": "sequential"})
    indices = [call["index"] for batch in deltas(sequential, "tool_calls") for call in batch]
    assert indices == sorted(indices) and set(indices) == {0, 1}


@pytest.mark.parametrize("choose", [{"headers": {"x-mock-tools": "one"}}, {"model": "mock-tools-one"}, {"parallel_tool_calls": False}])
async def test_one_call_by_header_model_name_or_request(sdk: openai.AsyncOpenAI, choose: dict[str, Any]) -> None:
    headers = choose.pop("headers", None)
    completion = await streamed(sdk, chat(tools=TOOLS) | choose, headers)
    assert [name for _, name, _ in calls_of(completion)] == ["get_weather"]
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_a_call_without_arguments(sdk: openai.AsyncOpenAI) -> None:
    completion = await streamed(sdk, chat(tools=TOOLS), {"x-mock-tools": "no-args"})
    assert [(name, arguments) for _, name, arguments in calls_of(completion)] == [("get_weather", "{}")]
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_text_then_a_call(sdk: openai.AsyncOpenAI) -> None:
    completion = await streamed(sdk, chat(tools=TOOLS), {"x-mock-tools": "text-then-call"})
    assert completion.choices[0].message.content == "".join(mock_text(PROMPT, WORDS))
    assert [name for _, name, _ in calls_of(completion)] == ["get_weather"]
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_a_call_cut_off_by_the_token_limit_ends_with_length(sdk: openai.AsyncOpenAI) -> None:
    completion = await streamed(sdk, chat(tools=TOOLS), {"x-mock-tools": "length"})
    assert completion.choices[0].finish_reason == "length"
    [(_, name, arguments)] = calls_of(completion)
    assert name == "get_weather" and arguments.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(arguments)


async def test_a_token_limit_below_the_calls_cuts_them_off(sdk: openai.AsyncOpenAI) -> None:
    completion = await streamed(sdk, chat(tools=TOOLS, max_tokens=2))
    assert completion.choices[0].finish_reason == "length"
    assert [name for _, name, _ in calls_of(completion)] == ["get_weather"]


async def test_tool_choice_none_and_a_named_tool(sdk: openai.AsyncOpenAI) -> None:
    plain = await streamed(sdk, chat(tools=TOOLS, tool_choice="none"))
    assert plain.choices[0].message.content == "".join(mock_text(PROMPT, WORDS)) and not plain.choices[0].message.tool_calls
    named = await streamed(sdk, chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search"}}))
    assert [name for _, name, _ in calls_of(named)] == ["search", "search"]


async def test_a_tool_result_gets_a_final_answer_that_mentions_it(sdk: openai.AsyncOpenAI) -> None:
    first = await streamed(sdk, chat(tools=TOOLS), {"x-mock-tools": "one"})
    call = (first.choices[0].message.tool_calls or [])[0]
    history = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function",
                                                                "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": call.id, "content": RESULT},
    ]
    final = await streamed(sdk, {"model": "mock", "messages": history, "tools": TOOLS})
    assert RESULT in (final.choices[0].message.content or "")
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls


async def test_reasoning_comes_before_the_content_in_reasoning_content(base: str, client: httpx.AsyncClient, sdk: openai.AsyncOpenAI) -> None:
    received = await chunks(client, base + "/v1/chat/completions", chat("mock-reasoning"))
    kinds = [field for chunk in received for c in chunk["choices"] for field, value in c["delta"].items()
             if field in ("reasoning_content", "content") and value]
    assert kinds[0] == "reasoning_content" and kinds.index("content") > 1
    assert "reasoning_content" not in kinds[kinds.index("content"):]
    completion = await streamed(sdk, chat("mock-reasoning", stream_options={"include_usage": True}))
    message = completion.choices[0].message
    assert getattr(message, "reasoning_content") == "".join(deltas(received, "reasoning_content"))  # noqa: B009
    assert message.content == "".join(mock_text(PROMPT, WORDS))
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    reasoning = completion.usage.completion_tokens_details.reasoning_tokens
    assert reasoning == len(deltas(received, "reasoning_content")) and completion.usage.completion_tokens == WORDS + reasoning


async def test_the_newer_reasoning_field_by_header(base: str, client: httpx.AsyncClient) -> None:
    received = await chunks(client, base + "/v1/chat/completions", chat("mock-reasoning"), {"x-mock-reasoning": "vllm"})
    assert deltas(received, "reasoning") and not deltas(received, "reasoning_content")
    asked = await chunks(client, base + "/v1/chat/completions", chat(reasoning_effort="low"))
    assert deltas(asked, "reasoning_content"), "a request that asks for reasoning gets it"


async def test_logprobs_come_with_each_content_chunk(base: str, client: httpx.AsyncClient, sdk: openai.AsyncOpenAI) -> None:
    body = chat(logprobs=True, top_logprobs=3)
    received = await chunks(client, base + "/v1/chat/completions", body)
    with_content = [c for chunk in received for c in chunk["choices"] if c["delta"].get("content")]
    assert len(with_content) == WORDS
    for choice in with_content:
        [entry] = choice["logprobs"]["content"]
        assert entry["token"] == choice["delta"]["content"] and entry["bytes"] == list(entry["token"].encode())
        assert entry["logprob"] < 0 and len(entry["top_logprobs"]) == 3 and entry["top_logprobs"][0]["token"] == entry["token"]
    again = await chunks(client, base + "/v1/chat/completions", body)
    assert [c["logprobs"] for chunk in again for c in chunk["choices"] if c["delta"].get("content")] == [c["logprobs"] for c in with_content]
    completion = await streamed(sdk, body)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and [entry.token for entry in logprobs.content or ()] == mock_text(PROMPT, WORDS)


async def test_a_refusal_streams_in_delta_refusal(base: str, client: httpx.AsyncClient, sdk: openai.AsyncOpenAI) -> None:
    received = await chunks(client, base + "/v1/chat/completions", chat("mock-refusal"))
    assert deltas(received, "refusal") and not any(deltas(received, "content"))
    assert received[-1]["choices"][0]["finish_reason"] == "stop"
    completion = await streamed(sdk, chat("mock-refusal"))
    assert completion.choices[0].message.refusal == "".join(deltas(received, "refusal"))
    assert completion.choices[0].message.content is None


async def test_usage_details_keep_a_zero_explicit(base: str, client: httpx.AsyncClient) -> None:
    options = {"stream_options": {"include_usage": True}}
    short = (await chunks(client, base + "/v1/chat/completions", chat(content="hi", **options)))[-1]["usage"]
    assert short["prompt_tokens_details"] == {"cached_tokens": 0}
    assert short["completion_tokens_details"] == {"reasoning_tokens": 0}
    longer = (await chunks(client, base + "/v1/chat/completions", chat(**options)))[-1]["usage"]
    assert longer["prompt_tokens"] == 6 and longer["prompt_tokens_details"] == {"cached_tokens": 2}


async def test_n_choices_each_with_its_own_text(base: str, client: httpx.AsyncClient, sdk: openai.AsyncOpenAI) -> None:
    received = await chunks(client, base + "/v1/chat/completions", chat(n=3, stream_options={"include_usage": True}))
    texts = ["".join(deltas(received, "content", index)) for index in range(3)]
    assert texts[0] == "".join(mock_text(PROMPT, WORDS)) and len(set(texts)) == 3
    finishes = [c["index"] for chunk in received for c in chunk["choices"] if c.get("finish_reason") == "stop"]
    assert sorted(finishes) == [0, 1, 2]
    assert received[-1]["usage"]["completion_tokens"] == 3 * WORDS
    completion = await streamed(sdk, chat(n=3))
    assert [choice.message.content for choice in completion.choices] == texts


VARIANTS = {
    "parallel calls": (chat(tools=TOOLS), None),
    "text then a call": (chat(tools=TOOLS), {"x-mock-tools": "text-then-call"}),
    "a call cut off": (chat(tools=TOOLS), {"x-mock-tools": "length"}),
    "reasoning then calls": (chat("mock-reasoning", tools=TOOLS), None),
    "refusal": (chat("mock-refusal"), None),
    "logprobs": (chat(logprobs=True, top_logprobs=2), None),
    "n choices": (chat(n=2, tools=TOOLS), None),
}


def summary(completion: ChatCompletion) -> list[Any]:
    return [(choice.index, choice.finish_reason, choice.message.content, choice.message.refusal, getattr(choice.message, "reasoning_content", None),
             calls_of(completion, choice.index), choice.logprobs and choice.logprobs.model_dump()) for choice in completion.choices]


@pytest.mark.parametrize("variant", VARIANTS)
async def test_not_streamed_is_the_same_message_whole(sdk: openai.AsyncOpenAI, variant: str) -> None:
    body, headers = VARIANTS[variant]
    whole = await sdk.chat.completions.create(**body, extra_headers=headers)
    assert summary(whole) == summary(await streamed(sdk, body, headers))
    assert whole.usage is not None and whole.usage.prompt_tokens_details is not None
