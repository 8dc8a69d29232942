"""One request-log line at the end of every request, whichever way it ends, with its usage (partial when it stopped early)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from app.mock import MockModel
from app.ops.requestlog import REQUESTS_LOGGER
from tests.ops.scrape import scrape, value
from tests.rawhttp import Response, open_post, read_until
from tests.servers import mock_server, relay_server, serve_in_thread
from tests.sse import chat, post_stream
from tests.streams import create, read

FIELDS = [
    "request_id", "key", "dialect", "model", "upstream", "attempts", "outcome", "code", "phase", "prompt_tokens", "completion_tokens",
    "tokens_estimated", "partial", "ttft_ms", "duration_ms", "status",
]


@pytest.fixture(scope="module")
def paced() -> Iterator[tuple[MockModel, str]]:
    """100 tokens/s for 10 s: a stream that is still going when the test ends it."""
    with mock_server(ttft=0.0, interval=0.01, tokens=1000) as served:
        yield served


@pytest.fixture(scope="module")
def relay(paced: tuple[MockModel, str]) -> Iterator[str]:
    with relay_server(paced[1], models=("mock", "mock-fault-http-500", "mock-fault-error-midstream"), stream_grace=30) as url:
        yield url


@pytest.fixture
def requests_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The request lines; after the test (and every request it made has ended), exactly one for each request."""
    caplog.set_level(logging.INFO, logger=REQUESTS_LOGGER)
    yield caplog
    ids = [record.request["request_id"] for record in caplog.records if record.name == REQUESTS_LOGGER]
    assert sorted(ids) == sorted(set(ids)), ids


async def line_of(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, Any]:
    """The request's line, once the relay (on its server's thread) has written it."""
    with anyio.fail_after(10):
        while not (lines := _lines(caplog, request_id)):  # noqa: ASYNC110 (another thread's logging)
            await anyio.sleep(0.01)
    assert len(lines) == 1, lines
    assert list(lines[0]) == FIELDS
    return lines[0]


def _lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[dict[str, Any]]:
    return [record.request for record in caplog.records if record.name == REQUESTS_LOGGER and record.request["request_id"] == request_id]


def rid(name: str) -> dict[str, str]:
    return {"x-request-id": name}


async def test_a_stream_that_ends(relay: str, client: httpx.AsyncClient, requests_log: pytest.LogCaptureFixture) -> None:
    body = chat(stream=True, max_tokens=5, stream_options={"include_usage": True})
    response, events = await post_stream(client, relay + "/v1/chat/completions", body, headers=rid("done-stream"))
    assert response.status_code == 200 and events[-1].data == "[DONE]"
    line = await line_of(requests_log, "done-stream")
    assert line | {"ttft_ms": None, "duration_ms": None} == {
        "request_id": "done-stream", "key": None, "dialect": "openai_chat", "model": "mock", "upstream": "default", "attempts": 1,
        "outcome": "done", "code": None, "phase": None, "prompt_tokens": line["prompt_tokens"], "completion_tokens": 5,
        "tokens_estimated": False, "partial": False, "ttft_ms": None, "duration_ms": None, "status": 200,
    }
    assert line["prompt_tokens"] > 0 and 0 <= line["ttft_ms"] <= line["duration_ms"]


async def test_a_whole_answer_and_a_refusal(relay: str, client: httpx.AsyncClient, requests_log: pytest.LogCaptureFixture) -> None:
    whole = await client.post(relay + "/v1/generate", json={"prompt": "hi", "model": "mock", "max_tokens": 3}, headers=rid("whole"))
    assert whole.status_code == 200
    line = await line_of(requests_log, "whole")
    assert (line["dialect"], line["outcome"], line["completion_tokens"], line["status"]) == ("native", "done", 3, 200)
    refused = await client.post(relay + "/v1/chat/completions", json=chat("nope"), headers=rid("refused"))
    assert refused.status_code == 404
    line = await line_of(requests_log, "refused")
    assert (line["outcome"], line["code"], line["status"], line["upstream"], line["completion_tokens"]) == ("error", "model_not_found", 404, None, None)
    assert line["model"] == "nope"  # the log says what was asked; the metrics' label says "other"


