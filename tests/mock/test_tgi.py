"""The mock as TGI: its Messages API's tool calls (one call, id "0", arguments an object when whole) and its native API, text only."""

from __future__ import annotations

import json

import httpx
import openai

from app.mock import mock_text
from tests.mock.chats import PROMPT, TOOLS, chat, chunks, deltas, typed

TGI = {"x-mock-server": "tgi"}


async def test_messages_api_streams_one_call_as_tgi_does(base: str, client: httpx.AsyncClient) -> None:
    received = await chunks(client, base + "/v1/chat/completions", chat("tgi", tools=TOOLS), TGI)
    tool_deltas = [c["delta"] for chunk in received for c in chunk["choices"] if "tool_calls" in c["delta"]]
    assert len(tool_deltas) >= 3
    assert all(delta["role"] == "assistant" and delta["content"] is None for delta in tool_deltas)
    calls = [call for delta in tool_deltas for call in delta["tool_calls"]]
    assert all((call["index"], call["id"], call["type"]) == (0, "0", "function") for call in calls)
    assert [call["function"]["name"] for call in calls] == ["get_weather"] + [None] * (len(calls) - 1)
    assert typed("get_weather", json.loads("".join(call["function"]["arguments"] for call in calls)))
    assert [c["finish_reason"] for chunk in received for c in chunk["choices"] if c["finish_reason"]] == ["stop"]


async def test_the_sdk_reassembles_tgis_call(base: str) -> None:
    async with openai.AsyncOpenAI(base_url=base + "/mock-server-tgi/v1", api_key="unused", max_retries=0, timeout=10) as sdk:
        async with sdk.chat.completions.stream(model="tgi", messages=[{"role": "user", "content": PROMPT}], tools=TOOLS) as stream:
            completion = await stream.get_final_completion()
    [call] = completion.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert set(call.id) == {"0"} and len(call.id) > 1, "TGI repeats the id in every chunk, and the SDK concatenates it"
    assert typed("get_weather", json.loads(call.function.arguments))


async def test_messages_api_whole_answer_has_arguments_as_an_object(base: str, client: httpx.AsyncClient) -> None:
    answer = (await client.post(base + "/v1/chat/completions", json=chat("tgi", tools=TOOLS), headers=TGI)).json()
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert (call["id"], call["type"], call["function"]["name"], call["function"]["description"]) == ("0", "function", "get_weather", None)
    assert typed("get_weather", call["function"]["arguments"])


async def test_messages_api_text_has_no_usage_details(base: str, client: httpx.AsyncClient) -> None:
    received = await chunks(client, base + "/v1/chat/completions", chat("tgi", stream_options={"include_usage": True}), TGI)
    assert "".join(deltas(received, "content")) == "".join(mock_text(PROMPT, 8))
    assert received[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}


async def test_native_api_answers_text_whatever_is_asked(base: str, client: httpx.AsyncClient) -> None:
    response = await client.post(base + "/mock-reasoning/mock-refusal/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3}})
    assert response.json()["generated_text"] == "".join(mock_text(PROMPT, 3))
