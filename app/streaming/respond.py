"""One client request relayed from start to end: the tasks, and who cancels whom.

A streaming request runs on its own task (docs/architecture.md draws it):

- first ``Generation.start`` connects, sends the upstream request and waits for its head,
  while a second task, ``_watch_disconnect``, waits on ``receive()``: a client that leaves
  then closes the upstream at once and cancels everything;
- then ``DirectStream.run``: the upstream's bytes arrive by callback, with no task of their
  own, and are sent to the client from that callback; the request task waits on
  ``receive()`` for the client to leave, and takes over a send only when the client's
  buffer is full.

A ``stream: false`` request runs the same, with ``CollectedStream`` in place of the writer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio

from app.settings import Settings
from app.streaming.encoders import Collected, StreamEncoder
from app.streaming.events import Error
from app.streaming.generation import Generation, Route, Upstream
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
    upstream: Route | Upstream,
    request: GenerationRequest,
    encoder: StreamEncoder,
    settings: Settings,
    live: LiveRequests,
) -> None:
    """Relay a generation to the client as a stream; the response head must already be sent."""
    with anyio.CancelScope() as scope:
        stream = DirectStream(
            send,
            encoder,
            lag_limit=settings.slow_consumer_lag_bytes,
            heartbeat_interval=settings.heartbeat_interval,
            grace=settings.slow_consumer_grace,
            cancel=scope.cancel,
        )
        generation = Generation(upstream, request, stream)
        del request  # the generation drops it once sent
        stream.on_abort = generation.close
        with live.track(generation):
            stream.start_heartbeats()
            try:
                # While connecting, a second task watches for the client leaving; afterwards the
                # request task itself does, parked in receive() between sends (DirectStream.run).
                async with anyio.create_task_group() as connecting:
                    connecting.start_soon(_watch_disconnect, receive, generation, scope)
                    await generation.start()
                    connecting.cancel_scope.cancel()
                await stream.run(receive)
            finally:
                generation.close()
                stream.stop_heartbeats()


async def relay_collected(
    receive: Receive, upstream: Route | Upstream, request: GenerationRequest, live: LiveRequests
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
