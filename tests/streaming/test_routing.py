"""Circuits and routes: consecutive failures open a circuit, a probe closes it; full or failing upstreams are refused up front."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from app.mock import MockModel
from app.streaming.routing import Circuit
from tests.servers import mock_server, relay_server


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_open_the_circuit_and_a_success_resets_the_count() -> None:
    circuit = Circuit(failures=3, cooldown=10, clock=Clock())
    for _ in range(2):
        circuit.failed()
    circuit.succeeded()
    circuit.failed()
    circuit.failed()
    assert (circuit.state, circuit.usable()) == ("closed", True)
    circuit.failed()
    assert (circuit.state, circuit.usable(), circuit.acquire()) == ("open", False, None)


def test_after_the_cooldown_one_probe_goes_through_and_decides() -> None:
    clock = Clock()
    circuit = Circuit(failures=1, cooldown=10, clock=clock)
    circuit.failed()
    assert circuit.retry_after() == 10
    clock.now += 10
    assert circuit.state == "half_open"
    assert circuit.acquire() is True  # the probe
    assert circuit.acquire() is None  # only one at a time
    circuit.failed()
    circuit.release(True)
    assert circuit.state == "open", "a failed probe opens the circuit again, for a new cooldown"
    clock.now += 10
    assert circuit.acquire() is True
    circuit.succeeded()
    circuit.release(True)
    assert (circuit.state, circuit.acquire()) == ("closed", False)


def test_a_probe_that_ends_without_a_verdict_lets_the_next_one_through() -> None:
    clock = Clock()
    circuit = Circuit(failures=1, cooldown=1, clock=clock)
    circuit.failed()
    clock.now += 1
    assert circuit.acquire() is True
    circuit.release(True)  # the client left before the first token
    assert circuit.acquire() is True


def test_the_concurrency_limit_counts_slots() -> None:
    circuit = Circuit(max_concurrency=2)
    assert circuit.acquire() is False and circuit.acquire() is False
    assert circuit.acquire() is None and circuit.full
    circuit.release(False)
    assert circuit.acquire() is False


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.001, tokens=4) as (model, url):
        yield model, url.removesuffix("/v1")


async def test_a_failing_upstream_is_skipped_once_its_circuit_opens(upstream: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    model, base = upstream
    upstreams = [{"name": "bad", "base_url": f"{base}/mock-fault-http-500/v1"}, {"name": "good", "base_url": base + "/v1"}]
    since = len(model.paths)
    with relay_server(None, upstreams=upstreams, circuit_failures=2, circuit_cooldown=60) as url:
        for _ in range(3):
            response = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "m"})
            assert response.status_code == 200
        ready = (await client.get(url + "/readyz")).json()
    asked = list(model.paths)[since:]
    assert asked.count("/mock-fault-http-500/v1/chat/completions") == 2 and asked.count("/v1/chat/completions") == 3
    assert ready["status"] == "ready"
    assert ready["upstreams"]["bad"] | {"in_flight": 0} == {
        "protocol": "openai", "state": "open", "in_flight": 0, "max_concurrency": None, "consecutive_failures": 2,
    }
    assert ready["upstreams"]["good"]["state"] == "closed"


async def test_when_every_upstream_is_open_the_request_is_refused_with_503(upstream: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    model, base = upstream
    upstreams = [{"name": "bad", "base_url": f"{base}/mock-fault-http-500/v1"}]
    with relay_server(None, upstreams=upstreams, circuit_failures=1, circuit_cooldown=30) as url:
        first = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "m"})
        since = len(model.paths)
        refused = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "m", "stream": True})
        ready = await client.get(url + "/readyz")
    assert first.status_code == 502
    assert refused.status_code == 503 and 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.json()["error"]["code"] == "upstream_unavailable"
    assert len(model.paths) == since, "nothing reached the model server"
    assert ready.status_code == 503 and ready.json()["upstreams"]["bad"]["state"] == "open"


async def _hold(client: httpx.AsyncClient, url: str, body: dict[str, Any], held: anyio.Event, release: anyio.Event) -> None:
    """Open a stream and keep it open (its first heartbeat shows it is in flight) until ``release``."""
    async with client.stream("POST", url + "/v1/generate", json=body) as response:
        chunks = response.aiter_raw()
        while b": ping" not in await anext(chunks):
            pass
        held.set()
        await release.wait()
        await chunks.aclose()


async def test_an_upstream_at_its_concurrency_limit_is_passed_over(upstream: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    model, base = upstream
    upstreams: list[dict[str, Any]] = [
        {"name": "small", "base_url": f"{base}/mock-fault-stall-first/v1", "max_concurrency": 1},
        {"name": "spare", "base_url": base + "/v1"},
    ]
    routes = {"both": ["small", "spare"], "only-small": ["small"]}
    with relay_server(None, upstreams=upstreams, routes=routes, heartbeat_interval=0.05) as url:
        with anyio.fail_after(10):
            held, release = anyio.Event(), anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_hold, client, url, {"prompt": "x", "model": "only-small", "stream": True}, held, release)
                await held.wait()
                since = len(model.paths)
                passed_over = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "both"})
                busy = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "only-small"})
                ready = (await client.get(url + "/readyz")).json()
                release.set()
    assert passed_over.status_code == 200 and list(model.paths)[since:] == ["/v1/chat/completions"]
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "upstream_busy"
    assert (ready["upstreams"]["small"]["in_flight"], ready["upstreams"]["small"]["max_concurrency"]) == (1, 1)
