"""Failover: the next upstream of a route is tried on an upstream fault, but only until the first event is sent."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from app.mock import MockModel, mock_text
from app.streaming.sse import SSEEvent, SSEParser
from tests.servers import mock_server, relay_server
from tests.sse import data, post_stream
from tests.streams import create, read, text_of


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.001, tokens=8) as (model, url):
        yield model, url.removesuffix("/v1")


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def _upstreams(base: str, **first: Any) -> list[dict[str, Any]]:
    return [{"name": "first", **first}, {"name": "second", "base_url": base + "/v1"}]


def _asked(model: MockModel, since: int) -> list[str]:
    return list(model.paths)[since:]


FAILING_FIRSTS = {
    "http-500": ("mock-fault-http-500", "upstream_status_500"),
    "http-429": ("mock-fault-http-429", "upstream_status_429"),
    "stall-head": ("mock-fault-stall-head", "first_token_timeout"),
    "stall-first": ("mock-fault-stall-first", "first_token_timeout"),
}


@pytest.mark.parametrize("fault", sorted(FAILING_FIRSTS))
async def test_a_fault_before_the_first_token_goes_to_the_next_upstream(
    fault: str, upstream: tuple[MockModel, str], client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
) -> None:
    model, base = upstream
    segment, code = FAILING_FIRSTS[fault]
    upstreams = _upstreams(base, base_url=f"{base}/{segment}/v1", first_token_timeout=0.3)
    since = len(model.paths)
    with caplog.at_level(logging.INFO, "token_relay"), relay_server(None, upstreams=upstreams, heartbeat_interval=0.05) as url:
        with anyio.fail_after(10):
            async with client.stream("POST", url + "/v1/generate", json={"prompt": "fail over", "stream": True, "model": "m"}) as response:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
    events = [line for line in raw.split(b"\n\n") if line]
    assert events[-1].startswith(b"id: ") and b"event: done" in events[-1]
    text = "".join(data(e)["text"] for e in _parse(raw) if e.event == "token")
    assert text == "".join(mock_text("fail over", 8))
    assert _asked(model, since) == [f"/{segment}/v1/chat/completions", "/v1/chat/completions"]
    messages = [record.getMessage() for record in caplog.records if record.name == "token_relay"]
    assert any(f"attempt 1 on upstream first failed ({code}" in m and "trying the next upstream" in m for m in messages)
    assert any("attempt 2 on upstream second is streaming" in m for m in messages)
    if fault.startswith("stall"):  # heartbeats went out while the first upstream stalled: they are not the first byte
        assert raw.index(b": ping") < raw.index(b"event: token")


async def test_an_unreachable_upstream_is_skipped_for_the_next(upstream: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    _, base = upstream
    with relay_server(None, upstreams=_upstreams(base, base_url=f"http://127.0.0.1:{_closed_port()}/v1")) as url:
        response = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "m"})
    assert response.status_code == 200 and response.json()["output"] == "".join(mock_text("x", 8))


async def test_after_the_first_token_a_failure_is_the_terminal_error(upstream: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    model, base = upstream
    since = len(model.paths)
    with relay_server(None, upstreams=_upstreams(base, base_url=f"{base}/mock-fault-reset/v1")) as url:
        _, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True, "model": "m"})
    assert [e.event for e in events] == ["token"] * 4 + ["error"]
    assert data(events[-1])["code"] == "upstream_disconnected"
    assert _asked(model, since) == ["/mock-fault-reset/v1/chat/completions"]


async def test_a_refused_request_is_not_retried_elsewhere(upstream: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    """A 4xx (here the mock's 404 for an unknown fault) would be refused by the next upstream too."""
    model, base = upstream
    since = len(model.paths)
    with relay_server(None, upstreams=_upstreams(base, base_url=f"{base}/mock-fault-nonsense/v1")) as url:
        response = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "m"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"  # the model server's own code, as it said it
    assert _asked(model, since) == ["/mock-fault-nonsense/v1/chat/completions"]


async def test_routes_name_the_upstreams_and_the_model_to_ask_for(upstream: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    model, base = upstream
    upstreams = [{"name": "ollama", "protocol": "ollama", "base_url": base}, {"name": "tgi", "protocol": "tgi", "base_url": base}]
    routes = {"llama": ["ollama:llama3.2:1b"], "tgi-model": ["tgi"]}
    since = len(model.paths)
    with relay_server(None, upstreams=upstreams, routes=routes) as url:
        llama = await client.post(url + "/v1/chat/completions", json={"model": "llama", "messages": [{"role": "user", "content": "x"}]})
        tgi = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "tgi-model"})
        unknown = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "other"})
        default = await client.post(url + "/v1/generate", json={"prompt": "x"})
    assert llama.json()["model"] == "llama", "the client sees its own model name"
    assert tgi.status_code == default.status_code == 200
    assert unknown.status_code == 404
    assert _asked(model, since) == ["/api/chat", "/generate_stream", "/api/chat"]


