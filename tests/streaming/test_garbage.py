"""A finished stream is freed by reference counting: it leaves no cycle for the collector.

The collector pauses the whole process while it runs, and every stream of every client waits
for it. A request that leaves reference cycles behind makes it run, and the more such
garbage piles up between runs the longer each pause (bench/RESULTS.md measured 10-15 ms).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests.servers import mock_server, relay_server
from tests.sse import chat, post_stream


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
