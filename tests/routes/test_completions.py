"""POST /v1/chat/completions: OpenAI-compatible, tested with the official SDK as well as raw."""

from __future__ import annotations

import anyio
import httpx
import openai

from app.mock import mock_text
from tests.servers import under_every_server
from tests.sse import chat, data, post_stream
from tests.usage import mock_usage


@under_every_server
async def test_stream_is_chat_completion_chunks_then_done(relay_url: str, client: httpx.AsyncClient) -> None:
    response, events = await post_stream(client, relay_url + "/v1/chat/completions", chat(content="hi there", max_tokens=6, stream=True))
    assert response.status_code == 200
    assert events[-1].data == "[DONE]"
    chunks = [data(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "mock" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "".join(mock_text("hi there", 6))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in chunks[-1]


async def test_usage_chunk_only_when_asked(relay_url: str, client: httpx.AsyncClient) -> None:
    body = chat(max_tokens=3, stream=True, stream_options={"include_usage": True})
    _, events = await post_stream(client, relay_url + "/v1/chat/completions", body)
    usage = data(events[-2])
    assert usage["choices"] == []
    assert usage["usage"] == mock_usage(1, 3)


@under_every_server
async def test_non_streaming_is_a_chat_completion(relay_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(relay_url + "/v1/chat/completions", json=chat(content="hi there", max_tokens=4))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "".join(mock_text("hi there", 4)), "refusal": None}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4


def _sdk_stream(base_url: str) -> tuple[str, str | None, int | None]:
    sdk = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=10)
    text, finish, usage = "", None, None
    stream = sdk.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "sdk"}], max_tokens=7, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish, usage


def _sdk_create(base_url: str) -> tuple[str | None, str, int]:
    sdk = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=10)
    completion = sdk.chat.completions.create(model="mock", messages=[{"role": "user", "content": "sdk"}], max_tokens=7)
    assert completion.usage is not None
    return completion.choices[0].message.content, completion.choices[0].finish_reason, completion.usage.completion_tokens


@under_every_server
async def test_openai_sdk_streams_through_unchanged(relay_url: str) -> None:
    with anyio.fail_after(15):
        text, finish, usage = await anyio.to_thread.run_sync(_sdk_stream, relay_url)
    assert (text, finish, usage) == ("".join(mock_text("sdk", 7)), "length", 7)


@under_every_server
async def test_openai_sdk_non_streaming(relay_url: str) -> None:
    with anyio.fail_after(15):
        content, finish, usage = await anyio.to_thread.run_sync(_sdk_create, relay_url)
    assert (content, finish, usage) == ("".join(mock_text("sdk", 7)), "length", 7)


def _sdk_stream_error(base_url: str) -> str:
    sdk = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=10)
    try:
        for _ in sdk.chat.completions.create(model="mock-fault-http-500", messages=[{"role": "user", "content": "x"}], stream=True):
            pass
    except openai.APIError as exc:
        return str(exc)
    return "no error raised"


@under_every_server
async def test_openai_sdk_raises_on_an_in_band_error(relay_url: str) -> None:
    with anyio.fail_after(15):
        message = await anyio.to_thread.run_sync(_sdk_stream_error, relay_url)
    assert "the model server answered 500" in message
