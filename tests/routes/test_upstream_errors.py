"""An upstream's 4xx keeps its meaning: the client gets the same status and the upstream's own error, in its dialect.

The relay holds its response head until the upstream's head has arrived (at most one heartbeat
interval), so a refusal of the request itself (``400 context_length_exceeded``) is answered as
such, and the OpenAI SDK raises ``BadRequestError`` without retrying. A 5xx, a 429, or an
upstream slower than the heartbeat keep today's answer: 502, or a 200 head then an in-band error.
"""

from __future__ import annotations

import json
import time

import anyio
import httpx
import openai
import pytest

from tests.hostile import Conn, HostileUpstream, chunked_response, sse
from tests.servers import relay_server
from tests.sse import chat, data, post_stream

REFUSAL = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    },
}


def status_response(status: int, body: bytes, reason: str = "Error") -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def answering(status: int, body: bytes, *, delay: float = 0.0) -> HostileUpstream:
    async def script(conn: Conn) -> None:
        while await conn.read_request():
            if delay:
                await anyio.sleep(delay)  # the upstream's own slowness, not a wait in the test
            await conn.write(status_response(status, body))

    return HostileUpstream(script)


def requests(upstream: HostileUpstream) -> int:
    return sum(len(conn.requests) for conn in upstream.conns)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_400_reaches_the_openai_sdk_as_bad_request_without_retries(stream: bool) -> None:
    upstream = answering(400, json.dumps(REFUSAL).encode())
    with upstream.serving() as base, relay_server(base, default_model="m") as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=2)
        with anyio.fail_after(10), pytest.raises(openai.BadRequestError) as raised:
            if stream:
                async for _ in await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True):
                    pass
            else:
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        await client.close()
    assert raised.value.status_code == 400
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.param == "messages"
    assert raised.value.type == "invalid_request_error"
    assert "maximum context length is 8192" in raised.value.message
    assert requests(upstream) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_4xx_on_generate_keeps_its_status_in_the_relay_shape(stream: bool) -> None:
    upstream = answering(422, json.dumps(REFUSAL).encode())
    with upstream.serving() as base, relay_server(base, default_model="m") as url, anyio.fail_after(10):
        async with httpx.AsyncClient() as http:
            response = await http.post(url + "/v1/generate", json={"prompt": "x", "stream": stream})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == {
        "message": REFUSAL["error"]["message"], "type": "invalid_request_error", "code": "context_length_exceeded",
        "param": "messages", "phase": "first_token",
    }


async def test_an_upstream_4xx_without_an_openai_body_keeps_its_status_and_the_wire_code() -> None:
    upstream = answering(404, b'{"error":"model \'m\' not found"}')
    with upstream.serving() as base, relay_server(base, default_model="m") as url, anyio.fail_after(10):
        async with httpx.AsyncClient() as http:
            response = await http.post(url + "/v1/chat/completions", json=chat("m", stream=True))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "upstream_status_404" and error["type"] == "invalid_request_error"
    assert "model 'm' not found" in error["message"]


@pytest.mark.parametrize("status", [500, 429, 401])
async def test_an_upstream_5xx_429_or_401_keeps_its_mapping(status: int) -> None:
    """A 401 is about the relay's own key to the model server: the client's key is not in question."""
    upstream = answering(status, json.dumps({"error": {"message": "busy", "type": "server_error", "code": "overloaded"}}).encode())
    with upstream.serving() as base, relay_server(base, default_model="m") as url:
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(10):
                whole = await http.post(url + "/v1/chat/completions", json=chat("m"))
            streamed, events = await post_stream(http, url + "/v1/chat/completions", chat("m", stream=True))
    assert whole.status_code == (429 if status == 429 else 502)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert whole.json()["error"]["code"] == f"upstream_status_{status}"
    assert streamed.status_code == 200
    assert data(events[0])["error"]["code"] == f"upstream_status_{status}"


async def test_an_upstream_head_slower_than_the_heartbeat_gets_a_200_head_and_heartbeats_in_time() -> None:
    upstream = answering(400, json.dumps(REFUSAL).encode(), delay=1.5)
    with upstream.serving() as base, relay_server(base, default_model="m", heartbeat_interval=0.3, first_token_timeout=10) as url:
        async with httpx.AsyncClient() as http:
            began = time.monotonic()
            with anyio.fail_after(10):
                async with http.stream("POST", url + "/v1/chat/completions", json=chat("m", stream=True)) as response:
                    head_after = time.monotonic() - began
                    raw = b""
                    first_beat_after = None
                    async for piece in response.aiter_raw():
                        if first_beat_after is None and b":" in piece:
                            first_beat_after = time.monotonic() - began
                        raw += piece
    assert response.status_code == 200
    assert head_after < 1.0
    assert first_beat_after is not None and first_beat_after < 1.0
    assert raw.startswith(b":")
    error = json.loads(raw.split(b"data: ", 1)[1].split(b"\n", 1)[0])["error"]
    assert error["code"] == "upstream_status_400"


async def test_a_stream_with_a_200_head_starts_before_its_first_token_and_before_the_heartbeat() -> None:
    async def script(conn: Conn) -> None:
        await conn.read_request()
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await anyio.sleep(1.5)  # a model that is slow to its first token
        await conn.write(chunked_response(sse("late"))[len(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"):])

    upstream = HostileUpstream(script)
    with upstream.serving() as base, relay_server(base, default_model="m", heartbeat_interval=5, first_token_timeout=10) as url:
        async with httpx.AsyncClient() as http:
            began = time.monotonic()
            with anyio.fail_after(10):
                async with http.stream("POST", url + "/v1/generate", json={"prompt": "x", "stream": True}) as response:
                    head_after = time.monotonic() - began
                    await response.aread()
    assert response.status_code == 200
    assert head_after < 1.0
    assert b"late" in response.content
