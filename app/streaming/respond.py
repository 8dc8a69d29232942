"""One client request relayed from start to end: the tasks, and who cancels whom.

A streaming request runs two tasks in one task group (docs/architecture.md draws them):

- the request's own task first runs ``Generation.start``, which connects and sends the
  upstream request and waits for its head, then ``DirectStream.run``, the client writer,
  until the terminal event. The upstream's bytes arrive by callback, with no task of their
  own, and are sent from the callback while the writer is idle (or not started yet);
- ``_watch_disconnect`` waits on ``receive()``; when the client goes it closes the upstream
  connection at once and cancels the group.

A ``stream: false`` request runs the same, with ``CollectedStream`` in place of the writer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio

from app.settings import Settings
from app.streaming.encoders import Collected, StreamEncoder
from app.streaming.events import Error
from app.streaming.generation import Generation, Upstream
from app.streaming.relay import CollectedStream, DirectStream
from app.streaming.request import GenerationRequest
from app.types import Receive, Send


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
        """End every generation, and any that starts from now on, with a ``shutting_down`` error."""
        self.closing = True
        for generation in list(self._generations):
            _shut_down(generation)


def _shut_down(generation: Generation) -> None:
    generation.fail(Error("relay_error", "shutting_down", "the relay is shutting down", generation.phase))


async def relay_stream(
    receive: Receive,
    send: Send,
    upstream: Upstream,
    request: GenerationRequest,
    encoder: StreamEncoder,
    settings: Settings,
    live: LiveRequests,
) -> None:
    """Relay a generation to the client as a stream; the response head must already be sent."""
    async with anyio.create_task_group() as tg:
        stream = DirectStream(
            send,
            encoder,
            lag_limit=settings.slow_consumer_lag_bytes,
            heartbeat_interval=settings.heartbeat_interval,
            grace=settings.slow_consumer_grace,
            cancel=tg.cancel_scope.cancel,
        )
        generation = Generation(upstream, request, stream)
        stream.on_abort = generation.close
        tg.start_soon(_watch_disconnect, receive, generation, tg.cancel_scope)
        with live.track(generation):
            stream.start_heartbeats()
            try:
                # Sequential: while start() waits for the upstream, events and heartbeats are sent inline.
                await generation.start()
                await stream.run()
            finally:
                generation.close()
        tg.cancel_scope.cancel()


async def relay_collected(
    receive: Receive, upstream: Upstream, request: GenerationRequest, live: LiveRequests
) -> Collected | None:
    """Run a generation to its end and return it whole; ``None`` if the client left first."""
    result: Collected | None = None
    async with anyio.create_task_group() as tg:
        sink = CollectedStream()
        generation = Generation(upstream, request, sink)
        tg.start_soon(_watch_disconnect, receive, generation, tg.cancel_scope)
        with live.track(generation):
            try:
                await generation.start()
                result = await sink.result()
            finally:
                generation.close()
        tg.cancel_scope.cancel()
    return result


async def _watch_disconnect(receive: Receive, generation: Generation, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    generation.close()
    scope.cancel()
