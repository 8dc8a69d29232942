from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio import ConnectionPool

from app.streaming.log_redis import RedisEventLog
from tests.servers import TRANSPORTS


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """The HTTP client the relay reaches its upstreams with: a relay fixture that takes it runs its module's tests over each."""
    return str(request.param)


@pytest.fixture
async def redis_log(redis_pool: ConnectionPool) -> AsyncIterator[RedisEventLog]:
    """A Redis event log on the session's Redis, its tailer on a task group of its own."""
    async with anyio.create_task_group() as tg:
        log = RedisEventLog(redis_pool, tg)
        try:
            yield log
        finally:
            await log.aclose()
