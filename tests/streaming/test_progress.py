"""Any upstream progress is activity: reasoning, a tool call's arguments or a refusal keep the first-token and idle
deadlines away, and the first of them, like the first token, is the point after which there is no failover."""

from __future__ import annotations

import asyncio
import json

import anyio
import httpx
import pytest

from tests.hostile import LAST_CHUNK, Conn, HostileUpstream, chunk, chunked_head
from tests.servers import relay_server
from tests.sse import data, post_stream

FIRST_TOKEN_TIMEOUT = 0.4
PROGRESS = {  # a delta of each kind that is not content
    "reasoning": {"reasoning_content": "hmm, "},
    "reasoning under its later name": {"reasoning": "hmm, "},
    "tool-call arguments": {"tool_calls": [{"index": 0, "function": {"arguments": "{} "}}]},
    "refusal": {"refusal": "no, "},
}


def frame(delta: dict[str, object], finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode() + b"\n\n"


def slow_thinker(delta: dict[str, object], beats: int) -> HostileUpstream:
    """A model that sends ``delta`` every 0.1 s for ``beats`` times (well past the first-token timeout), then its answer."""

    async def script(conn: Conn) -> None:
        while await conn.read_request():
            await conn.write(chunked_head())
            for _ in range(beats):
                await conn.write(chunk(frame(delta)))
                await asyncio.sleep(0.1)
            await conn.write(chunk(frame({"content": "42"}) + frame({}, "stop") + b"data: [DONE]\n\n") + LAST_CHUNK)

    return HostileUpstream(script)


@pytest.mark.parametrize("kind", sorted(PROGRESS))
async def test_a_model_that_thinks_past_the_first_token_timeout_is_not_cut_off(kind: str, client: httpx.AsyncClient) -> None:
    upstream = slow_thinker(PROGRESS[kind], beats=10)
    with upstream.serving() as base, relay_server(base, default_model="m", first_token_timeout=FIRST_TOKEN_TIMEOUT, idle_timeout=5) as url:
        with anyio.fail_after(10):
            _, events = await post_stream(client, url + "/v1/chat/completions", {
                "model": "m", "messages": [{"role": "user", "content": "think"}], "stream": True,
            })
    chunks = [data(event) for event in events if event.data != "[DONE]"]
    assert not any("error" in chunk for chunk in chunks), chunks[-1]
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"]) == "42"
    assert [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]] == ["stop"]
    assert len(upstream.conns) == 1


async def test_a_model_that_thinks_is_still_cut_off_when_it_goes_quiet(client: httpx.AsyncClient) -> None:
    """Progress moves the deadline; it does not remove it: the idle timeout still ends a model that stops."""

    async def script(conn: Conn) -> None:
        await conn.read_request()
        await conn.write(chunked_head() + chunk(frame(PROGRESS["reasoning"])))
        await conn.closed_by_peer()

    with HostileUpstream(script).serving() as base, relay_server(base, default_model="m", first_token_timeout=5, idle_timeout=0.3) as url:
        with anyio.fail_after(10):
            _, events = await post_stream(client, url + "/v1/generate", {"prompt": "think", "stream": True})
    assert [event.event for event in events] == ["reasoning", "error"]
    assert (data(events[-1])["code"], data(events[-1])["phase"]) == ("idle_timeout", "stream")


async def test_the_first_reasoning_delta_is_the_failover_boundary(client: httpx.AsyncClient) -> None:
    """Once the client has had a model's reasoning, another model's answer would not follow from it: no failover after."""

    async def thinks_then_dies(conn: Conn) -> None:
        await conn.read_request()
        await conn.write(chunked_head() + chunk(frame(PROGRESS["reasoning"])))
        await asyncio.sleep(0.2)
        conn.writer.transport.abort()

    async def answers(conn: Conn) -> None:
        while await conn.read_request():
            await conn.write(chunked_head() + chunk(frame({"content": "other"}) + frame({}, "stop") + b"data: [DONE]\n\n") + LAST_CHUNK)

    first, second = HostileUpstream(thinks_then_dies), HostileUpstream(answers)
    with first.serving() as one, second.serving() as two:
        upstreams = [{"name": "first", "base_url": one}, {"name": "second", "base_url": two}]
        with relay_server(None, upstreams=upstreams, first_token_timeout=5, idle_timeout=5) as url, anyio.fail_after(10):
            _, events = await post_stream(client, url + "/v1/generate", {"prompt": "think", "stream": True, "model": "m"})
    assert [event.event for event in events] == ["reasoning", "error"]
    assert data(events[0]) == {"text": "hmm, "}
    assert data(events[-1])["phase"] == "stream"
    assert second.conns == []
