"""Resumable streams with RELAY_REDIS_URL: what each process knows of a stream comes from Redis, and Redis lost and back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from redis.asyncio import Redis

from app.mock import MockModel, mock_text
from app.streaming.eventlog import NO_OWNER
from app.streaming.log_redis import RedisEventLog
from app.streaming.sse import SSEEvent
from tests.conftest import keys_expire
from tests.redis_server import RedisServer
from tests.servers import mock_server, relay_server
from tests.sse import data, read_events
from tests.streams import create, read, text_of

SECRET = "q" * 32


@pytest.fixture(scope="module")
def paced() -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.02, tokens=1000) as served:
        yield served


def _relay(upstream: str, redis_url: str, **overrides: Any) -> contextlib.AbstractContextManager[str]:
    return relay_server(upstream, redis_url=redis_url, stream_secret=SECRET, models=("mock",), max_tokens_limit=5000, **overrides)


async def test_a_stream_is_seen_on_every_process_only_by_the_key_that_created_it(
    paced: tuple[MockModel, str], redis_url: str, client: httpx.AsyncClient,
) -> None:
    keys = ("key-one-" + "1" * 24, "key-two-" + "2" * 24)
    with keys_expire(redis_url), _relay(paced[1], redis_url, api_keys=keys) as a, _relay(paced[1], redis_url, api_keys=keys) as b:
        one, two = ({"authorization": f"Bearer {key}"} for key in keys)
        created = await create(client, a, {"prompt": "mine", "max_tokens": 20}, headers=one)
        events_path = f"/v1/streams/{created['id']}/events"
        other, _ = await read(client, b + events_path, headers=two)
        assert other.status_code == 204
        assert (await client.delete(b + f"/v1/streams/{created['id']}", headers=two)).status_code == 404
        mine, events = await read(client, b + events_path, headers=one)
        assert mine.status_code == 200 and text_of(events) == "".join(mock_text("mine", 20))


async def test_redis_lost_ends_readers_with_log_unavailable_keeps_direct_streams_and_new_streams_work_once_it_is_back(
    paced: tuple[MockModel, str], redis_server: RedisServer, client: httpx.AsyncClient,
) -> None:
    model, upstream = paced
    with keys_expire(redis_server.url), _relay(upstream, redis_server.url) as url:
        assert (await client.get(url + "/readyz")).json()["redis"] == "up"
        created = await create(client, url, {"prompt": "x", "max_tokens": 1000}, headers={"x-request-id": "lost-redis"})
        results: dict[str, list[SSEEvent]] = {}

        async def resumable() -> None:
            results["resumable"] = (await read(client, created["events_url"]))[1]

        async def direct() -> None:
            body = {"prompt": "direct", "max_tokens": 100, "stream": True}
            async with client.stream("POST", url + "/v1/generate", json=body) as response:
                results["direct"] = await read_events(response)

        try:
            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(resumable)
                    tg.start_soon(direct)
                    await anyio.sleep(0.4)
                    redis_server.kill()
                    refused = await client.post(url + "/v1/streams", json={"prompt": "x", "max_tokens": 3})
                    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "log_unavailable")
                    assert "retry-after" in refused.headers
                    ready = await client.get(url + "/readyz")
                    assert (ready.status_code, ready.json()["status"], ready.json()["redis"]) == (200, "ready", "down")
                    assert (await client.delete(created["cancel_url"])).status_code == 503
                    _, unreachable = await read(client, created["events_url"])
                    assert [(e.event, data(e)["code"]) for e in unreachable] == [("error", "log_unavailable")]
                # The generation could not go on: its upstream is closed.
                await anyio.to_thread.run_sync(model.wait_for_disconnect, "lost-redis", 5)
        finally:
            if redis_server.process is None or redis_server.process.poll() is not None:
                redis_server.start()  # on the same port, empty
        lost = results["resumable"]
        assert lost[-1].event == "error" and data(lost[-1])["code"] == "log_unavailable"
        assert [e.event for e in lost].count("error") == 1
        assert results["direct"][-1].event == "done"
        assert "".join(data(e)["text"] for e in results["direct"] if e.event == "token") == "".join(mock_text("direct", 100))
        with anyio.fail_after(10):
            again = await create(client, url, {"prompt": "back", "max_tokens": 5})
            _, events = await read(client, again["events_url"])
        assert text_of(events) == "".join(mock_text("back", 5)) and events[-1].event == "done"
        assert (await client.get(url + "/readyz")).json()["redis"] == "up"


def _owner_key(stream_id: str) -> bytes:
    return b"relay:stream:{%s}:owner" % stream_id.encode()


@pytest.mark.parametrize(("lease", "fenced_by_another"), [(30.0, True), (0.6, False)], ids=["fenced-out", "lease-lost"])
async def test_an_owner_whose_lease_is_gone_stops_its_generation_and_the_stream_ends_once_with_owner_lost(
    paced: tuple[MockModel, str], redis_url: str, client: httpx.AsyncClient, lease: float, fenced_by_another: bool,
) -> None:
    """Fenced out: another process declared it lost, and its next append is refused. Lease lost: it sees so at its next renewal."""
    model, upstream = paced
    request_id = f"owner-gone-{fenced_by_another}"
    with keys_expire(redis_url), _relay(upstream, redis_url, stream_lease=lease) as url:
        created = await create(client, url, {"prompt": "x", "max_tokens": 1000}, headers={"x-request-id": request_id})
        await read(client, created["events_url"], stop_after=3)
        async with Redis.from_url(redis_url) as redis:
            await redis.delete(_owner_key(created["id"]))  # as if its lease had run out
            if fenced_by_another:
                async with anyio.create_task_group() as tg:
                    other = RedisEventLog(redis.connection_pool, tg)
                    await other.append_terminal(created["id"], "error", b'{"code":"owner_lost"}', owner=NO_OWNER)
                    await other.aclose()
        await anyio.to_thread.run_sync(model.wait_for_disconnect, request_id, 5)
        _, events = await read(client, created["events_url"])
        assert [e.event for e in events].count("error") == 1 and events[-1].event == "error"
        assert data(events[-1])["code"] == "owner_lost"


async def test_on_redis_each_process_keeps_to_its_budget_for_the_streams_it_generates(
    paced: tuple[MockModel, str], redis_url: str, client: httpx.AsyncClient,
) -> None:
    with keys_expire(redis_url), _relay(paced[1], redis_url, stream_log_budget_bytes=65_536, stream_log_max_bytes=65_536) as url:
        created = await create(client, url, {"prompt": "x", "max_tokens": 100})
        full = await client.post(url + "/v1/streams", json={"prompt": "x", "max_tokens": 3})
        assert (full.status_code, full.json()["error"]["code"]) == (503, "stream_log_full")
        _, events = await read(client, created["events_url"])
        assert events[-1].event == "done"
        with anyio.fail_after(5):  # once its owner has given it its retention, a finished stream no longer counts
            while (await client.post(url + "/v1/streams", json={"prompt": "x", "max_tokens": 3})).status_code != 201:  # noqa: ASYNC110
                await anyio.sleep(0.05)


async def test_a_finished_streams_keys_live_no_longer_than_its_retention_and_then_go(
    paced: tuple[MockModel, str], redis_url: str, client: httpx.AsyncClient,
) -> None:
    with keys_expire(redis_url), _relay(paced[1], redis_url, stream_retention=1.5, stream_lease=0.3) as url:
        created = await create(client, url, {"prompt": "x", "max_tokens": 5})
        _, events = await read(client, created["events_url"])
        assert events[-1].event == "done"
        async with Redis.from_url(redis_url) as redis:
            with anyio.fail_after(5):
                while not (keys := [key async for key in redis.scan_iter(f"relay:stream:{{{created['id']}}}*")]):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                await anyio.sleep(0.5)  # a renewal or two later
                assert all(ttl == -2 or 0 < ttl <= 1500 for ttl in [await redis.pttl(key) for key in keys])  # -2: gone already
                while await redis.exists(*keys):  # noqa: ASYNC110 (Redis's state)
                    await anyio.sleep(0.05)
            assert (await read(client, created["events_url"]))[0].status_code == 204


async def test_a_live_reader_takes_the_events_the_tailer_brings_with_no_read_round_trip_of_its_own(
    paced: tuple[MockModel, str], redis_url: str, client: httpx.AsyncClient,
) -> None:
    async with Redis.from_url(redis_url) as redis:
        with keys_expire(redis_url), _relay(paced[1], redis_url) as url:
            created = await create(client, url, {"prompt": "live", "max_tokens": 40})
            before = (await redis.info("commandstats")).get("cmdstat_xrange", {}).get("calls", 0)
            _, events = await read(client, created["events_url"])
            after = (await redis.info("commandstats")).get("cmdstat_xrange", {}).get("calls", 0)
    assert text_of(events) == "".join(mock_text("live", 40))
    assert after - before <= 2  # the first read, before the tailer watches the stream; then its XREAD alone
