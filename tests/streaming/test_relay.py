"""DirectStream with every shape of ``send()`` that ASGI allows: a coroutine, or any other awaitable.

The relay runs under real servers of each kind in the route and streaming tests (``under_every_server``);
these pin down the two paths themselves, with the sends seen one by one.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Awaitable, Callable

import anyio
import msgspec
import pytest

from app.streaming import relay
from app.streaming.encoders import NativeEvents
from app.streaming.events import Delta, Finish, Logprobs, Part, Reasoning, RedactedReasoning, Refusal, ToolCall, Usage
from app.streaming.relay import DirectStream
from app.streaming.sse import SSEParser
from app.types import Message


class Recorder:
    """The bodies ``send()`` was called with, in order, and whether any was sent after the last."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.ended = False

    def record(self, message: Message) -> None:
        assert not self.ended, "a body after the last one"
        self.bodies.append(message["body"])
        self.ended = not message["more_body"]


def _stream(send: Callable[[Message], Awaitable[None]]) -> DirectStream:
    return DirectStream(send, NativeEvents(), lag_limit=1_000_000, heartbeat_interval=60, grace=1, cancel=lambda: None)


async def _stay() -> Message:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def test_a_coroutine_send_is_driven_inline_in_the_upstream_callback() -> None:
    """The fast path: the client's bytes go out from flush() itself, with no task switch."""
    sent = Recorder()

    async def send(message: Message) -> None:
        sent.record(message)

    stream = _stream(send)
    stream.push(Delta("a"))
    stream.flush()
    assert sent.bodies == [b'id: 1\nevent: token\ndata: {"text":"a"}\n\n']


async def test_an_awaitable_that_is_not_a_coroutine_is_awaited_and_the_stream_goes_on() -> None:
    """As granian's send() returns: the call has begun the send; the request task must await what it returned."""
    sent = Recorder()
    loop = asyncio.get_running_loop()
    awaited: list[asyncio.Future[None]] = []

    def send(message: Message) -> asyncio.Future[None]:
        sent.record(message)
        future = loop.create_future()
        loop.call_later(0.01, future.set_result, None)  # a client that takes a moment
        awaited.append(future)
        return future

    stream = _stream(send)

    async def model() -> None:
        for text in "abc":
            stream.push(Delta(text))
            stream.flush()
            await anyio.sleep(0.005)
        stream.push(Finish("stop"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(model)
            await stream.run(_stay)
    events = SSEParser().feed(b"".join(sent.bodies))
    assert "".join(json.loads(event.data)["text"] for event in events if event.event == "token") == "abc"
    assert events[-1].event == "done" and sent.ended
    assert all(future.done() for future in awaited)


async def test_a_send_that_raises_when_called_fails_the_request_task_not_the_upstream_callback() -> None:
    """ASGI lets a server raise from send() for a closed connection; a non-coroutine send raises at the call."""

    def send(message: Message) -> Awaitable[None]:
        raise OSError("the client's connection is closed")

    stream = _stream(send)
    stream.push(Delta("a"))
    stream.flush()  # an upstream callback: it must not see the client's failure
    with anyio.fail_after(5), pytest.raises(OSError, match="closed"):
        await stream.run(_stay)


@pytest.mark.parametrize(("part", "count"), [
    (Delta("x" * 64), 20), (Reasoning("x" * 64), 20), (ToolCall(0, arguments="x" * 64), 20), (ToolCall(0, "i" * 32, "n" * 32), 20),
    (ToolCall(0), 1_001), (Refusal("x" * 64), 20),
    (RedactedReasoning("x" * 64), 20), (Logprobs((msgspec.Raw(b'{"token":"' + b"x" * 64 + b'"}'),)), 20),
    (Logprobs(()), 1_001), (Usage(1, 1, 2), 1_001),
], ids=lambda part: type(part).__name__ if not isinstance(part, int) else str(part))
async def test_every_kind_of_part_counts_toward_the_lag_limit(part: Part, count: int) -> None:
    """A client that stops reading while a model reasons, or writes a call's arguments, is as slow as one that stops during text;
    a part without text counts too, so that what piles up is bounded in number."""
    sent = Recorder()
    release = anyio.Event()

    async def send(message: Message) -> None:
        sent.record(message)
        if len(sent.bodies) == 1:
            await release.wait()  # the client stops reading after the first write

    stream = DirectStream(send, NativeEvents(), lag_limit=1_000, heartbeat_interval=60, grace=5, cancel=lambda: None)
    aborted: list[bool] = []
    stream.on_abort = lambda: aborted.append(True)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.run, _stay)
            stream.push(Delta("first"))
            stream.flush()
            for _ in range(count):  # past the limit of 1000
                stream.push(part)
                stream.flush()
            assert aborted == [True]
            release.set()
    events = SSEParser().feed(b"".join(sent.bodies))
    assert events[-1].event == "error" and json.loads(events[-1].data)["code"] == "slow_consumer"


async def test_a_stream_parked_in_receive_holds_under_1000_bytes() -> None:
    """A stream waiting minutes for its first token is parked all that time: what parking holds, every waiting stream holds.

    Counted: what the relay's writer allocates (from a line of app/streaming/relay.py, however deep), not the task or the test's.
    """
    count = 200
    loop = asyncio.get_running_loop()
    forever, all_waiting = asyncio.Event(), asyncio.Event()
    waiting = 0

    async def send(message: Message) -> None:
        pass

    async def receive() -> Message:
        nonlocal waiting
        waiting += 1
        if waiting == count:
            all_waiting.set()
        await forever.wait()
        return {"type": "http.disconnect"}

    streams = [_stream(send) for _ in range(count)]
    tracemalloc.start(8)
    try:
        before = tracemalloc.take_snapshot()
        tasks = [loop.create_task(stream.run(receive)) for stream in streams]
        with anyio.fail_after(5):
            await all_waiting.wait()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    relays = [tracemalloc.Filter(True, relay.__file__, all_frames=True)]
    grown = sum(stat.size_diff for stat in after.filter_traces(relays).compare_to(before.filter_traces(relays), "filename"))
    assert grown / count < 1000, grown / count  # 820 B; parked in an anyio cancel scope (its sets, the task's anyio state), 1460 B
