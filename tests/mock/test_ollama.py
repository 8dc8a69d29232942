"""The mock's Ollama /api/chat: whole tool calls (arguments as objects, no index, no id), thinking, in its documented shapes."""

from __future__ import annotations

import httpx

from app.mock import mock_text
from tests.mock.chats import PROMPT, RESULT, TOOLS, chat, lines, typed

WORDS = 8


async def test_tool_calls_come_whole_in_one_line_as_documented(base: str, client: httpx.AsyncClient) -> None:
    received = await lines(client, base + "/api/chat", chat("llama3.2", tools=TOOLS))
    *body, done = received
    [line] = [line for line in body if "tool_calls" in line["message"]]
    assert line["done"] is False and line["message"]["role"] == "assistant" and line["message"]["content"] == ""
    calls = line["message"]["tool_calls"]
    assert [call.keys() for call in calls] == [{"function"}, {"function"}]
    assert [call["function"].keys() for call in calls] == [{"name", "arguments"}, {"name", "arguments"}]
    assert [call["function"]["name"] for call in calls] == ["get_weather", "search"]
    assert all(typed(call["function"]["name"], call["function"]["arguments"]) for call in calls)
    assert (done["done"], done["done_reason"], done["message"]) == (True, "stop", {"role": "assistant", "content": ""})
    assert done["prompt_eval_count"] == 6 and done["eval_count"] > 0


async def test_variants_of_tool_calls(base: str, client: httpx.AsyncClient) -> None:
    url = base + "/api/chat"
    text = await lines(client, url, chat("llama3.2", tools=TOOLS), {"x-mock-tools": "text-then-call"})
    assert "".join(line["message"]["content"] for line in text) == "".join(mock_text(PROMPT, WORDS))
    assert [call["function"]["name"] for line in text for call in line["message"].get("tool_calls", ())] == ["get_weather"]
    empty = await lines(client, url, chat("llama3.2", tools=TOOLS), {"x-mock-tools": "no-args"})
    assert [call["function"] for line in empty for call in line["message"].get("tool_calls", ())] == [{"name": "get_weather", "arguments": {}}]
    cut = await lines(client, url, chat("llama3.2", tools=TOOLS), {"x-mock-tools": "length"})
    assert not any("tool_calls" in line["message"] for line in cut), "Ollama sends a call only once it is whole"
    assert cut[-1]["done_reason"] == "length"


async def test_a_tool_result_gets_a_final_answer_that_mentions_it(base: str, client: httpx.AsyncClient) -> None:
    history = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": RESULT},
    ]
    received = await lines(client, base + "/api/chat", {"model": "llama3.2", "messages": history, "tools": TOOLS})
    assert RESULT in "".join(line["message"]["content"] for line in received)
    assert not any("tool_calls" in line["message"] for line in received)


async def test_thinking_comes_before_the_content(base: str, client: httpx.AsyncClient) -> None:
    for body in (chat("mock-reasoning"), chat("qwen3", think=True)):
        received = await lines(client, base + "/api/chat", body)
        kinds = ["thinking" if line["message"].get("thinking") else "content" for line in received[:-1]]
        assert kinds == ["thinking"] * kinds.count("thinking") + ["content"] * WORDS and kinds.count("thinking") >= 2
        assert all(line["message"]["content"] == "" for line in received if line["message"].get("thinking"))


async def test_not_streamed_is_the_same_message_whole(base: str, client: httpx.AsyncClient) -> None:
    for body in (chat("mock-reasoning", tools=TOOLS), chat("mock-reasoning")):
        received = await lines(client, base + "/api/chat", body)
        whole = (await client.post(base + "/api/chat", json=body | {"stream": False})).json()
        message = {"role": "assistant", "content": "".join(line["message"]["content"] for line in received),
                   "thinking": "".join(line["message"].get("thinking", "") for line in received)}
        calls = [call for line in received for call in line["message"].get("tool_calls", ())]
        assert whole["message"] == message | ({"tool_calls": calls} if calls else {})
        assert (whole["done"], whole["done_reason"], whole["eval_count"]) == (True, "stop", received[-1]["eval_count"])
