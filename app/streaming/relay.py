"""Direct streams: one generation relayed to one client, with backpressure and heartbeats.

``DirectStream`` is the generation's sink and the client's writer. Upstream events arrive
by callback (``push``) and wait in ``_pending`` only while the writer is blocked sending,
that is, while the client reads slower than the model writes. The writer then takes
everything pending at once and the encoder coalesces it into one event. When more than
``lag_limit`` bytes of text are waiting, the stream ends with a ``slow_consumer`` error,
the upstream is closed, and the client gets ``grace`` seconds to take the error before the
writer is cancelled. Memory per stream is therefore bounded by the lag limit plus the
transport's write buffer, whatever the client does.

``CollectedStream`` is the sink of a ``stream: false`` request: it gathers the text.

The tasks of one request and who cancels whom are drawn in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.streaming.encoders import Collected, StreamEncoder
from app.streaming.events import Delta, Error, Event, Finish, Terminal, Usage
from app.streaming.sse import HEARTBEAT
from app.types import Send


class DirectStream:
    def __init__(
        self,
        send: Send,
        encoder: StreamEncoder,
        *,
        lag_limit: int,
        heartbeat_interval: float,
        grace: float,
        cancel: Callable[[], None],
    ) -> None:
        self._send = send
        self._encoder = encoder
        self._lag_limit = lag_limit
        self._heartbeat_interval = heartbeat_interval
        self._grace = grace
        self._cancel = cancel
        self._loop = asyncio.get_running_loop()
        self._pending: list[Event] = []
        self._lag = 0
        self._terminal: Terminal | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._beat = False
        self._last_write = self._loop.time()
        self._heartbeat: asyncio.TimerHandle | None = None
        self.on_abort: Callable[[], None] = lambda: None
        self.finished = False

    def push(self, event: Event) -> None:
        if self._terminal is not None:
            return
        if type(event) is Delta:
            self._pending.append(event)
            self._lag += len(event.text)
            if self._lag > self._lag_limit:
                self._end_early(Error("relay_error", "slow_consumer", f"the client fell more than {self._lag_limit} bytes behind the model", "stream"))
                return
        elif type(event) is Usage:
            self._pending.append(event)
        else:
            assert isinstance(event, (Finish, Error))
            self._terminal = event
        self._wake()

    def _end_early(self, error: Error) -> None:
        self._terminal = error
        self._pending.clear()
        self._lag = 0
        self.on_abort()
        self._loop.call_later(self._grace, self._give_up)
        self._wake()

    def _give_up(self) -> None:
        if not self.finished:
            self._cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self) -> None:
        """Write events to the client until the terminal one has been sent."""
        loop = self._loop
        self._arm_heartbeat(self._last_write + self._heartbeat_interval)
        try:
            while True:
                if not self._pending and self._terminal is None and not self._beat:
                    self._waiter = loop.create_future()
                    await self._waiter
                    self._waiter = None
                body = b""
                if self._pending:
                    events, self._pending = self._pending, []
                    self._lag = 0
                    body = self._encoder.encode(events)
                terminal = self._terminal
                if terminal is not None:
                    await self._send({"type": "http.response.body", "body": body + self._encoder.terminal(terminal), "more_body": False})
                    return
                if self._beat:
                    self._beat = False
                    body += HEARTBEAT
                if body:
                    self._last_write = loop.time()
                    await self._send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            self.finished = True
            if self._heartbeat is not None:
                self._heartbeat.cancel()

    def _arm_heartbeat(self, when: float) -> None:
        self._heartbeat = self._loop.call_at(when, self._on_heartbeat)

    def _on_heartbeat(self) -> None:
        due = self._last_write + self._heartbeat_interval
        now = self._loop.time()
        if now >= due:
            self._beat = True
            self._wake()
            due = now + self._heartbeat_interval
        self._arm_heartbeat(due)


class CollectedStream:
    """Gathers a whole generation for a ``stream: false`` answer."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._usage: Usage | None = None
        self._done = asyncio.get_running_loop().create_future()

    def push(self, event: Event) -> None:
        if type(event) is Delta:
            self._parts.append(event.text)
        elif type(event) is Usage:
            self._usage = event
        elif not self._done.done():
            assert isinstance(event, (Finish, Error))
            self._done.set_result(event)

    async def result(self) -> Collected:
        terminal = await self._done
        return Collected("".join(self._parts), self._usage, terminal)
