"""``POST /v1/messages`` over every upstream protocol the mock speaks: text, tools, reasoning and every fault,
each stream well formed (tests/dialects/messages.py) and ended by exactly one terminal event of this dialect."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.mock import FAULTS, mock_text
from app.settings import PROTOCOLS
from tests.dialects.messages import calls, reassembled, texts
from tests.servers import mock_server, relay_server
from tests.sse import post_stream
from tests.streaming.test_faults import FAULT_CODES
from tests.streaming.upstreams.test_protocols import IN_BAND_CODE

TOOLS: Any = [
    {"name": "get_weather", "description": "The weather in a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}},
]
# The models each protocol can answer with tools and reasoning: TGI's native API has text only.
RICH = [protocol for protocol in PROTOCOLS if protocol != "tgi"]
MODELS = ("mock", "mock-reasoning", "mock-tools-text-then-call", "mock-tools-no-args", "mock-reasoning-redacted")


@pytest.fixture(scope="module", params=PROTOCOLS)
def relay(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    protocol: str = request.param
    with mock_server(ttft=0.0, interval=0.001, tokens=16) as (_, mock):
        base = mock.removesuffix("/v1")
        suffix = "/v1" if protocol == "openai" else ""
        upstreams: list[dict[str, Any]] = [
            {"name": "fast", "protocol": protocol, "base_url": base + suffix},
            *({"name": fault, "protocol": protocol, "base_url": f"{base}/mock-fault-{fault}{suffix}", "first_token_timeout": 0.3,
               "idle_timeout": 0.3} for fault in FAULTS),
        ]
        routes = {**{model: ["fast"] for model in MODELS}, **{f"mock-fault-{fault}": [fault] for fault in FAULTS}}
        with relay_server(None, upstreams=upstreams, routes=routes, circuit_failures=1000, max_tokens_limit=1000) as url:
            yield protocol, url


def ask(model: str = "mock", content: str = "tell me", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": content}], "stream": True, **extra}


async def streamed(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response, events = await post_stream(client, url + "/v1/messages", body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    return reassembled(events)


async def test_text_streams_as_one_text_block_with_usage(relay: tuple[str, str], client: httpx.AsyncClient) -> None:
    _, url = relay
    answer = await streamed(client, url, ask(max_tokens=5))
    assert answer["content"] == [{"type": "text", "text": "".join(mock_text("tell me", 5))}]
    message = answer["message"]
    assert message["stop_reason"] == "max_tokens" and message["role"] == "assistant" and message["model"] == "mock"
    assert (message["usage"]["input_tokens"], message["usage"]["output_tokens"]) == (2, 5)


async def test_a_natural_end_is_end_turn_and_the_whole_message_says_the_same(relay: tuple[str, str], client: httpx.AsyncClient) -> None:
    _, url = relay
    answer = await streamed(client, url, ask())
    whole = (await client.post(url + "/v1/messages", json=ask(stream=False))).json()
    assert answer["message"]["stop_reason"] == whole["stop_reason"] == "end_turn"
    assert answer["content"] == whole["content"] == [{"type": "text", "text": "".join(mock_text("tell me", 16))}]
    assert whole["type"] == "message" and whole["usage"]["output_tokens"] == 16 and whole["stop_sequence"] is None


@pytest.mark.parametrize("model", ["mock", "mock-tools-text-then-call", "mock-tools-no-args"])
async def test_tool_calls_are_tool_use_blocks_with_the_calls_input(relay: tuple[str, str], client: httpx.AsyncClient, model: str) -> None:
    protocol, url = relay
    answer = await streamed(client, url, ask(model, "What is the weather?", tools=TOOLS))
    if protocol not in RICH:  # TGI's native API takes no tools: its answer is text
        assert [block["type"] for block in answer["content"]] == ["text"] and answer["message"]["stop_reason"] == "end_turn"
        return
    chat = (await client.post(url + "/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "What is the weather?"}],
        "tools": [{"type": "function", "function": {"name": tool["name"], "parameters": tool["input_schema"]}} for tool in TOOLS],
    })).json()["choices"][0]["message"]
    expected = [{"id": call["id"], "name": call["function"]["name"], "input": json.loads(call["function"]["arguments"] or "{}")}
                for call in chat["tool_calls"]]
    assert calls(answer["content"]) == expected and expected
    assert texts(answer["content"], "text") == (chat["content"] or "")
    assert answer["message"]["stop_reason"] == "tool_use"
    whole = (await client.post(url + "/v1/messages", json=ask(model, "What is the weather?", tools=TOOLS, stream=False))).json()
    assert calls(whole["content"]) == expected and whole["stop_reason"] == "tool_use"


@pytest.mark.parametrize("model", ["mock-reasoning", "mock-reasoning-redacted"])
async def test_reasoning_is_a_thinking_block_before_the_text(relay: tuple[str, str], client: httpx.AsyncClient, model: str) -> None:
    protocol, url = relay
    answer = await streamed(client, url, ask(model, "Say hello"))
    kinds = [block["type"] for block in answer["content"]]
    if protocol not in RICH:  # TGI's native API has no reasoning: its answer is text
        assert kinds == ["text"]
        return
    redacted = protocol == "anthropic" and model == "mock-reasoning-redacted"
    assert kinds == ["thinking", *(["redacted_thinking"] if redacted else []), "text"]
    assert texts(answer["content"], "thinking") == "".join(mock_text("reasoning: Say hello", 8))
    assert texts(answer["content"], "text") == "".join(mock_text("Say hello", 16))
    if protocol == "anthropic":
        assert answer["content"][0]["signature"], "the thinking block's signature reaches the client"
    whole = (await client.post(url + "/v1/messages", json=ask(model, "Say hello", stream=False))).json()
    assert whole["content"] == answer["content"]


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_every_fault_ends_with_exactly_one_error_event(relay: tuple[str, str], client: httpx.AsyncClient, fault: str) -> None:
    protocol, url = relay
    answer = await streamed(client, url, ask(f"mock-fault-{fault}", "x"))
    error = answer["error"]
    assert error is not None, "the stream ended with its error"
    code, phase = FAULT_CODES[fault]
    if fault == "error-midstream":
        code = IN_BAND_CODE[protocol]
    assert (error["code"], error["phase"]) == (code, phase)
    if fault == "http-429":
        assert error["type"] == "rate_limit_error"
    assert answer["open"] is None, "the blocks begun were stopped before the error"
