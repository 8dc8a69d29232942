from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import ConnectionPool

from app.mock import MockModel
from tests.redis_server import RedisServer, running_redis
from tests.servers import mock_server, relay_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def asgi_server(request: pytest.FixtureRequest) -> str:
    """The ASGI server the relay runs under: uvicorn, or each in turn for a test marked ``under_every_server``."""
    return getattr(request, "param", "uvicorn")


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[MockModel, str]]:
    """A fast mock model server shared by a module's tests."""
    with mock_server(ttft=0.0, interval=0.001, tokens=16) as served:
        yield served


@pytest.fixture(scope="module")
def relay_url(mock: tuple[MockModel, str], asgi_server: str) -> Iterator[str]:
    """The relay in front of the module's mock, with short timeouts."""
    with relay_server(mock[1], server=asgi_server, models=("mock", "mock-fault-http-500"), first_token_timeout=5, idle_timeout=5) as url:
        yield url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
        yield http


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real ``redis-server`` for the session, on a free loopback port; ``kill()``/``restart()`` it for faults.

    After the session, no key may be left in it.
    """
    with running_redis() as server:
        yield server
        with redis.Redis.from_url(server.url) as client:
            left = client.dbsize()
        assert left == 0, f"the tests left {left} keys in Redis"


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
async def redis_pool(redis_url: str) -> AsyncIterator[ConnectionPool]:
    """A pool on the session's Redis. Afterwards every key left must be on its way out (a time to live), then all go."""
    pool = ConnectionPool.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
    try:
        with keys_expire(redis_url):
            yield pool
    finally:
        await pool.aclose()


@contextlib.contextmanager
def keys_expire(redis_url: str) -> Iterator[None]:
    """After the block, every key left in Redis must have a time to live; then they all go, for the next test (even after a failure)."""
    try:
        yield
    finally:
        with redis.Redis.from_url(redis_url) as client:
            immortal = [key for key in client.scan_iter() if client.pttl(key) == -1]
            client.flushdb()
    assert not immortal, f"keys without a time to live: {immortal}"


@pytest.fixture(scope="module", params=["memory", "redis"])
def log_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The relay's settings for the memory log or the Redis one (on the session's Redis, its keys checked afterwards)."""
    if request.param == "memory":
        yield {}
        return
    redis_url: str = request.getfixturevalue("redis_url")
    with keys_expire(redis_url):
        yield {"redis_url": redis_url, "stream_secret": "r" * 32}


@pytest.fixture
def redis_env(redis_url: str) -> Iterator[dict[str, str]]:
    """The environment of relay processes on the session's Redis; afterwards the keys they left are checked and go."""
    with keys_expire(redis_url):
        yield {"RELAY_REDIS_URL": redis_url, "RELAY_STREAM_SECRET": "w" * 32}
