"""The official ``anthropic`` SDK against the relay's ``POST /v1/messages``, in front of the mock speaking OpenAI's protocol or Anthropic's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import anyio
import httpx
import pytest

from app.mock import MockModel, mock_text
from tests.servers import mock_server, relay_server

KEY = "sk-relay-test"
TOOLS: Any = [
    {"name": "get_weather", "description": "The weather in a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}},
]
QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris, and the time there?"}]


class Served:
    def __init__(self, protocol: str, mock: MockModel, mock_url: str, relay_url: str) -> None:
        self.protocol, self.mock, self.mock_url, self.relay_url = protocol, mock, mock_url, relay_url

    def client(self, **options: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.relay_url, **({"api_key": KEY} | options), max_retries=0, timeout=10)


@pytest.fixture(scope="module", params=["openai", "anthropic"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    protocol: str = request.param
    with mock_server(ttft=0.0, interval=0.001, tokens=16) as (model, mock):
        upstream = mock if protocol == "openai" else mock.removesuffix("/v1")
        with relay_server(upstream, protocol=protocol, api_keys=(KEY,), first_token_timeout=5, idle_timeout=5) as url:
            yield Served(protocol, model, mock.removesuffix("/v1"), url)


def direct_calls(served: Served, model: str) -> list[dict[str, Any]]:
    """The calls the mock answers the question with, asked directly in its own protocol."""
    if served.protocol == "anthropic":
        body = {"model": model, "max_tokens": 4096, "messages": QUESTION, "tools": TOOLS}
        answer = httpx.post(served.mock_url + "/v1/messages", json=body, timeout=10).json()
        return [{"id": block["id"], "name": block["name"], "input": block["input"]} for block in answer["content"] if block["type"] == "tool_use"]
    tools = [{"type": "function", "function": {"name": tool["name"], "parameters": tool["input_schema"]}} for tool in TOOLS]
    message = httpx.post(served.mock_url + "/v1/chat/completions", json={"model": model, "messages": QUESTION, "tools": tools},
                         timeout=10).json()["choices"][0]["message"]
    return [{"id": call["id"], "name": call["function"]["name"], "input": json.loads(call["function"]["arguments"] or "{}")}
            for call in message["tool_calls"]]


def tool_uses(message: anthropic.types.Message) -> list[dict[str, Any]]:
    return [{"id": block.id, "name": block.name, "input": block.input} for block in message.content if block.type == "tool_use"]


def test_a_stream_gives_the_text_and_a_final_message_with_usage(served: Served) -> None:
    with served.client() as client, client.messages.stream(model="mock", max_tokens=5, messages=[{"role": "user", "content": "tell me"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(mock_text("tell me", 5))
    assert [block.type for block in final.content] == ["text"] and final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens" and final.role == "assistant"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 5)


@pytest.mark.parametrize("model", ["mock", "mock-tools-sequential", "mock-tools-no-args", "mock-tools-text-then-call"])
def test_tool_use_blocks_carry_the_input_the_model_sent(served: Served, model: str) -> None:
    with served.client() as client:
        with client.messages.stream(model=model, max_tokens=200, messages=QUESTION, tools=TOOLS) as stream:
            streamed = stream.get_final_message()
        whole = client.messages.create(model=model, max_tokens=200, messages=QUESTION, tools=TOOLS)
    expected = direct_calls(served, model)
    assert tool_uses(streamed) == tool_uses(whole) == expected and expected
    assert streamed.stop_reason == whole.stop_reason == "tool_use"
    assert streamed.usage.output_tokens == whole.usage.output_tokens > 0


def test_create_answers_the_whole_message(served: Served) -> None:
    with served.client() as client:
        message = client.messages.create(
            model="mock", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Say hello"}],
            metadata={"user_id": "user-1"}, stop_sequences=["never said"], extra_body={"temperature": 0.5},
        )
    assert message.type == "message" and message.stop_reason == "end_turn" and message.stop_sequence is None
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "".join(mock_text("Say hello", 16))  # type: ignore[union-attr]
    assert message.usage.output_tokens == 16


def test_an_error_in_the_middle_of_a_stream_raises_the_sdks_error(served: Served) -> None:
    received: list[str] = []
    with served.client() as client, pytest.raises(anthropic.APIStatusError) as raised:
        with client.messages.stream(model="mock-fault-error-midstream", max_tokens=100, messages=[{"role": "user", "content": "x"}]) as stream:
            received.extend(stream.text_stream)
    assert received, "the text before the error reached the client"
    body: Any = raised.value.body
    assert body["type"] == "error" and body["error"]["phase"] == "stream"
    assert body["error"]["message"] == "mock fault: the model failed mid-stream"


def test_an_agent_loop_sends_thinking_and_tool_results_back_and_gets_the_answer(served: Served) -> None:
    with served.client() as client:
        first = client.messages.create(model="mock-reasoning", max_tokens=500, messages=QUESTION, tools=TOOLS)
        assert first.content[0].type == "thinking" and first.stop_reason == "tool_use"
        results = {"get_weather": "18C and sunny", "get_time": "noon"}
        answers = [{"type": "tool_result", "tool_use_id": block.id, "content": results[block.name]}
                   for block in first.content if block.type == "tool_use"]
        turn: Any = [*QUESTION, {"role": "assistant", "content": [block.model_dump() for block in first.content]},
                     {"role": "user", "content": answers}]
        final = client.messages.create(model="mock", max_tokens=500, messages=turn, tools=TOOLS, extra_headers={"x-request-id": "loop-2"})
    assert final.stop_reason == "end_turn"
    text = final.content[0].text  # type: ignore[union-attr]
    assert "18C and sunny" in text and "noon" in text
    if served.protocol == "anthropic":  # the thinking block, with its signature, reached the model server as it was
        sent = json.loads(served.mock.body_of("loop-2") or b"{}")
        assert sent["messages"][1]["content"][0] == first.content[0].model_dump()


def test_a_key_is_taken_as_x_api_key_or_bearer_and_a_wrong_one_is_an_authentication_error(served: Served) -> None:
    ask: Any = {"model": "mock", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    with served.client(api_key=None, auth_token=KEY) as client:
        assert client.messages.create(**ask).stop_reason == "max_tokens"
    with served.client(api_key="sk-wrong") as client, pytest.raises(anthropic.AuthenticationError) as raised:
        client.messages.create(**ask)
    body: Any = raised.value.body
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"


def test_a_refused_request_is_the_sdks_bad_request_error(served: Served) -> None:
    with served.client() as client, pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model="mock", max_tokens=10**9, messages=[{"role": "user", "content": "hi"}])
    body: Any = raised.value.body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == "$.max_tokens"


async def test_max_tokens_is_required_as_the_api_requires_it(served: Served) -> None:
    with anyio.fail_after(10):
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(served.relay_url + "/v1/messages", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                                       json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    assert response.json()["error"] | {"message": ""} == {
        "type": "invalid_request_error", "message": "", "code": "invalid_request", "param": "$.max_tokens",
    }
