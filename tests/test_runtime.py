"""Limits checked before anything starts: concurrency (429) and draining (503), both with Retry-After."""

from __future__ import annotations

import anyio
import httpx
import pytest

from app.errors import RequestError
from app.runtime import Runtime, connection_limit
from app.streaming.generation import Timeouts, Upstream
from app.streaming.respond import LiveRequests
from app.streaming.upstreams.http1 import Client
from tests.servers import mock_server, relay_server, relay_settings


async def test_over_the_concurrency_limit_is_429_with_retry_after(client: httpx.AsyncClient) -> None:
    settings = {"max_concurrent_requests": 1, "default_model": "mock", "heartbeat_interval": 0.05}
    with mock_server(ttft=30.0) as (model, upstream), relay_server(upstream, **settings) as url:
        with anyio.fail_after(10):
            async with client.stream("POST", url + "/v1/generate", json={"prompt": "x", "stream": True}) as held:
                # A heartbeat means the stream is in flight (it is counted before it starts). The
                # iterator stays referenced: once collected, httpx would close the held stream.
                chunks = held.aiter_raw()
                while b": ping" not in await anext(chunks):
                    pass
                refused = await client.post(url + "/v1/generate", json={"prompt": "x"})
                await chunks.aclose()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert model.requests == 1


async def test_a_draining_relay_refuses_new_requests_with_503() -> None:
    live = LiveRequests()
    client = Client()
    upstream = Upstream("u", "http://127.0.0.1:9/v1", client, Timeouts(1, 1, 1, None))
    runtime = Runtime(relay_settings("http://127.0.0.1:9/v1"), upstream, (), live, client)
    runtime.admit([("$.max_tokens", 10)])
    live.shut_down()
    with pytest.raises(RequestError) as refused:
        runtime.admit([("$.max_tokens", 10)])
    assert (refused.value.status, refused.value.code, refused.value.headers) == (503, "shutting_down", {"Retry-After": "1"})
    await client.aclose()


@pytest.mark.parametrize(("overrides", "open_files", "limit"), [
    ({"max_connections": 50}, 20_000, 50),
    # By default: what is left after an upstream socket per request in flight and 256 spare files.
    ({"max_concurrent_requests": 5_000}, 20_000, 20_000 - 5_000 - 256),
    ({"max_concurrent_requests": 100}, 1_024, 1_024 - 100 - 256),
    # A limit too low for max_concurrent_requests: half of what the spare files leave, one for each end of a stream.
    ({}, 20_000, (20_000 - 256) // 2),
    ({"max_concurrent_requests": 1_000}, 1_024, 384),
])
def test_the_connection_cap_fits_the_open_files_limit(overrides: dict[str, int], open_files: int, limit: int) -> None:
    assert connection_limit(relay_settings(None, **overrides), open_files) == limit
