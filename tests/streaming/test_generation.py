"""The orchestrator's own moments, which no real server can time: an end from outside while an attempt waits or fails over.

The upstream here is a client that answers the head at once and then sends only what the test
makes its handler see, so that a failover and a ``fail()`` can come in the same callback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import anyio

from app.streaming.events import Error, Event
from app.streaming.generation import Generation
from app.streaming.request import GenerationRequest
from app.streaming.routing import Route, Target, Timeouts, Upstream
from app.streaming.upstreams.http1 import Client, Exchange, Origin, ResponseHandler

SHUTDOWN = Error("relay_error", "shutting_down", "the relay is shutting down", "first_token")


class _Held(Exchange):
    def __init__(self) -> None:  # no connection behind it: close() has nothing to detach
        self.status = 200
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Scripted(Client):
    """Answers every request's head with 200 and a stream, and keeps its handler for the test to drive."""

    def __init__(self) -> None:
        super().__init__()
        self.handlers: list[ResponseHandler] = []
        self.exchanges: list[_Held] = []
        self.asked = asyncio.Event()

    async def request(
        self, origin: Origin, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes, handler: ResponseHandler, *,
        connect_timeout: float, head_timeout: float,
    ) -> Exchange:
        handler.on_response(200, [(b"content-type", b"text/event-stream")])
        self.handlers.append(handler)
        self.exchanges.append(_Held())
        self.asked.set()
        return self.exchanges[-1]


class _Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def push(self, event: Event) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass

    def opened(self) -> None:
        pass


def _upstream(name: str) -> tuple[Upstream, _Scripted]:
    client = _Scripted()
    return Upstream(name, f"http://127.0.0.1:9/{name}/v1", client, Timeouts(5, 5, 5, None)), client


async def _started(first: Upstream, second: Upstream, sink: _Sink) -> tuple[Generation, asyncio.Task[None]]:
    request = GenerationRequest("r1", "m", [{"role": "user", "content": "x"}])
    generation = Generation(Route((Target(first), Target(second))), request, sink)
    return generation, asyncio.get_running_loop().create_task(generation.start())


async def test_an_end_from_outside_while_a_failed_attempt_hands_over_ends_the_generation_there() -> None:
    """The first upstream failed over and the next is not asked yet: a shutdown then is the one terminal event, and no other upstream is asked."""
    (first, first_client), (second, second_client) = _upstream("a"), _upstream("b")
    sink = _Sink()
    generation, task = await _started(first, second, sink)
    with anyio.fail_after(5):
        await first_client.asked.wait()
        first_client.handlers[0].on_lost(OSError("reset"))  # before any event: a fault, so the attempt fails over
        generation.fail(SHUTDOWN)  # in the same callback, before the generation moves on
        await task
    assert sink.events == [SHUTDOWN]
    assert generation.done and generation.tokens == 0
    assert second_client.handlers == []
    assert first_client.exchanges[0].closed
    assert (first.circuit.in_flight, first.circuit.consecutive_failures) == (0, 1)


async def test_an_end_from_outside_while_an_attempt_waits_is_nobodys_fault() -> None:
    """A shutdown before the first event with a fallback left: the sink gets it, the attempt's upstream is not blamed, the next is not asked."""
    (first, first_client), (second, second_client) = _upstream("a"), _upstream("b")
    sink = _Sink()
    generation, task = await _started(first, second, sink)
    with anyio.fail_after(5):
        await first_client.asked.wait()
        generation.fail(SHUTDOWN)
        generation.fail(SHUTDOWN)  # a second end changes nothing
        await task
    assert sink.events == [SHUTDOWN]
    assert generation.done
    assert second_client.handlers == []
    assert first_client.exchanges[0].closed
    assert (first.circuit.in_flight, first.circuit.consecutive_failures) == (0, 0)


async def test_a_fault_before_the_first_event_goes_to_the_next_upstream_and_its_end_is_the_one_terminal() -> None:
    (first, first_client), (second, second_client) = _upstream("a"), _upstream("b")
    sink = _Sink()
    generation, task = await _started(first, second, sink)
    with anyio.fail_after(5):
        await first_client.asked.wait()
        first_client.handlers[0].on_lost(OSError("reset"))
        await second_client.asked.wait()
        await task  # the last upstream: start() returns at its head
        second_client.handlers[0].on_lost(OSError("reset"))
        generation.fail(SHUTDOWN)  # after the terminal event: nothing more
    assert [(type(event), event.code) for event in sink.events if isinstance(event, Error)] == [(Error, "upstream_disconnected")]
    assert len(sink.events) == 1 and generation.done
    assert (first.circuit.consecutive_failures, second.circuit.consecutive_failures) == (1, 1)
    assert first.circuit.in_flight == second.circuit.in_flight == 0
