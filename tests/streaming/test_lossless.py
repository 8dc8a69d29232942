"""Whatever the split of the upstream's bytes and however slowly the client reads, it reassembles the upstream's message.

A fixture (tests/streaming/upstreams/fixtures/) goes through the OpenAI adapter into a ``DirectStream``
whose ``send()`` blocks at points hypothesis chooses, so that parts pile up and are coalesced in
every way; the OpenAI SDK's own stream accumulator then reads what the client got. It must be
what the same SDK makes of the upstream's stream read directly: content, reasoning, refusal, tool
calls by index with their ids, names and arguments, logprobs, finish reasons, usage.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.streaming.encoders import NativeEvents, OpenAIChunks, StreamEncoder
from app.streaming.relay import DirectStream
from app.streaming.sse import SSEParser
from app.streaming.upstreams.openai import ChatStream
from app.types import Message
from tests.sdk import FIXTURES, SDK_FIXTURES, reassembled, sse_chunks, view


async def relayed(body: bytes, pieces: list[int], pauses: list[int], blocks: list[int], encoder: StreamEncoder) -> bytes:
    """What the client gets of ``body`` cut at ``pieces``, the upstream pausing ``pauses`` loop turns after each piece,
    and the client's ``send()`` taking ``blocks`` loop turns each (cycled): the relay's backpressure at work."""
    sent = bytearray()
    turns: Iterator[int] = iter(blocks * (len(body) + 8))
    complete = asyncio.Event()

    async def send(message: Message) -> None:
        sent.extend(message["body"])
        for _ in range(next(turns, 0)):
            await asyncio.sleep(0)
        if not message["more_body"]:
            complete.set()

    async def receive() -> Message:
        await complete.wait()  # as ASGI servers do once the response is complete
        return {"type": "http.disconnect"}

    stream = DirectStream(send, encoder, lag_limit=10**9, heartbeat_interval=3600, grace=5, cancel=lambda: None)
    handler = ChatStream(stream.push, stream.flush)
    handler.on_response(200, [(b"content-type", b"text/event-stream")])

    async def upstream() -> None:
        cuts = sorted({0, len(body), *(cut % (len(body) + 1) for cut in pieces)})
        for (start, end), pause in zip(itertools.pairwise(cuts), [*pauses, *[0] * len(cuts)], strict=False):
            handler.on_body(body[start:end])
            for _ in range(pause):
                await asyncio.sleep(0)
        handler.on_end()

    await asyncio.wait_for(asyncio.gather(stream.run(receive), upstream()), 5)
    return bytes(sent)


schedules = st.lists(st.integers(0, 4_000), max_size=30), st.lists(st.integers(0, 3), max_size=30), st.lists(st.integers(0, 3), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SDK_FIXTURES), *schedules)
def test_a_slow_client_reassembles_the_upstreams_message(name: str, pieces: list[int], pauses: list[int], blocks: list[int]) -> None:
    body = (FIXTURES / name).read_bytes()
    got = asyncio.run(relayed(body, pieces, pauses, blocks, OpenAIChunks("chatcmpl-1", "m", include_usage=True, created=0)))
    assert view(reassembled(sse_chunks(got))) == view(reassembled(sse_chunks(body)))


def native_message(body: bytes) -> dict[str, Any]:
    """A native stream reassembled as its documented events say (README, docs/streams.md)."""
    message: dict[str, Any] = {"content": "", "reasoning": "", "refusal": "", "calls": {}, "logprobs": [], "refusal_logprobs": []}
    for event in SSEParser().feed(body):
        data = json.loads(event.data)
        match event.event:
            case "token":
                message["content"] += data["text"]
            case "reasoning":
                message["reasoning"] += data["text"]
            case "refusal":
                message["refusal"] += data["text"]
            case "tool_call":
                call = message["calls"].setdefault(data["index"], {"id": None, "name": None, "arguments": ""})
                call["id"] = call["id"] or data["id"]
                call["name"] = call["name"] or data["name"]
                call["arguments"] += data["arguments"]
            case "logprobs":
                message["logprobs"] += data["content"] or []
                message["refusal_logprobs"] += data["refusal"] or []
            case "done":
                message["finish_reason"] = data["finish_reason"]
                message["usage"] = data["usage"]
    return message


def expected_native(body: bytes) -> dict[str, Any]:
    """The same message, from the SDK's reading of the upstream's own stream."""
    [choice] = view(reassembled(sse_chunks(body)))["choices"]
    logprobs = choice["logprobs"] or {}
    return {
        "content": choice["content"] or "", "reasoning": choice["reasoning"] or "", "refusal": choice["refusal"] or "",
        "calls": {index: {"id": call["id"], "name": call["name"], "arguments": call["arguments"]} for index, call in enumerate(choice["tool_calls"] or [])},
        "logprobs": logprobs.get("content") or [], "refusal_logprobs": logprobs.get("refusal") or [],
        "finish_reason": choice["finish_reason"], "usage": view(reassembled(sse_chunks(body)))["usage"],
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([name for name in SDK_FIXTURES if name != "openai-n2.sse"]), *schedules)
def test_a_slow_native_client_reassembles_the_upstreams_message(name: str, pieces: list[int], pauses: list[int], blocks: list[int]) -> None:
    body = (FIXTURES / name).read_bytes()
    got = asyncio.run(relayed(body, pieces, pauses, blocks, NativeEvents()))
    assert native_message(got) == expected_native(body)


@pytest.mark.parametrize("name", SDK_FIXTURES)
def test_a_client_that_keeps_up_gets_one_chunk_per_upstream_part(name: str) -> None:
    """With no backpressure nothing is coalesced: the client sees the parts as they came, and still the same message."""
    body = (FIXTURES / name).read_bytes()
    got = asyncio.run(relayed(body, [], [], [0], OpenAIChunks("chatcmpl-1", "m", include_usage=True, created=0)))
    assert view(reassembled(sse_chunks(got))) == view(reassembled(sse_chunks(body)))
