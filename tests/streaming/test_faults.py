"""Every upstream fault the mock can inject, and every timeout, ends the stream with exactly one terminal event."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import anyio
import httpx
import pytest

from app.mock import MockModel
from app.streaming.generation import Generation
from tests.servers import mock_server, relay_server, under_every_server
from tests.sse import chat, data, post_stream

FAULT_CODES = {
    "http-500": ("upstream_status_500", "first_token"),
    "http-429": ("upstream_status_429", "first_token"),
    "error-midstream": ("mock_fault", "stream"),
    "reset": ("upstream_disconnected", "stream"),
    "no-done": ("upstream_incomplete", "stream"),
    "malformed": ("upstream_malformed", "stream"),
    "stall-head": ("first_token_timeout", "first_token"),
    "stall-first": ("first_token_timeout", "first_token"),
    "stall-midstream": ("idle_timeout", "stream"),
}


@pytest.fixture(scope="module")
def faulty(transport: str) -> Iterator[tuple[MockModel, str]]:
    """Over each transport: the same fault ends the same way."""
    with mock_server(ttft=0.0, interval=0.001, tokens=8) as (model, upstream), \
            relay_server(upstream, first_token_timeout=0.3, idle_timeout=0.3, transport=transport) as url:
        yield model, url


@pytest.mark.parametrize("fault", sorted(FAULT_CODES))
async def test_native_stream_ends_with_exactly_one_error_event(fault: str, faulty: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    _, url = faulty
    response, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True, "model": f"mock-fault-{fault}"})
    assert response.status_code == 200
    kinds = [e.event for e in events]
    assert kinds.count("error") == 1 and "done" not in kinds
    assert kinds[-1] == "error"
    error = data(events[-1])
    assert (error["code"], error["phase"]) == FAULT_CODES[fault]
    assert set(error) == {"type", "code", "phase", "message"}


@pytest.mark.parametrize("fault", sorted(FAULT_CODES))
async def test_openai_stream_ends_with_an_error_chunk_then_done(fault: str, faulty: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    _, url = faulty
    _, events = await post_stream(client, url + "/v1/chat/completions", chat(f"mock-fault-{fault}", stream=True))
    assert events[-1].data == "[DONE]"
    errors = [data(e) for e in events[:-1] if "error" in data(e)]
    assert len(errors) == 1 and "error" in data(events[-2])
    assert errors[0]["error"]["code"] == FAULT_CODES[fault][0]


async def test_timeouts_close_the_upstream(faulty: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    model, url = faulty
    headers = {"x-request-id": "stalled-midstream"}
    await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True, "model": "mock-fault-stall-midstream"}, headers=headers)
    with anyio.fail_after(5):
        record = await anyio.to_thread.run_sync(model.wait_for_disconnect, "stalled-midstream", 5)
    assert record["tokens_sent"] == 4


async def test_total_deadline_ends_a_slow_but_steady_stream(client: httpx.AsyncClient) -> None:
    with mock_server(ttft=0.0, interval=0.05, tokens=100) as (_, upstream), relay_server(upstream, total_timeout=0.3) as url:
        _, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True, "model": "mock"})
    error = data(events[-1])
    assert events[-1].event == "error" and (error["code"], error["phase"]) == ("total_timeout", "total")
    assert 2 <= len(events) - 1 <= 10


async def test_unreachable_upstream_is_a_connect_error(client: httpx.AsyncClient, transport: str) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with relay_server(f"http://127.0.0.1:{port}/v1", transport=transport) as url:
        _, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True, "model": "m"})
        response = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "m"})
    error = data(events[-1])
    assert (error["code"], error["phase"]) == ("upstream_unreachable", "connect")
    assert response.status_code == 502


async def test_connect_timeout_when_the_upstream_never_accepts(client: httpx.AsyncClient, transport: str) -> None:
    # A listener that never accepts, with its backlog filled: further connects hang.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        with relay_server(f"http://127.0.0.1:{port}/v1", connect_timeout=0.3, transport=transport) as url:
            _, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True, "model": "m"})
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    error = data(events[-1])
    assert (error["type"], error["code"], error["phase"]) == ("timeout", "connect_timeout", "connect")


@under_every_server
@pytest.mark.parametrize("fault", ["stall-head", "stall-first"])
async def test_heartbeats_flow_while_waiting_for_the_first_token(fault: str, asgi_server: str, client: httpx.AsyncClient) -> None:
    """Whether the model server has not answered at all yet (stall-head) or answered without a token (stall-first)."""
    with mock_server(ttft=0.0) as (_, upstream), relay_server(upstream, server=asgi_server, heartbeat_interval=0.05, first_token_timeout=0.5) as url:
        with anyio.fail_after(5):
            async with client.stream("POST", url + "/v1/generate", json={"prompt": "x", "stream": True, "model": f"mock-fault-{fault}"}) as r:
                raw = b"".join([chunk async for chunk in r.aiter_raw()])
    assert raw.count(b": ping\n\n") >= 4
    assert raw.rstrip().endswith(b'"first_token_timeout","phase":"first_token","message":"no first token from the model server within 0.5 s"}')


async def test_a_defect_in_starting_a_generation_still_ends_the_stream(
    faulty: tuple[MockModel, str], client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Generation) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(Generation, "start", broken)
    _, url = faulty
    with anyio.fail_after(10):
        response, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True, "model": "mock"})
    assert response.status_code == 200
    assert [e.event for e in events].count("error") == 1 and events[-1].event == "error"
    assert data(events[-1])["code"] == "internal_error"
