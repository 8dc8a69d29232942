"""The event log the lifespan opens: the memory log for one process, or with ``redis_url`` the Redis one.

The key limits' counters (app/ops/limits.py) live beside it: in memory, or in the same Redis.

With Redis, the lifespan owns one connection pool, checks at start-up that Redis answers (a
clear error and no start otherwise: a relay that cannot keep resumable streams is not ready to
take them), and runs the log's tailer and the peers' ticker (``app/streaming/peers_redis.py``)
on a task group of its own, closed before the pool.

A stream's keys live ``retention + lease`` seconds from the last renewal while it generates, and
``retention`` seconds after its end: a stream whose owner died goes with its keys too.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import AsyncIterator

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig

from app.ops.limits import Limiter, MemoryLimits, RedisLimits
from app.settings import Settings
from app.streaming.eventlog import EventLog
from app.streaming.log_memory import MemoryEventLog
from app.streaming.log_redis import RedisEventLog
from app.streaming.peers_redis import RedisPeers

logger = logging.getLogger("token_relay")

CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0  # longer than the tailer's block (1 s)
MAX_CONNECTIONS = 100  # per process; a command past them waits for one (up to SOCKET_TIMEOUT)
REDIS_VERSION = (7, 0)  # XADD with the 0-* ids


class RedisUnavailable(Exception):
    """Redis could not be reached at start-up, or is too old."""


@contextlib.asynccontextmanager
async def event_log(settings: Settings) -> AsyncIterator[tuple[EventLog, RedisPeers | None, Limiter]]:
    """The log, with Redis the peers, and the key limits. Raises ``RedisUnavailable``."""
    if settings.redis_url is None:
        memory = MemoryEventLog(settings.stream_log_budget_bytes)
        try:
            yield memory, None, MemoryLimits()
        finally:
            await memory.aclose()
        return
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=MAX_CONNECTIONS, timeout=SOCKET_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT,
        # With maintenance notifications on ("auto"), the pool skips its check that an idle connection was not
        # closed under it (a Redis restart): the next append would then fail on it, and an append is not retried.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    try:
        await _check(pool, settings.redis_url)
        async with anyio.create_task_group() as tg:
            log = RedisEventLog(
                pool, tg, lifetime=settings.stream_retention + settings.stream_lease, lease=settings.stream_lease,
                budget=settings.stream_log_budget_bytes,
            )
            peers = RedisPeers(log, tg, lease=settings.stream_lease, grace=settings.stream_grace, retention=settings.stream_retention)
            limits = RedisLimits(pool, tg)
            logger.info("resumable streams on Redis at %s", shown(settings.redis_url))
            try:
                yield log, peers, limits
            finally:
                limits.close()
                await peers.aclose()
                await log.aclose()
    finally:
        await pool.aclose()


async def _check(pool: BlockingConnectionPool, url: str) -> None:
    redis = Redis(connection_pool=pool)
    try:
        with anyio.fail_after(CONNECT_TIMEOUT + 1):
            server = await redis.info("server")
    except (RedisError, OSError) as exc:  # OSError: TimeoutError too
        raise _unavailable(f"cannot reach Redis at {shown(url)} (RELAY_REDIS_URL): {exc or type(exc).__name__}") from None
    finally:
        await redis.aclose()
    version = str(server.get("redis_version", "0"))
    if tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) < REDIS_VERSION:
        raise _unavailable(f"Redis at {shown(url)} (RELAY_REDIS_URL) is version {version}; the relay needs 7.0 or later")


def _unavailable(message: str) -> RedisUnavailable:
    logger.error("%s: not starting", message)  # one line first: the server's traceback of the start-up failure follows
    return RedisUnavailable(message)


def shown(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
