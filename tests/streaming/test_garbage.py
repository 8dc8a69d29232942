"""A finished stream is freed by reference counting: it leaves no cycle for the collector.

The collector pauses the whole process while it runs, and every stream of every client waits
for it. A request that leaves reference cycles behind makes it run, and the more such
garbage piles up between runs the longer each pause (bench/RESULTS.md measured 10-15 ms).
"""

from __future__ import annotations

import gc
import socket
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests.hostile import Conn, HostileUpstream, Script
from tests.servers import mock_server, relay_server
from tests.sse import chat, data, post_stream


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """Collector off, and what it would free kept in ``gc.garbage`` for the test to look at."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def relay_objects(objects: list[object]) -> list[str]:
    return sorted({type(o).__qualname__ for o in objects if type(o).__module__.startswith("app.")})


async def test_requests_leave_no_cycles(relay_url: str, client: httpx.AsyncClient, saved_garbage: list[object]) -> None:
    with anyio.fail_after(10):
        for _ in range(3):
            _, events = await post_stream(client, relay_url + "/v1/chat/completions", chat("mock", stream=True))
            assert events[-1].data == "[DONE]"
            _, events = await post_stream(client, relay_url + "/v1/generate", {"prompt": "x", "stream": True, "model": "mock"})
            assert events[-1].event == "done"
            whole = await client.post(relay_url + "/v1/chat/completions", json=chat("mock", stream=False))
            assert whole.json()["choices"][0]["finish_reason"] == "stop"
    gc.collect()
    assert relay_objects(saved_garbage) == []


async def test_clients_that_leave_leave_no_cycles(client: httpx.AsyncClient, saved_garbage: list[object]) -> None:
    with mock_server(ttft=0.0, interval=0.01, tokens=1000) as (model, upstream), \
            relay_server(upstream, max_tokens_limit=1000, default_model="mock") as url:
        gc.collect()
        saved_garbage.clear()  # the servers' own start-up
        with anyio.fail_after(10):
            for left in range(1, 4):
                async with client.stream("POST", url + "/v1/generate", json={"prompt": "x", "stream": True, "max_tokens": 1000}) as response:
                    async for chunk in response.aiter_raw():
                        if b"event: token" in chunk:
                            break
                async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.05)) as impatient:
                    with pytest.raises(httpx.ReadTimeout):
                        await impatient.post(url + "/v1/generate", json={"prompt": "x", "max_tokens": 1000})
                await anyio.to_thread.run_sync(model.wait_for_disconnects, 2 * left, 5)
        gc.collect()
        assert relay_objects(saved_garbage) == []


async def _silent(conn: Conn) -> None:
    await conn.read_request()
    await conn.closed_by_peer()


def _answering(answer: bytes) -> Script:
    async def script(conn: Conn) -> None:
        while await conn.read_request():
            await conn.write(answer)

    return script


async def _hang_up(conn: Conn) -> None:
    await conn.read_request()


HEAD_FAILURES: dict[str, tuple[Script, str | None]] = {
    "timeout": (_silent, "first_token_timeout"),
    "malformed": (_answering(b"HTTP/1.1 2x0 Broken\r\n\r\n"), "upstream_malformed_http"),
    "too large": (_answering(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 1000 + b"\r\n"), "upstream_head_too_large"),
    "lost": (_hang_up, "upstream_disconnected"),
    "client leaves": (_silent, None),
}


@pytest.mark.parametrize("failure", sorted(HEAD_FAILURES))
async def test_a_head_that_fails_leaves_no_cycles(failure: str, client: httpx.AsyncClient, saved_garbage: list[object]) -> None:
    """What a head that failed would keep (its connection, its headers) must not wait for the collector."""
    script, code = HEAD_FAILURES[failure]
    over = threading.Semaphore(0)

    async def counted(conn: Conn) -> None:
        try:
            await script(conn)
        finally:
            over.release()

    upstream = HostileUpstream(counted)
    with upstream.serving() as base, relay_server(base, default_model="m", first_token_timeout=0.2, circuit_failures=100) as url:
        gc.collect()
        saved_garbage.clear()  # the servers' own start-up
        with anyio.fail_after(10):
            for _ in range(3):
                if code is None:
                    async with client.stream("POST", url + "/v1/generate", json={"prompt": "x", "stream": True}) as response:
                        assert response.status_code == 200
                else:
                    _, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True})
                    assert events[-1].event == "error" and data(events[-1])["code"] == code
                # Until the relay has hung up on its upstream connection, some of it is still in use.
                assert await anyio.to_thread.run_sync(over.acquire, True, 5)
        gc.collect()
        assert relay_objects(saved_garbage) == []


async def test_a_refused_connection_leaves_no_cycles(client: httpx.AsyncClient, saved_garbage: list[object]) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with relay_server(f"http://127.0.0.1:{port}/v1", default_model="m", circuit_failures=100) as url:
        gc.collect()
        saved_garbage.clear()
        with anyio.fail_after(10):
            for _ in range(3):
                _, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True})
                assert data(events[-1])["code"] == "upstream_unreachable"
        gc.collect()
        assert relay_objects(saved_garbage) == []
