from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio import ConnectionPool

from app.streaming.log_redis import RedisEventLog


@pytest.fixture
async def redis_log(redis_pool: ConnectionPool) -> AsyncIterator[RedisEventLog]:
    """A Redis event log on the session's Redis, its tailer on a task group of its own."""
    async with anyio.create_task_group() as tg:
        log = RedisEventLog(redis_pool, tg)
        try:
            yield log
        finally:
            await log.aclose()
