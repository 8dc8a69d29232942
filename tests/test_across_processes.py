"""Resumable streams across relay processes on one Redis: read, resume and cancel anywhere; an owner that dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from app.mock import MockModel, mock_text
from app.streaming.sse import SSEEvent
from tests.conftest import keys_expire
from tests.processes import Start, free_port, relay_processes
from tests.servers import mock_server
from tests.sse import data
from tests.streams import TERMINAL, create, read, text_of

LEASE = 1.5
GRACE = 1.0
# What docs/streams.md promises: a reader elsewhere learns its owner died within the lease and a third of it (its
# process's next tick); the rest is this machine's slack (several suites share its two cores).
OWNER_LOST_WITHIN = LEASE * 4 / 3 + 1.5


@pytest.fixture(scope="module")
def paced() -> Iterator[tuple[MockModel, str]]:
    """50 tokens/s: a stream of N tokens lasts N / 50 s."""
    with mock_server(ttft=0.0, interval=0.02, tokens=1000) as served:
        yield served


@pytest.fixture(scope="module")
def start(redis_url: str) -> Iterator[Start]:
    with keys_expire(redis_url), relay_processes() as start:
        yield start


def environment(redis_url: str, upstream: str, **extra: str) -> dict[str, str]:
    return {"RELAY_REDIS_URL": redis_url, "RELAY_STREAM_SECRET": "x" * 32, "RELAY_UPSTREAM": upstream, "RELAY_STREAM_GRACE": str(GRACE),
            "RELAY_STREAM_LEASE": str(LEASE), "RELAY_STREAM_RETENTION": "30", "RELAY_MAX_TOKENS_LIMIT": "5000", "RELAY_MODELS": "mock", **extra}


@pytest.fixture(scope="module")
def pair(start: Start, redis_url: str, paced: tuple[MockModel, str]) -> tuple[str, str]:
    """Relays A and B, two processes on the one Redis."""
    env = environment(redis_url, paced[1])
    return start(**env)[1], start(**env)[1]


def on(relay: str, url: str) -> str:
    """``url`` (which names the relay that made it) on ``relay`` instead, as a load balancer may send it."""
    return relay + "/v1/" + url.split("/v1/", 1)[1]


def code(event: SSEEvent) -> str:
    return str(data(event)["code"])


async def test_created_on_a_read_partly_on_b_resumed_on_a_gives_the_text_once_and_one_terminal_event(
    pair: tuple[str, str], client: httpx.AsyncClient,
) -> None:
    a, b = pair
    created = await create(client, a, {"prompt": "across", "max_tokens": 60})
    response, first = await read(client, on(b, created["events_url"]), stop_after=5)
    assert response.status_code == 200
    response, rest = await read(client, created["events_url"], last_event_id=first[-1].id)
    received = first + rest
    assert [int(event.id) for event in received] == list(range(1, len(received) + 1))
    assert text_of(received) == "".join(mock_text("across", 60))
    assert [event.event for event in received if event.event in TERMINAL] == ["done"]
    again, nothing = await read(client, on(b, created["events_url"]), last_event_id=received[-1].id)
    assert (again.status_code, nothing) == (204, [])


async def test_delete_on_b_closes_the_upstream_of_a_at_once_and_readers_on_both_get_cancelled(
    pair: tuple[str, str], paced: tuple[MockModel, str], client: httpx.AsyncClient,
) -> None:
    a, b = pair
    model = paced[0]
    created = await create(client, a, {"prompt": "x", "max_tokens": 1000}, headers={"x-request-id": "cancel-across"})
    results: dict[str, list[SSEEvent]] = {}

    async def reader(name: str, url: str) -> None:
        results[name] = (await read(client, url))[1]

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader, "a", created["events_url"])
        tg.start_soon(reader, "b", on(b, created["events_url"]))
        await anyio.sleep(0.3)  # both are reading tokens by now
        deleted_at = time.monotonic()
        response = await client.delete(on(b, created["cancel_url"]))
        assert response.json() == {"id": created["id"], "cancelled": True}
        record = await anyio.to_thread.run_sync(model.wait_for_disconnect, "cancel-across", 5)
    assert record["at"] - deleted_at < 0.5  # 100 ms at p99 on a quiet machine: bench/run.py --scenarios resumable
    for name in ("a", "b"):
        events = results[name]
        assert events[-1].event == "error" and code(events[-1]) == "cancelled", name
        assert [event.event for event in events].count("error") == 1
    assert (await client.delete(on(b, created["cancel_url"]))).json() == {"id": created["id"], "cancelled": False}


async def test_a_reader_on_b_alone_keeps_the_generation_on_a_alive_past_the_grace(
    pair: tuple[str, str], client: httpx.AsyncClient,
) -> None:
    a, b = pair
    created = await create(client, a, {"prompt": "long", "max_tokens": 150})  # 3 s, three times the grace
    _, events = await read(client, on(b, created["events_url"]))
    assert events[-1].event == "done"
    assert text_of(events) == "".join(mock_text("long", 150))
    # And the grace does run out when nobody reads anywhere.
    unread = await create(client, a, {"prompt": "unread", "max_tokens": 150})
    await anyio.sleep(GRACE + LEASE)
    _, events = await read(client, on(b, unread["events_url"]))
    assert events[-1].event == "error" and code(events[-1]) == "no_readers"


async def test_when_the_owner_is_killed_a_reader_elsewhere_gets_owner_lost_within_the_documented_time(
    start: Start, redis_url: str, paced: tuple[MockModel, str], pair: tuple[str, str], client: httpx.AsyncClient,
) -> None:
    _, b = pair
    doomed, a = start(**environment(redis_url, paced[1]))
    created = await create(client, a, {"prompt": "doomed", "max_tokens": 1000})
    killed_at = 0.0
    events: list[SSEEvent] = []

    async def reader() -> None:
        nonlocal events
        events = (await read(client, on(b, created["events_url"]), seconds=15))[1]

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.sleep(0.5)
        killed_at = time.monotonic()
        doomed.send_signal(signal.SIGKILL)
    elapsed = time.monotonic() - killed_at
    assert events[-1].event == "error" and code(events[-1]) == "owner_lost"
    assert events[-1].id  # it is in the log: a reader who comes back gets it too
    assert [event.event for event in events].count("error") == 1
    assert elapsed < OWNER_LOST_WITHIN
    tokens = [event for event in events if event.event == "token"]
    assert tokens and text_of(events) == "".join(mock_text("doomed", 1000))[: len(text_of(events))]


async def test_with_two_workers_on_redis_no_fresh_stream_answers_204(start: Start, redis_url: str, paced: tuple[MockModel, str]) -> None:
    _, url = start("--workers", "2", **environment(redis_url, paced[1], RELAY_STREAM_GRACE="10"))
    statuses: list[int] = []
    # A new connection per request, so that the kernel spreads them over both workers.
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as fresh:

        async def pair(n: int) -> None:
            created = await create(fresh, url, {"prompt": f"p{n}", "max_tokens": 3})
            response, events = await read(fresh, created["events_url"])
            statuses.append(response.status_code)
            assert text_of(events) == "".join(mock_text(f"p{n}", 3)) and events[-1].event == "done"

        with anyio.fail_after(60):
            for batch in range(10):
                async with anyio.create_task_group() as tg:
                    for n in range(10):
                        tg.start_soon(pair, batch * 10 + n)
    assert statuses == [200] * 100


def test_redis_down_at_start_up_is_one_clear_error_and_no_start(paced: tuple[MockModel, str]) -> None:
    down = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    env: dict[str, Any] = {"PATH": "", **environment(down, paced[1])}
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=30,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{down.rsplit(':', 1)[1]} (RELAY_REDIS_URL)" in output
    assert "hunter2" not in output