async def test_an_upstream_failure_before_and_after_the_first_token(
    relay: str, client: httpx.AsyncClient, requests_log: pytest.LogCaptureFixture,
) -> None:
    await post_stream(client, relay + "/v1/chat/completions", chat("mock-fault-http-500", stream=True), headers=rid("failed"))
    line = await line_of(requests_log, "failed")
    assert (line["outcome"], line["code"], line["phase"], line["partial"]) == ("error", "upstream_status_500", "first_token", False)
    assert line["completion_tokens"] == 0
    await post_stream(client, relay + "/v1/chat/completions", chat("mock-fault-error-midstream", stream=True), headers=rid("midstream"))
    line = await line_of(requests_log, "midstream")
    assert (line["outcome"], line["phase"], line["partial"], line["tokens_estimated"]) == ("error", "stream", True, True)
    assert line["completion_tokens"] > 0


async def test_a_client_that_leaves_a_stream(
    relay: str, paced: tuple[MockModel, str], client: httpx.AsyncClient, requests_log: pytest.LogCaptureFixture,
) -> None:
    """The tokens relayed before it left are recorded, estimated and partial; the upstream is closed, and that is timed."""
    received = 0
    with anyio.fail_after(10):
        async with client.stream("POST", relay + "/v1/chat/completions", json=chat(stream=True), headers=rid("left")) as response:
            async for chunk in response.aiter_lines():
                received += chunk.startswith("data: {")
                if received >= 5:
                    break
    await anyio.to_thread.run_sync(paced[0].wait_for_disconnect, "left", 5)
    line = await line_of(requests_log, "left")
    assert (line["outcome"], line["code"], line["partial"], line["tokens_estimated"], line["status"]) == ("client_left", None, True, True, 200)
    assert line["completion_tokens"] >= 4  # the first chunk is the role's
    assert line["prompt_tokens"] is None  # the mock tells it only at the end
    samples = await scrape(client, relay)
    assert value(samples, "relay_disconnect_to_upstream_closed_seconds_count", dialect="openai_chat") >= 1
    assert value(samples, "relay_partial_usage_total", dialect="openai_chat") >= 1


async def test_a_client_that_leaves_a_whole_answer(relay: str, client: httpx.AsyncClient, requests_log: pytest.LogCaptureFixture) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await client.post(relay + "/v1/generate", json={"prompt": "hi", "model": "mock", "max_tokens": 900}, headers=rid("left-whole"), timeout=0.3)
    line = await line_of(requests_log, "left-whole")
    assert (line["dialect"], line["outcome"], line["partial"]) == ("native", "client_left", True)
    assert line["completion_tokens"] > 0


async def test_resumable_streams_that_end_and_that_are_cancelled(
    relay: str, client: httpx.AsyncClient, requests_log: pytest.LogCaptureFixture,
) -> None:
    short = await create(client, relay, {"prompt": "hi", "model": "mock", "max_tokens": 4}, headers=rid("resumable-done"))
    await read(client, short["events_url"])
    line = await line_of(requests_log, "resumable-done")
    assert (line["dialect"], line["outcome"], line["completion_tokens"], line["partial"], line["status"]) == ("resumable", "done", 4, False, 201)

    long = await create(client, relay, {"prompt": "hi", "model": "mock", "max_tokens": 900}, headers=rid("resumable-cancelled"))
    _, events = await read(client, long["events_url"], stop_after=6)
    assert len(events) == 6
    assert (await client.delete(long["cancel_url"])).status_code == 200
    line = await line_of(requests_log, "resumable-cancelled")
    assert (line["outcome"], line["code"], line["partial"], line["tokens_estimated"]) == ("cancelled", "cancelled", True, True)
    assert line["completion_tokens"] >= 5


