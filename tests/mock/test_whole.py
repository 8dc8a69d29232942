"""The mock's whole (not streamed) answers, in each protocol's documented shape."""

from __future__ import annotations

import httpx

from app.mock import mock_text

TEXT = "".join(mock_text("hello there", 3))


async def test_tgi_generate(base: str, client: httpx.AsyncClient) -> None:
    response = await client.post(base + "/generate", json={"inputs": "hello there", "parameters": {"max_new_tokens": 3, "details": True}})
    assert response.json() == {
        "generated_text": TEXT, "details": {"finish_reason": "length", "generated_tokens": 3, "seed": None, "input_length": 2},
    }


async def test_ollama_chat_not_streamed(base: str, client: httpx.AsyncClient) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}], "stream": False, "options": {"num_predict": 3}}
    answer = (await client.post(base + "/api/chat", json=body)).json()
    assert answer["message"] == {"role": "assistant", "content": TEXT}
    assert (answer["done"], answer["done_reason"], answer["prompt_eval_count"], answer["eval_count"]) == (True, "length", 2, 3)


async def test_ollama_chat_streams_unless_told_not_to(base: str, client: httpx.AsyncClient) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}], "options": {"num_predict": 3}}
    response = await client.post(base + "/api/chat", json=body)
    assert response.headers["content-type"] == "application/x-ndjson"
    assert len(response.text.splitlines()) == 4


async def test_anthropic_message_not_streamed(base: str, client: httpx.AsyncClient) -> None:
    body = {"model": "claude", "max_tokens": 3, "messages": [{"role": "user", "content": "hello there"}]}
    answer = (await client.post(base + "/v1/messages", json=body)).json()
    assert (answer["type"], answer["content"], answer["stop_reason"]) == ("message", [{"type": "text", "text": TEXT}], "max_tokens")
    assert answer["usage"] == {"input_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 3}


async def test_a_fault_in_the_path_applies_to_every_protocol(base: str, client: httpx.AsyncClient) -> None:
    response = await client.post(base + "/mock-fault-http-429/v1/messages", json={"model": "claude", "max_tokens": 3, "messages": []})
    assert response.status_code == 429
    assert response.json() == {"type": "error", "error": {"type": "rate_limit_error", "message": "mock fault: rate limited"}}

