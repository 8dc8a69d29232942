"""The appends of one process to Redis: those that come while a batch is in flight go out together in the next.

Each generation flushes at its own time. With one script call per flush, every append would
cost a connection from the pool, a write, a read, and redis-py's machinery around them; with a
thousand streams the pool's hundred connections run out and the appends queue for them. So the
log hands its appends to the process's writer, a task that sends every append waiting, of any
number of streams, as one pipeline (``EVALSHA`` after ``EVALSHA``, packed by hiredis) in one
write on one connection from the pool, and reads their replies in order: one round trip per
batch whatever the number of streams in it. Up to ``FLIGHTS`` batches are in flight at once, on
as many connections, so that an append that comes while one is in flight does not wait for its
reply. A stream has at most one append in flight (its generation awaits each), so its appends
keep their order.

- A script Redis does not have (``NOSCRIPT``: it restarted) ran nothing: the writer loads it and
  sends that call again, first in the next batch.
- Any other error reply fails that call alone with ``LogUnavailable``.
- A lost connection or a timeout fails every call of the batch still without a reply with
  ``LogUnavailable``: they may or may not have been applied, and are not sent again (the caller
  decides). The next batch takes a connection from the pool, which checks it first.
- A call taken into a batch is sent even if its caller was cancelled meanwhile: as for any
  command cancelled in flight, it may take effect.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from app.streaming.eventlog import LogUnavailable

FLIGHTS = 4  # batches in flight at once, each on a connection of its own: an append waits for a free one, not for a reply


class _Call:
    __slots__ = ("command", "future", "script")

    def __init__(self, script: AsyncScript, command: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        self.script = script
        self.command = command
        self.future = future

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            error = LogUnavailable(f"the event log's Redis failed: {exc}")
            error.__cause__ = exc
            self.future.set_exception(error)


class Writer:
    """Script calls of one process, sent in batches on connections of ``pool``; it runs on ``task_group``."""

    def __init__(self, pool: ConnectionPool, task_group: anyio.abc.TaskGroup) -> None:
        self._pool = pool
        self._task_group = task_group
        self._queue: list[_Call] = []
        self._wanted = anyio.Event()
        self._scopes: list[anyio.CancelScope] = []
        self._started = False
        self._closed = False

    async def call(self, script: AsyncScript, keys: Sequence[bytes], args: Sequence[bytes | str | int]) -> Any:
        """The script's reply, sent with the next batch. Raises ``LogUnavailable``."""
        if self._closed:
            raise LogUnavailable("the event log is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(script, ("EVALSHA", script.sha, len(keys), *keys, *args), future))
        self._wanted.set()
        if not self._started:
            self._started = True
            for n in range(FLIGHTS):
                self._task_group.start_soon(self._run, name=f"event log writer {n}")
        return await future

    async def aclose(self) -> None:
        self._closed = True
        for scope in self._scopes:
            scope.cancel()
        self._fail(self._queue, RedisError("the event log is closed"))

    async def _run(self) -> None:
        if self._closed:
            return
        scope = anyio.CancelScope()
        self._scopes.append(scope)
        with scope:
            while True:
                if not self._queue:
                    await self._wanted.wait()
                    self._wanted = anyio.Event()
                    continue
                batch, self._queue = self._queue, []
                try:
                    await self._send(batch)
                except (RedisError, OSError) as exc:  # OSError: TimeoutError too
                    self._fail(batch, exc)
                except BaseException:  # closed: nobody is left waiting
                    self._fail(batch, RedisError("the event log is closed"))
                    raise

    async def _send(self, batch: list[_Call]) -> None:
        # From the pool, which checks that Redis did not close it meanwhile (a restart). redis-py leaves it untyped.
        connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            unknown = await self._exchange(connection, batch)
            for script in {id(call.script): call.script for call in unknown}.values():
                await connection.send_command("SCRIPT", "LOAD", script.script)
                await connection.read_response()
            self._queue[:0] = unknown
        except BaseException:
            with anyio.CancelScope(shield=True):  # replies may be left unread: the connection cannot serve another command
                await connection.disconnect()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._pool.release(connection)

    @staticmethod
    async def _exchange(connection: AbstractConnection, batch: list[_Call]) -> list[_Call]:
        """Send the batch, hand out its replies; returns the calls whose script Redis did not have."""
        await connection.send_packed_command(b"".join([pack_command(call.command) for call in batch]))
        unknown: list[_Call] = []
        # One deadline for the whole batch (the pool's socket timeout) rather than redis-py's own, one per reply.
        with anyio.fail_after(connection.socket_timeout):
            for call in batch:
                try:
                    reply = await connection.read_response(timeout=math.inf)  # no deadline of its own: the batch has one
                except NoScriptError:
                    unknown.append(call)
                except ResponseError as exc:
                    call.fail(exc)
                else:
                    if not call.future.done():
                        call.future.set_result(reply)
        return unknown

    @staticmethod
    def _fail(calls: list[_Call], exc: BaseException) -> None:
        for call in calls:
            call.fail(exc)

