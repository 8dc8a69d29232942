"""Direct streams: one generation relayed to one client, with backpressure and heartbeats.

``DirectStream`` is the generation's sink and the client's writer. Upstream events arrive
by callback (``push``), and at the end of each upstream read ``flush`` sends what arrived:

- If the writer task is idle, ``flush`` sends right there, in the upstream's callback, by
  driving the ``send()`` coroutine itself. uvicorn's ``send`` only suspends when the
  client's socket is full; then the suspended coroutine is handed to the writer task, which
  finishes it. So a client that keeps up costs no task switch per event.
- Otherwise events wait in ``_pending`` until the writer is free, and the encoder coalesces
  everything pending (app/streaming/message.py): one event per field of each choice, texts
  concatenated, a call's fragments concatenated (never two calls'), nothing dropped.

ASGI promises only that ``send()`` returns an awaitable: one that is not a coroutine (granian's)
cannot be driven by hand, so it is handed to the writer task as it is, to be awaited.

The response head waits (``head``) for the upstream's (``opened``), the first event or the first
heartbeat, whichever comes first; until then the request task does all the sending, and an
upstream's refusal (``Error.refused``) is answered by ``refuse`` in place of the stream.

When more than ``lag_limit`` bytes of text of any kind (content, reasoning, refusal, tool-call
arguments, logprobs; a part without text counts 1) are pending while a send waits for the
client (one large read to a client that keeps up is sent whole), the stream ends with a
``slow_consumer`` error, the upstream is closed, and the client gets ``grace`` seconds to
take the error before the writer is cancelled. Memory per stream is therefore bounded by
the lag limit plus the transport's write buffer, whatever the client does.

``CollectedStream`` is the sink of a ``stream: false`` request: it gathers the message, up to
a limit of text. Past it the answer is a ``response_too_large`` error, at once: the request task,
woken by it, closes the generation, and the client gets a 502.

The tasks of one request and who cancels whom are drawn in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import CoroutineType
from typing import Any, assert_never

from app.streaming.encoders import Collected, StreamEncoder
from app.streaming.events import (
    Delta,
    Error,
    Event,
    Finish,
    Logprobs,
    Part,
    Reasoning,
    RedactedReasoning,
    Refusal,
    Terminal,
    ToolCall,
    Usage,
)
from app.streaming.message import Merged, size
from app.types import Message, Receive, Send


def nothing() -> None:
    pass


class _Suspended:
    """A ``send()`` coroutine started in a callback that had to wait: awaiting this finishes it."""

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        waiting_on = self._waiting_on
        while True:
            try:
                value = yield waiting_on
            except BaseException as exc:  # cancellation of the awaiting task: pass it in
                try:
                    waiting_on = self._coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting_on = self._coro.send(value)
            except StopIteration:
                return


class DirectStream:
    __slots__ = (
        "_beat", "_busy", "_cancel", "_encoder", "_failure", "_grace", "_head", "_heartbeat", "_heartbeat_interval",
        "_lag", "_lag_limit", "_last_write", "_loop", "_opened", "_parked", "_pending", "_refuse", "_send", "_suspended",
        "_terminal", "_terminal_sent", "finished", "on_abort",
    )

    def __init__(
        self,
        send: Send,
        encoder: StreamEncoder,
        *,
        lag_limit: int,
        heartbeat_interval: float,
        grace: float,
        cancel: Callable[[], None],
        head: Message | None = None,
        refuse: Callable[[Error], Awaitable[None]] | None = None,
    ) -> None:
        self._send = send
        self._head = head  # the response head, held until the upstream's (or anything to send) arrives
        self._refuse = refuse  # answers an upstream's refusal in place of the stream, while the head is held
        self._opened = False
        self._encoder = encoder
        self._lag_limit = lag_limit
        self._heartbeat_interval = heartbeat_interval
        self._grace = grace
        self._cancel = cancel
        self._loop = asyncio.get_running_loop()
        self._pending: list[Part] = []
        self._lag = 0
        self._terminal: Terminal | None = None
        self._terminal_sent = False
        self._busy = False  # the request task is sending: callbacks must leave the sending to it
        self._suspended: Awaitable[None] | None = None  # a send begun in a callback, for the request task to finish
        self._failure: BaseException | None = None
        self._parked: asyncio.Timeout | None = None  # set while the request task waits on receive()
        self._beat = False
        self._last_write = self._loop.time()
        self._heartbeat: asyncio.TimerHandle | None = None
        self.on_abort: Callable[[], None] = nothing
        self.finished = False

    def push(self, event: Event) -> None:
        if self._terminal is not None:
            return
        if type(event) is Delta:  # a stream's usual kinds, told by their type first (attempt.py)
            self._lag += len(event.text)
        elif type(event) is ToolCall:
            self._lag += len(event.arguments) + len(event.id or "") + len(event.name or "") or 1  # size()'s, written out
        else:
            match event:
                case Delta() | ToolCall() | Reasoning() | Refusal() | RedactedReasoning() | Logprobs() | Usage():
                    self._lag += size(event)
                case Finish() | Error():
                    self._terminal = event
                    self._deliver_terminal()
                    return
                case _:
                    assert_never(event)
        self._pending.append(event)
        # Only a send that waits says the client is behind: a fast client takes even one large read whole, at the flush.
        if self._lag > self._lag_limit and (self._busy or self._suspended is not None):
            self._end_early(Error("relay_error", "slow_consumer", f"the client fell more than {self._lag_limit} bytes behind the model", "stream"))

    def flush(self) -> None:
        """Send what is pending, from the caller's callback, unless the request task is sending."""
        if self._pending and self._terminal is None:
            if self._can_send_inline():
                body = self._take()
                if body:
                    self._send_inline(body, more=True)
            elif self._head is not None:
                self._wake()  # the request task sends the head first

    def opened(self) -> None:
        self._opened = True
        if self._head is not None:
            self._wake()

    @property
    def terminal(self) -> Terminal | None:
        """The terminal event the stream ends (or ended) with, its own (``slow_consumer``) or the generation's."""
        return self._terminal

    def _can_send_inline(self) -> bool:
        return not self._busy and self._suspended is None and not self.finished and self._head is None

    def _deliver_terminal(self) -> None:
        assert self._terminal is not None
        if self._can_send_inline():
            self._terminal_sent = True
            self._send_inline(self._take() + self._encoder.terminal(self._terminal), more=False)
        else:
            self._wake()

    def _send_inline(self, body: bytes, *, more: bool) -> None:
        self._last_write = self._loop.time()
        try:
            sent = self._send({"type": "http.response.body", "body": body, "more_body": more})
            if type(sent) is not CoroutineType:
                self._suspended = sent  # only its owner knows how to drive it: the request task awaits it
            else:
                waiting_on = sent.send(None)
                self._suspended = _Suspended(sent, waiting_on)
        except StopIteration:
            return
        except BaseException as exc:  # the request task re-raises it
            self._failure = exc
        self._wake()

    def _take(self) -> bytes:
        if not self._pending:
            return b""
        events, self._pending = self._pending, []
        self._lag = 0
        if len(events) == 1:
            event = events[0]
            if type(event) is Delta and not event.choice:
                body = self._encoder.delta(event.text)
            else:
                body = self._encoder.encode(events)
        else:
            body = self._encoder.encode(events)
        if self._encoder.full:  # after this body, whoever is sending it: the terminal event follows it
            self._loop.call_soon(self._overflowed)
        return body

    def _overflowed(self) -> None:
        if self._terminal is None:  # the encoder says how it ends (its terminal, given any error)
            self._end_early(Error("relay_error", "response_too_large", "the encoder is full", "stream"))

    def _end_early(self, error: Error) -> None:
        self._terminal = error
        self._pending.clear()
        self._lag = 0
        self.on_abort()
        self._loop.call_later(self._grace, self._give_up)
        self._deliver_terminal()

    def _give_up(self) -> None:
        if not self.finished:
            self._cancel()

    def _wake(self) -> None:
        """Bring the request task out of ``receive()``: there is sending for it to do."""
        if self._parked is not None and self._parked.when() is None:
            self._parked.reschedule(-math.inf)

    async def run(self, receive: Receive) -> None:
        """Drive the stream to its end; between sends, wait on ``receive()`` for the client to leave.

        Sends normally happen in the upstream's callbacks (``flush``); this task takes over a send
        that had to wait for the client, and whatever arrives meanwhile. When the response is
        complete ASGI's ``receive()`` returns ``http.disconnect`` too, which ends the wait.
        """
        try:
            while True:
                if self._failure is not None:
                    raise self._failure
                if self._head is not None and (self._opened or self._pending or self._beat or self._terminal is not None):
                    head, self._head = self._head, None
                    self._busy = True
                    terminal = self._terminal
                    if self._refuse is not None and type(terminal) is Error and terminal.refused and not self._pending:
                        self._terminal_sent = True
                        await self._refuse(terminal)
                        return
                    await self._send(head)
                    self._busy = False
                elif self._suspended is not None:
                    suspended, self._suspended = self._suspended, None
                    self._busy = True
                    await suspended
                    self._busy = False
                elif self._terminal_sent:
                    return
                elif self._terminal is not None:
                    self._busy = self._terminal_sent = True
                    await self._send({"type": "http.response.body", "body": self._take() + self._encoder.terminal(self._terminal), "more_body": False})
                    return
                elif self._pending or self._beat:
                    self._busy = True
                    body = self._take() + (self._encoder.heartbeat if self._beat else b"")
                    self._beat = False
                    self._last_write = self._loop.time()
                    await self._send({"type": "http.response.body", "body": body, "more_body": True})
                    self._busy = False
                else:
                    # Parked for as long as a stream waits for its first token: asyncio's own
                    # timeout (a hundred bytes), not an anyio cancel scope (its two sets, and the
                    # task's state on the first one: 1.2 KB a stream). ``_wake`` expires it.
                    left = False
                    parked = self._parked = asyncio.timeout(None)
                    try:
                        async with parked:
                            while (await receive())["type"] != "http.disconnect":
                                pass
                            left = True
                    except TimeoutError:
                        if not parked.expired():
                            raise
                    finally:
                        self._parked = None
                    if left and not self._terminal_sent and self._suspended is None:
                        self.on_abort()  # the client left
                        return
        finally:
            self.finished = True
            self.stop_heartbeats()

    def start_heartbeats(self) -> None:
        self._arm_heartbeat(self._last_write + self._heartbeat_interval)

    def stop_heartbeats(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    def _arm_heartbeat(self, when: float) -> None:
        self._heartbeat = self._loop.call_at(when, self._on_heartbeat)

    def _on_heartbeat(self) -> None:
        due = self._last_write + self._heartbeat_interval
        now = self._loop.time()
        if now >= due and self._terminal is None:
            if self._can_send_inline():
                self._send_inline(self._encoder.heartbeat, more=True)
            else:
                self._beat = True
                self._wake()
            due = now + self._heartbeat_interval
        self._arm_heartbeat(due)


class CollectedStream:
    """Gathers a whole generation for a ``stream: false`` answer: at most ``limit`` characters of text (bytes, for ASCII).

    Every kind of text counts: content, reasoning, refusal, tool-call arguments, logprobs.
    """

    def __init__(self, limit: int) -> None:
        self._message = Merged()
        self._size = 0
        self._limit = limit
        self._done: asyncio.Future[Terminal | None] = asyncio.get_running_loop().create_future()

    def push(self, event: Event) -> None:
        match event:
            case Delta() | Reasoning() | RedactedReasoning() | ToolCall() | Refusal() | Logprobs():
                if self._done.done():  # cut off, or abandoned: the generation is being closed
                    return
                self._message.add(event)
                self._size += size(event)
                if self._size > self._limit:
                    self._message = Merged()
                    self._done.set_result(Error(
                        "relay_error", "response_too_large",
                        f"the answer passed the relay's limit of {self._limit} bytes of text for a non-streaming answer; ask for a stream instead",
                        "stream",
                    ))
            case Usage():
                self._message.add(event)
            case Finish() | Error():
                if not self._done.done():
                    self._done.set_result(event)
            case _:
                assert_never(event)

    def flush(self) -> None:
        pass

    def opened(self) -> None:
        pass

    @property
    def terminal(self) -> Terminal | None:
        """The answer's end, once known (``response_too_large`` is its own); ``None`` also once the client left."""
        return self._done.result() if self._done.done() else None

    def abandon(self) -> None:
        """The client left: ``result()`` returns ``None``."""
        if not self._done.done():
            self._done.set_result(None)

    async def result(self) -> Collected | None:
        terminal = await self._done
        return Collected(self._message, terminal) if terminal is not None else None