async def test_a_shutdown_ends_every_record(paced: tuple[MockModel, str], client: httpx.AsyncClient, requests_log: pytest.LogCaptureFixture) -> None:
    """Streams in flight when the server stops, direct and resumable, each get their line (``shutting_down``), with their usage so far."""
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(relay_server(paced[1], models=("mock",), drain_timeout=5))
        long = await create(client, relay, {"prompt": "hi", "model": "mock", "max_tokens": 900}, headers=rid("shutdown-resumable"))
        with anyio.fail_after(15):
            async with client.stream("POST", relay + "/v1/chat/completions", json=chat(stream=True), headers=rid("shutdown-direct")) as response:
                lines = response.aiter_lines()
                async for chunk in lines:
                    if chunk.startswith("data: {") and '"content"' in chunk:
                        break
                async with anyio.create_task_group() as tg:
                    tg.start_soon(anyio.to_thread.run_sync, stack.close)
                    rest = [chunk async for chunk in lines]  # the drain sends the terminal event
    assert any("shutting_down" in chunk for chunk in rest)
    for name in ("shutdown-direct", "shutdown-resumable"):
        line = await line_of(requests_log, name)
        assert (line["outcome"], line["code"], line["partial"]) == ("error", "shutting_down", True), line
    assert long["id"]


class CountingUpstream:
    """An OpenAI-protocol model server that reports its usage in every chunk (vLLM's ``continuous_usage_stats``) and never ends."""

    PROMPT = 42

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._until_disconnect, receive, tg.cancel_scope)
            await self._stream(send)

    async def _until_disconnect(self, receive: Any, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _stream(self, send: Any) -> None:
        for produced in range(1, 100_000):
            usage = {"prompt_tokens": self.PROMPT, "completion_tokens": produced, "total_tokens": self.PROMPT + produced}
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}], "usage": usage}
            await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n", "more_body": True})
            await anyio.sleep(0.005)


async def test_a_client_that_leaves_gets_the_usage_the_upstream_reported_as_it_went(
    client: httpx.AsyncClient, requests_log: pytest.LogCaptureFixture,
) -> None:
    """The prompt tokens are known then, and the completion tokens are the upstream's figure (or the count, if that is higher)."""
    with serve_in_thread(CountingUpstream(), lifespan="off") as upstream, relay_server(upstream + "/v1", models=("m",)) as relay:
        with anyio.fail_after(10):
            async with client.stream("POST", relay + "/v1/chat/completions", json=chat("m", stream=True), headers=rid("counted")) as response:
                seen = 0
                async for chunk in response.aiter_lines():
                    seen += '"content":"a"' in chunk
                    if seen >= 10:
                        break
        line = await line_of(requests_log, "counted")
    assert (line["outcome"], line["partial"], line["prompt_tokens"], line["tokens_estimated"]) == ("client_left", True, CountingUpstream.PROMPT, False)
    assert line["completion_tokens"] >= 10


async def test_a_reader_too_slow_is_an_error_not_a_client_that_left(requests_log: pytest.LogCaptureFixture) -> None:
    """The stream's own end (``slow_consumer``) is the outcome, though the generation was closed without a terminal event of its own."""
    endless = 10_000_000
    with mock_server(ttft=0.0, interval=0.0, tokens=endless) as (model, upstream), \
            relay_server(upstream, models=("mock",), slow_consumer_lag_bytes=20_000, slow_consumer_grace=10, max_tokens_limit=endless) as url:
        with anyio.fail_after(30):
            body = {"prompt": "stop", "stream": True, "model": "mock", "max_tokens": endless}
            stream = await open_post(url, "/v1/generate", body, receive_buffer=262_144, request_id="too-slow")
            response = Response()
            await read_until(stream, response, body_contains=b"event: token")
            await anyio.to_thread.run_sync(model.wait_for_disconnect, "too-slow", 20)  # the reader stopped: the relay gave up on it
            await read_until(stream, response)
            await stream.aclose()
        line = await line_of(requests_log, "too-slow")
    assert (line["outcome"], line["code"], line["partial"], line["tokens_estimated"]) == ("error", "slow_consumer", True, True)
    assert line["completion_tokens"] > 0
