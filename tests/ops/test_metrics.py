"""``GET /metrics`` after known traffic, on a real relay in front of the mock model server."""

from __future__ import annotations

import itertools

import anyio
import httpx
import pytest

from app.mock import MockModel
from app.ops import metrics
from app.types import Receive, Scope, Send
from tests.ops.scrape import scrape, value
from tests.servers import relay_server, serve_in_thread
from tests.sse import chat, post_stream

KEY = "k" * 24
AUTH = {"authorization": f"Bearer {KEY}"}
STREAM = {"dialect": "openai_chat", "model": "mock", "upstream": "default"}


async def test_metrics_need_no_key_and_count_known_traffic(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    """Two streams, one whole answer, an upstream failure and an unknown model: each is counted once, under its labels."""
    with relay_server(mock[1], models=("mock", "mock-fault-http-500"), api_keys=(KEY,)) as url:
        for _ in range(2):
            response, events = await post_stream(client, url + "/v1/chat/completions", chat(stream=True), headers=AUTH)
            assert response.status_code == 200 and events[-1].data == "[DONE]"
        whole = await client.post(url + "/v1/generate", json={"prompt": "hello", "model": "mock"}, headers=AUTH)
        assert whole.status_code == 200
        failed = await client.post(url + "/v1/chat/completions", json=chat("mock-fault-http-500"), headers=AUTH)
        assert failed.status_code == 502
        unknown = await client.post(url + "/v1/chat/completions", json=chat("gpt-unknown"), headers=AUTH)
        assert unknown.status_code == 404
        samples = await scrape(client, url)  # no key

    assert value(samples, "relay_requests_total", **STREAM, outcome="done", code="") == 2
    assert value(samples, "relay_requests_total", dialect="native", model="mock", outcome="done") == 1
    assert value(samples, "relay_requests_total", dialect="openai_chat", model="mock-fault-http-500", outcome="error", code="upstream_status_500") == 1
    assert value(samples, "relay_requests_total", dialect="openai_chat", model="other", upstream="none", outcome="error", code="model_not_found") == 1
    assert value(samples, "relay_requests_total") == 5
    assert not any(("gpt-unknown" in str(labels)) for _, labels in samples)
    # The mock answers 16 tokens, and says so in its usage: the upstream's figure is the one recorded.
    assert value(samples, "gen_ai_client_token_usage_count", **STREAM, type="output") == 2
    assert value(samples, "gen_ai_client_token_usage_sum", **STREAM, type="output") == 32
    assert value(samples, "gen_ai_client_token_usage_count", **STREAM, type="input") == 2
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_count", **STREAM) == 2
    assert value(samples, "gen_ai_server_time_per_output_token_seconds_count", **STREAM) == 2
    assert value(samples, "gen_ai_client_operation_duration_seconds_count", **STREAM, outcome="done") == 2
    assert value(samples, "relay_added_latency_seconds_count", dialect="openai_chat") == 2
    assert value(samples, "relay_partial_usage_total") == 0
    # Five requests reached the router; four of them an upstream (the fault fails over to nothing: one upstream).
    assert value(samples, "relay_upstream_attempts_total", upstream="default") == 4
    assert value(samples, "relay_upstream_failovers_total") == 0
    assert value(samples, "relay_active_streams") == 0
    assert value(samples, "relay_waiting_first_token_streams") == 0
    assert value(samples, "relay_resumable_streams") == 0
    assert ("relay_circuit_state", frozenset({("upstream", "default")})) in samples
    assert ("relay_limit_refusals_total", frozenset()) not in samples  # defined, and counted by the key limits


async def test_gauges_count_streams_in_flight(client: httpx.AsyncClient) -> None:
    """A stream waiting for its first token is active and waiting; once its tokens flow it is active only."""
    from tests.servers import mock_server

    with mock_server(ttft=30.0, interval=0.01, tokens=10) as slow, relay_server(slow[1], models=("mock",), first_token_timeout=60) as url:
        with anyio.fail_after(10):
            async with client.stream("POST", url + "/v1/chat/completions", json=chat(stream=True)) as response:
                assert response.status_code == 200
                await anyio.to_thread.run_sync(slow[0].wait_for_requests, 1, 5)
                samples = await scrape(client, url)
                assert value(samples, "relay_active_streams") == 1
                assert value(samples, "relay_waiting_first_token_streams") == 1
        samples = await scrape(client, url)
        assert value(samples, "relay_active_streams") == 0
        assert value(samples, "relay_requests_total", outcome="client_left") == 1


async def test_metrics_can_be_turned_off(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    """RELAY_METRICS=false: /metrics is 404 and nothing is recorded for it; requests are answered as ever."""
    with relay_server(mock[1], models=("mock",), metrics=False) as url:
        response, events = await post_stream(client, url + "/v1/chat/completions", chat(stream=True))
        assert response.status_code == 200 and events[-1].data == "[DONE]"
        off = await client.get(url + "/metrics")
    assert off.status_code == 404 and off.json()["error"]["code"] == "not_found"


async def test_a_model_server_that_makes_up_a_code_per_request_does_not_grow_the_code_label(
    monkeypatch: pytest.MonkeyPatch, client: httpx.AsyncClient,
) -> None:
    """Its in-band errors' codes become label values up to ``MAX_CODES``, then ``other``: the series stay bounded."""
    monkeypatch.setattr(metrics, "MAX_CODES", 3)
    errors = itertools.count()

    async def upstream(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        body = b'data: {"error": {"code": "req_%d", "message": "made up"}}\n\n' % next(errors)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": body})

    with serve_in_thread(upstream, lifespan="off") as base, relay_server(base + "/v1", circuit_failures=1000) as url:
        for _ in range(6):
            response, _events = await post_stream(client, url + "/v1/chat/completions", chat("mock", stream=True))
            assert response.status_code == 200
        samples = await scrape(client, url)
    codes = {dict(labels)["code"]: count for (name, labels), count in samples.items() if name == "relay_requests_total"}
    assert codes == {"req_0": 1, "req_1": 1, "req_2": 1, "other": 3}
