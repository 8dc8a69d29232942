"""The official OpenAI SDK, through a real relay in front of the mock speaking Anthropic's Messages:
``tool_use`` blocks are its ``tool_calls``, thinking its ``reasoning_content``, and an agent loop runs to its end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState

from app.mock import mock_text
from tests.sdk import view
from tests.servers import mock_server, relay_server

TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}},
]
QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris, and the time there?"}]
MODES = ("stream", "helper", "whole")


@pytest.fixture(scope="module")
def upstream_and_relay() -> Iterator[tuple[str, str]]:
    with mock_server(ttft=0.0, interval=0.001, tokens=16) as (_, mock), relay_server(mock.removesuffix("/v1"), protocol="anthropic") as url:
        yield mock.removesuffix("/v1"), url + "/v1"


def ask(base_url: str, mode: str, **kwargs: Any) -> Any:
    """The completion the SDK makes of the answer, asked ``mode``."""
    with OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=10) as client:
        if mode == "stream":
            state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
            for part in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
                state.handle_chunk(part)
            return state.current_completion_snapshot
        if mode == "helper":
            with client.chat.completions.stream(stream_options={"include_usage": True}, **kwargs) as stream:
                return stream.get_final_completion()
        return client.chat.completions.create(**kwargs)


def anthropic_tools() -> list[dict[str, Any]]:
    return [{"name": tool["function"]["name"], "input_schema": tool["function"]["parameters"]} for tool in TOOLS]


def mock_answer(mock: str, model: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The tool_use blocks and the usage the mock answers the question with, asked directly in its Anthropic protocol."""
    body = {"model": model, "max_tokens": 4096, "messages": QUESTION, "tools": anthropic_tools()}
    answer = httpx.post(mock + "/v1/messages", json=body, timeout=10).json()
    calls = [{"id": block["id"], "name": block["name"], "input": block["input"]} for block in answer["content"] if block["type"] == "tool_use"]
    return calls, answer["usage"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", ["mock", "mock-tools-no-args"])
def test_tool_use_blocks_are_the_sdks_tool_calls(upstream_and_relay: tuple[str, str], model: str, mode: str) -> None:
    mock, relay = upstream_and_relay
    completion = ask(relay, mode, model=model, messages=QUESTION, tools=TOOLS)
    [choice] = completion.choices
    calls = [{"id": call.id, "name": call.function.name, "input": json.loads(call.function.arguments)} for call in choice.message.tool_calls or []]
    expected, usage = mock_answer(mock, model)
    assert calls == expected and calls
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens == usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    assert completion.usage.prompt_tokens_details.cached_tokens == usage["cache_read_input_tokens"] > 0
    assert completion.usage.completion_tokens == usage["output_tokens"]


def test_streamed_helper_and_whole_answers_are_one_message(upstream_and_relay: tuple[str, str]) -> None:
    _, relay = upstream_and_relay
    [stream, helper, whole] = [view(ask(relay, mode, model="mock-reasoning", messages=QUESTION, tools=TOOLS)) for mode in MODES]
    assert stream == helper == whole
    assert stream["choices"][0]["reasoning"] and stream["choices"][0]["tool_calls"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("model", "asked"), [("mock-reasoning", {}), ("mock", {"reasoning_effort": "low"})])
def test_thinking_is_the_sdks_reasoning_content(upstream_and_relay: tuple[str, str], model: str, asked: dict[str, Any], mode: str) -> None:
    _, relay = upstream_and_relay
    completion = ask(relay, mode, model=model, messages=[{"role": "user", "content": "Say hello"}], **asked)
    [choice] = completion.choices
    assert (choice.message.model_extra or {}).get("reasoning_content") == "".join(mock_text("reasoning: Say hello", 8))
    assert choice.message.content == "".join(mock_text("Say hello", 16)) and choice.finish_reason == "stop"


@pytest.mark.parametrize("mode", MODES)
def test_an_agent_loop_calls_its_tools_sends_their_results_and_gets_the_answer(upstream_and_relay: tuple[str, str], mode: str) -> None:
    _, relay = upstream_and_relay
    messages: Any = list(QUESTION)
    first = ask(relay, mode, model="mock", messages=messages, tools=TOOLS).choices[0]
    assert first.finish_reason == "tool_calls" and first.message.tool_calls
    messages.append(first.message.model_dump(mode="json", exclude_none=True))
    results = {"get_weather": "18C and sunny", "get_time": "noon"}
    for call in first.message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": results[call.function.name]})
    final = ask(relay, mode, model="mock", messages=messages, tools=TOOLS).choices[0]
    assert final.finish_reason == "stop" and not final.message.tool_calls
    assert final.message.content is not None and "18C and sunny" in final.message.content and "noon" in final.message.content
