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
