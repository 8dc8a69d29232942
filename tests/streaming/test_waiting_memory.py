"""A stream waiting for its first token keeps nothing of the request it has sent upstream."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests.servers import bound_socket, relay_server

MARKER = "qzx-prompt-marker "


@pytest.fixture(scope="module")
def stalling_upstream() -> Iterator[str]:
    """A mock model server slow to its first token, in a process of its own (so its copies of the prompt are not this one's)."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    process = subprocess.Popen([sys.executable, "-m", "app", "mock", "--port", str(port), "--ttft", "60"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/mock/stats", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the mock did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _holders_of_the_prompt() -> list[str]:
    """The types of the objects of this process that lead to a string holding the prompt.

    The collector tracks only some containers (a dict of strings, or a Struct of scalars, is
    untracked), so the untracked containers an object refers to are searched too.
    """
    found = []
    for obj in gc.get_objects():
        pending, seen = list(gc.get_referents(obj)), set()
        while pending:
            referent = pending.pop()
            if isinstance(referent, str):
                if MARKER in referent and len(referent) > 2 * len(MARKER):
                    found.append(type(obj).__name__)
                    break
            elif not gc.is_tracked(referent) and id(referent) not in seen:
                seen.add(id(referent))
                pending.extend(gc.get_referents(referent))
    return found


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/generate", {"prompt": MARKER * 40, "stream": True, "model": "mock"}),
    ("/v1/chat/completions", {"model": "mock", "stream": True, "messages": [{"role": "user", "content": MARKER * 40}]}),
])
async def test_a_waiting_stream_holds_no_copy_of_the_prompt(stalling_upstream: str, path: str, body: dict) -> None:  # type: ignore[type-arg]
    content = json.dumps(body).encode()
    del body
    gc.collect()
    gc.freeze()  # out of the search: what this process held before the relay started (pytest keeps the parameters)
    try:
        await _wait_for_the_first_token(stalling_upstream, path, content)
    finally:
        gc.unfreeze()


async def _wait_for_the_first_token(stalling_upstream: str, path: str, content: bytes) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        before = (await client.get(stalling_upstream + "/mock/stats")).json()["requests"]
        with relay_server(stalling_upstream + "/v1", models=("mock",)) as relay_url, anyio.fail_after(10):
            async with client.stream("POST", relay_url + path, content=content, headers={"content-type": "application/json"}) as response:
                assert response.status_code == 200
                # Once the model server has the request, its first token is a minute away.
                while (await client.get(stalling_upstream + "/mock/stats")).json()["requests"] == before:  # noqa: ASYNC110 (another process)
                    await anyio.sleep(0.02)
                assert _holders_of_the_prompt() == []


async def test_a_waiting_stream_holds_no_finished_start_task(stalling_upstream: str) -> None:
    """The task that connected and sent the request is let go once it has returned: a finished task keeps its coroutine (~700 bytes)."""
    content = json.dumps({"model": "mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    async with httpx.AsyncClient(timeout=10) as client:
        before = (await client.get(stalling_upstream + "/mock/stats")).json()["requests"]
        with relay_server(stalling_upstream + "/v1", models=("mock",)) as relay_url, anyio.fail_after(10):
            async with client.stream("POST", relay_url + "/v1/chat/completions", content=content,
                                     headers={"content-type": "application/json"}) as response:
                assert response.status_code == 200  # the upstream's head has come: the start has returned
                while (await client.get(stalling_upstream + "/mock/stats")).json()["requests"] == before:  # noqa: ASYNC110 (another process)
                    await anyio.sleep(0.02)
                assert _start_tasks() == []


def _start_tasks() -> list[asyncio.Task[None]]:
    return [obj for obj in gc.get_objects() if isinstance(obj, asyncio.Task) and obj.get_coro().__qualname__ == "Generation.start"]
