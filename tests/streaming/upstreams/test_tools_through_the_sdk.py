"""The official OpenAI SDK, through a real relay, gets the tool calls and the reasoning of an Ollama native upstream
and of TGI's Messages API (through the ``openai`` protocol) as OpenAI sends them: streamed, with the ``.stream()``
helper, not streamed, and round an agent loop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from tests.sdk import completion_asked, view
from tests.servers import mock_server, relay_server

TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    }}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}},
]
QUESTION = [{"role": "user", "content": "What is the weather in Oslo?"}]
MODES = ("stream", "helper", "whole")
VARIANTS = ("mock", "mock-tools-one", "mock-tools-no-args", "mock-tools-text-then-call")


class Served:
    def __init__(self, mock: str, relay: str) -> None:
        self.mock = mock
        self.relay = relay


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with mock_server(ttft=0.0, interval=0.001, tokens=8) as (_, url):
        base = url.removesuffix("/v1")
        upstreams = [
            {"name": "ollama", "protocol": "ollama", "base_url": base},
            {"name": "tgi", "protocol": "openai", "base_url": base + "/mock-server-tgi/v1"},
        ]
        routes = {**{variant: ["ollama"] for variant in (*VARIANTS, "mock-reasoning")}, "tgi": ["tgi"], "tgi-no-args": ["tgi:mock-tools-no-args"]}
        with relay_server(None, upstreams=upstreams, routes=routes, first_token_timeout=5, idle_timeout=5) as relay:
            yield Served(base, relay + "/v1")


def ask(base_url: str, mode: str, **kwargs: Any) -> dict[str, Any]:
    completion, _ = completion_asked(base_url, mode, **kwargs)
    choice: dict[str, Any] = view(completion)["choices"][0]
    return choice


async def asked(base_url: str, mode: str, **kwargs: Any) -> dict[str, Any]:
    with anyio.fail_after(20):
        return await anyio.to_thread.run_sync(lambda: ask(base_url, mode, **kwargs))


async def ollama_answer(client: httpx.AsyncClient, served: Served, model: str) -> dict[str, Any]:
    """The mock's own Ollama answer to the same question, whole."""
    response = await client.post(served.mock + "/api/chat", json={"model": model, "messages": QUESTION, "tools": TOOLS, "stream": False})
    message: dict[str, Any] = response.json()["message"]
    return message


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", VARIANTS)
async def test_ollama_calls_reach_the_sdk_with_ids_names_and_the_arguments_ollama_sent(
    served: Served, client: httpx.AsyncClient, model: str, mode: str,
) -> None:
    expected = await ollama_answer(client, served, model)
    choice = await asked(served.relay, mode, model=model, messages=QUESTION, tools=TOOLS)
    calls = choice["tool_calls"]
    assert [(call["type"], call["name"], json.loads(call["arguments"])) for call in calls] == [
        ("function", call["function"]["name"], call["function"]["arguments"]) for call in expected["tool_calls"]
    ]
    assert all(call["id"].startswith("call_") for call in calls) and len({call["id"] for call in calls}) == len(calls)
    assert (choice["content"], choice["finish_reason"]) == (expected["content"] or None, "tool_calls")


async def test_the_ids_of_one_answer_are_the_same_streamed_and_whole(served: Served) -> None:
    streamed = await asked(served.relay, "stream", model="mock", messages=QUESTION, tools=TOOLS)
    whole = await asked(served.relay, "whole", model="mock", messages=QUESTION, tools=TOOLS)
    assert [call["id"] for call in streamed["tool_calls"]] == [call["id"] for call in whole["tool_calls"]]


@pytest.mark.parametrize("mode", MODES)
async def test_an_agent_loop_through_ollama_gets_its_final_answer(served: Served, mode: str) -> None:
    first = await asked(served.relay, mode, model="mock", messages=QUESTION, tools=TOOLS)
    calls = first["tool_calls"]
    assert len(calls) == 2
    turn: list[Any] = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}} for call in calls
    ]}]
    turn += [{"role": "tool", "tool_call_id": call["id"], "content": f"result of {call['name']}"} for call in calls]
    final = await asked(served.relay, mode, model="mock", messages=turn, tools=TOOLS)
    assert final["tool_calls"] is None and final["finish_reason"] == "stop"
    assert final["content"] == "the tool returned: result of get_weather; result of get_time"


@pytest.mark.parametrize("mode", MODES)
async def test_ollama_thinking_reaches_the_sdk_as_reasoning_when_the_client_asks_for_it(served: Served, mode: str) -> None:
    plain = await asked(served.relay, mode, model="mock-tools-one", messages=QUESTION)
    reasoned = await asked(served.relay, mode, model="mock-tools-one", messages=QUESTION, reasoning_effort="low")
    assert plain["reasoning"] is None and plain["content"]
    assert reasoned["reasoning"] and reasoned["content"] == plain["content"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", ["tgi", "tgi-no-args"])
async def test_a_tgi_messages_api_call_with_its_id_in_every_chunk_comes_out_once(
    served: Served, client: httpx.AsyncClient, model: str, mode: str,
) -> None:
    """Whole, TGI sends the call's arguments as an object: the SDK gets them as JSON text, as OpenAI sends them."""
    upstream_model = "mock-tools-no-args" if model == "tgi-no-args" else "mock"
    direct = await client.post(served.mock + "/mock-server-tgi/v1/chat/completions", json={"model": upstream_model, "messages": QUESTION, "tools": TOOLS})
    [sent] = direct.json()["choices"][0]["message"]["tool_calls"]
    choice = await asked(served.relay, mode, model=model, messages=QUESTION, tools=TOOLS)
    [call] = choice["tool_calls"]
    assert (call["id"], call["type"], call["name"]) == ("0", "function", sent["function"]["name"])
    assert json.loads(call["arguments"] or "{}") == sent["function"]["arguments"]
    assert choice["finish_reason"] == "stop", "TGI says stop after a call; the relay passes it on as said"
