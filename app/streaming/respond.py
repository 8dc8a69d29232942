"""One client request relayed from start to end: the tasks, and who cancels whom.

A streaming request (docs/architecture.md draws it):

- ``Generation.start`` runs on a task of its own: it connects (or takes a pooled
  connection), sends the upstream request and waits for its head;
- meanwhile, and to the end, the request task runs ``DirectStream.run``: it waits on
  ``receive()`` for the client to leave, and takes over a send only when the client's
  buffer is full. The upstream's bytes arrive by callback, with no task of their own, and
  are sent to the client from that callback.
- A client that leaves closes the upstream at once (``Generation.close``) and cancels the
  start task if it is still connecting. Otherwise only a client that stops reading is
  cancelled, after its ``slow_consumer`` grace (``DirectStream``).

A ``stream: false`` request runs the same, with ``CollectedStream`` in place of the writer:
the request task waits for the whole answer (or for the collected text to pass its limit),
then closes the upstream; a watcher task on ``receive()`` ends when the client leaves
(closing the upstream) or when the answer has been sent.

No request leaves reference cycles behind (tests/streaming/test_garbage.py): each is freed
by reference counting, so the garbage collector has nothing to pause the process for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Awaitable, Callable, Iterator

from app.ops.record import RequestRecord
from app.settings import Settings
from app.streaming.encoders import Collected, StreamEncoder
from app.streaming.events import Error
from app.streaming.generation import Generation, Route, Upstream
from app.streaming.relay import CollectedStream, DirectStream, nothing
from app.streaming.request import GenerationRequest
from app.types import Message, Receive, Send


class LiveRequests:
    """The generations in flight, so that a shutdown can end each with ``shutting_down``."""

    def __init__(self) -> None:
        self._generations: set[Generation] = set()
        self.closing = False

    def __len__(self) -> int:
        return len(self._generations)

    @contextlib.contextmanager
    def track(self, generation: Generation) -> Iterator[None]:
        self._generations.add(generation)
        if self.closing:
            _shut_down(generation)
        try:
            yield
        finally:
            self._generations.discard(generation)

    def shut_down(self) -> None:
        """End every generation, and any that starts from now on, with a ``shutting_down`` error (once: later calls do nothing)."""
        if self.closing:
            return
        self.closing = True
        for generation in list(self._generations):
            _shut_down(generation)


def _shut_down(generation: Generation) -> None:
    generation.fail(Error("relay_error", "shutting_down", "the relay is shutting down", generation.phase))


async def relay_stream(
    receive: Receive,
    send: Send,
    upstream: Route | Upstream,
    request: GenerationRequest,
    encoder: StreamEncoder,
    settings: Settings,
    live: LiveRequests,
    *,
    head: Message,
    refuse: Callable[[Error], Awaitable[None]],
    record: RequestRecord,
) -> None:
    """Relay a generation to the client as a stream, beginning with the response ``head``.

    The head waits for the upstream's (or the first event, or the first heartbeat): a model
    server that refuses the request itself (``Error.refused``) before it is sent is answered
    by ``refuse``, with the model server's status, in place of the stream. ``record`` learns
    what the generation did, however the stream ends.
    """
    # The stream cuts itself off ``grace`` after a slow consumer's error. asyncio's timeout, not an
    # anyio cancel scope: that would cost every stream its two sets and its task's anyio state (1 KB).
    cut = asyncio.timeout(None)
    try:
        async with cut:
            stream = DirectStream(
                send,
                encoder,
                lag_limit=settings.slow_consumer_lag_bytes,
                heartbeat_interval=settings.heartbeat_interval,
                grace=settings.slow_consumer_grace,
                cancel=functools.partial(cut.reschedule, -math.inf),
                head=head,
                refuse=refuse,
            )
            generation = Generation(upstream, request, stream)
            del request  # the generation drops it once sent
            generation.watcher = record  # its first event times the relay's own latency: a direct stream's record watches it (``watch``)
            # The stream ends early: the client left (the time to close the upstream is measured), or fell too far behind.
            stream.on_abort = record.watch(generation, stream)
            with live.track(generation):
                stream.start_heartbeats()
                # The generation connects and waits for the upstream's head on a task of its own,
                # while this one waits on receive() for the client to leave (DirectStream.run):
                # one plain task, and no cancellation at all unless the client leaves first.
                generation.start_soon()
                try:
                    await stream.run(receive)
                finally:
                    generation.close()
                    stream.stop_heartbeats()
                    stream.on_abort = nothing  # the stream and the generation hold each other: let refcounting free them
                    generation.cancel_start()  # if it is still connecting or waiting for the head
                    record.take(generation, stream.terminal)
    except TimeoutError:
        if not cut.expired():
            raise


async def relay_collected(
    receive: Receive, upstream: Route | Upstream, request: GenerationRequest, live: LiveRequests, *, limit: int, record: RequestRecord,
) -> Collected | None:
    """Run a generation to its end and return it whole; ``None`` if the client left first.

    Past ``limit`` characters of text the result is a ``response_too_large`` error, and the generation is closed.
    """
    sink = CollectedStream(limit)
    generation = Generation(upstream, request, sink)
    del request
    generation.watcher = record
    with live.track(generation):
        generation.start_soon()
        # Watches receive() until the client leaves, or until the answer is sent (ASGI's receive()
        # then says http.disconnect too): it ends by itself, nobody cancels it. While it waits, the
        # server's receive() holds its wake-up (uvicorn's, granian's and hypercorn's all do), so
        # it needs no other reference.
        asyncio.get_running_loop().create_task(_watch_collected(receive, generation, sink, record))
        try:
            return await sink.result()
        finally:
            generation.close()
            generation.cancel_start()
            record.take(generation, sink.terminal)


async def _watch_collected(
    receive: Receive, generation: Generation, sink: CollectedStream, record: RequestRecord,
) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    record.close(generation, sink.terminal)
    generation.cancel_start()
    sink.abandon()