async def test_a_stream_false_request_fails_over_too(upstream: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    _, base = upstream
    with relay_server(None, upstreams=_upstreams(base, base_url=f"{base}/mock-fault-http-500/v1")) as url:
        response = await client.post(url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "".join(mock_text("x", 8))


def _parse(raw: bytes) -> list[SSEEvent]:
    return SSEParser().feed(raw)


async def test_a_client_leaving_while_an_attempt_waits_ends_it_and_tries_no_other(
    upstream: tuple[MockModel, str], client: httpx.AsyncClient,
) -> None:
    model, base = upstream
    upstreams = _upstreams(base, base_url=f"{base}/mock-fault-stall-first/v1", first_token_timeout=30)
    since = len(model.paths)
    with relay_server(None, upstreams=upstreams, heartbeat_interval=0.05) as url:
        with anyio.fail_after(10):
            async with client.stream("POST", url + "/v1/generate", json={"prompt": "x", "stream": True, "model": "m"},
                                     headers={"x-request-id": "left-waiting"}) as response:
                chunks = response.aiter_raw()
                while b": ping" not in await anext(chunks):
                    pass
                await chunks.aclose()
            record = await anyio.to_thread.run_sync(model.wait_for_disconnect, "left-waiting", 5)
        ready = (await client.get(url + "/readyz")).json()
    assert record["tokens_sent"] == 0
    assert _asked(model, since) == ["/mock-fault-stall-first/v1/chat/completions"]
    assert ready["upstreams"]["first"]["in_flight"] == 0, "its slot was given back before its connection was closed"
    assert ready["upstreams"]["first"]["consecutive_failures"] == 0, "a client leaving is not the upstream's failure"


async def test_a_resumable_stream_fails_over_too(upstream: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    _, base = upstream
    with relay_server(None, upstreams=_upstreams(base, base_url=f"{base}/mock-fault-http-500/v1"), stream_secret="s" * 32) as url:
        created = await create(client, url, {"prompt": "resume me", "max_tokens": 5, "model": "m"})
        _, events = await read(client, created["events_url"])
    assert text_of(events) == "".join(mock_text("resume me", 5))
    assert events[-1].event == "done"


@pytest.mark.parametrize("fault", ["stall-first", "stall-head"])
async def test_the_total_deadline_before_the_first_token_is_not_the_upstreams_fault(
    upstream: tuple[MockModel, str], client: httpx.AsyncClient, fault: str,
) -> None:
    """The request's own budget ran out: the next upstream would have no more time, and the first one's circuit does not count it.

    Each time: a timer may fire a little before its time (uvloop's count milliseconds), and one that the total deadline set is
    still the total's, not read as the first-token timeout (which failed over, about one request in three).
    """
    model, base = upstream
    upstreams = _upstreams(base, base_url=f"{base}/mock-fault-{fault}/v1", first_token_timeout=30)
    with relay_server(None, upstreams=upstreams, total_timeout=0.3, heartbeat_interval=0.05) as url:
        for _ in range(5):
            since = len(model.paths)
            with anyio.fail_after(10):
                _, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True, "model": "m"})
            assert [e.event for e in events] == ["error"]
            assert (data(events[-1])["code"], data(events[-1])["phase"]) == ("total_timeout", "total")
            assert _asked(model, since) == [f"/mock-fault-{fault}/v1/chat/completions"]
        ready = (await client.get(url + "/readyz")).json()
    assert ready["upstreams"]["first"]["consecutive_failures"] == 0
    assert ready["upstreams"]["first"]["in_flight"] == 0
