"""A ``stream: false`` answer is collected up to RELAY_MAX_COLLECTED_BYTES of text: a model server that floods it
gets its connection closed, and the client a 502 ``response_too_large``, with memory bounded meanwhile."""

from __future__ import annotations

import json

import anyio
import httpx
import msgspec
import pytest

from app.streaming.events import Delta, Error, Finish, Logprobs, Part, Reasoning, RedactedReasoning, Refusal, ToolCall
from app.streaming.relay import CollectedStream
from tests.hostile import LAST_CHUNK, Flood, HostileUpstream, chunk, chunked_head, probing, sse
from tests.servers import relay_server

MiB = 1024 * 1024
FLOOD = 64 * MiB
TEXT = "x" * 16_384
LIMIT = 4 * MiB  # the default of RELAY_MAX_COLLECTED_BYTES, as README documents it
EVENT = chunk(b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": TEXT}}]}).encode() + b"\n\n")


ROUTES = {  # the body of a non-streaming request for a model, and where an answer's text is in its JSON
    "/v1/chat/completions": (lambda model: {"model": model, "messages": [{"role": "user", "content": "x"}]},
                             lambda answer: answer["choices"][0]["message"]["content"]),
    "/v1/generate": (lambda model: {"model": model, "prompt": "x"}, lambda answer: answer["output"]),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_a_flooded_answer_is_cut_at_the_limit_with_a_502_and_the_upstream_closed(route: str) -> None:
    body, text_of = ROUTES[route]
    flood = Flood(chunked_head(), EVENT, FLOOD, end=chunk(sse()) + LAST_CHUNK)
    with HostileUpstream(flood.script).serving() as upstream, relay_server(upstream) as url:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client, probing(url) as probe:
            answers: dict[str, httpx.Response] = {}

            async def ask(model: str) -> None:
                with anyio.fail_after(20):
                    answers[model] = await client.post(url + route, json=body(model))

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, "flood")
                tg.start_soon(ask, "normal")
            flooded = answers["flood"]
            assert (flooded.status_code, flooded.headers["content-type"]) == (502, "application/json")
            assert flooded.json()["error"] == {
                "type": "relay_error", "code": "response_too_large", "phase": "stream",
                "message": f"the answer passed the relay's limit of {LIMIT} bytes of text for a non-streaming answer; ask for a stream instead",
            }
            assert await anyio.to_thread.run_sync(flood.done.wait, 10), "the flood went on"
    assert text_of(answers["normal"].json()) == "one two"
    assert flood.closed, "the relay did not close the flooding connection"
    assert flood.sent < FLOOD // 2, "the relay read on long after the limit"
    assert probe.slowest < 0.5
    assert probe.peak_growth < 24 * MiB


async def test_the_limit_is_a_setting() -> None:
    flood = Flood(chunked_head(), EVENT, FLOOD, end=chunk(sse()) + LAST_CHUNK)
    with HostileUpstream(flood.script).serving() as upstream, \
            relay_server(upstream, environ={"RELAY_MAX_COLLECTED_BYTES": "65536"}) as url:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
            with anyio.fail_after(20):
                response = await client.post(url + "/v1/generate", json={"model": "flood", "prompt": "x"})
    assert response.status_code == 502
    assert "limit of 65536 bytes" in response.json()["error"]["message"]


async def test_an_answer_of_exactly_the_limit_is_whole_and_one_character_more_is_too_large() -> None:
    whole, over = CollectedStream(5), CollectedStream(5)
    for text in ("abc", "de"):
        whole.push(Delta(text))
    whole.push(Finish("stop"))
    for text in ("abc", "def", "what arrives before the generation is closed changes nothing"):
        over.push(Delta(text))
    over.push(Finish("stop"))
    collected = await whole.result()
    assert collected is not None and collected.terminal == Finish("stop")
    assert "".join(collected.message.choices[0].content) == "abcde" and collected.message.usage is None
    result = await over.result()
    assert result is not None and not result.message.choices
    assert isinstance(result.terminal, Error) and (result.terminal.code, result.terminal.phase) == ("response_too_large", "stream")


@pytest.mark.parametrize("part", [
    Reasoning("think"), ToolCall(0, "call_1", "f", "{}"), ToolCall(0, arguments='{"a":1}'), Refusal("no no"), RedactedReasoning("xxxxx"),
    Logprobs((msgspec.Raw(b'{"token":"a"}'),)),
], ids=repr)
async def test_every_kind_of_text_counts_toward_the_limit(part: Part) -> None:
    """A model that reasons, or writes a call's arguments, without end is cut off as one that writes text."""
    collected = CollectedStream(4)
    collected.push(Delta("x"))
    collected.push(part)
    result = await collected.result()
    assert result is not None and isinstance(result.terminal, Error) and result.terminal.code == "response_too_large"
