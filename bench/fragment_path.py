"""In-process: what one upstream chunk costs on the relay's whole direct-stream path, text against tool-call fragments.

The path is the relay's own objects, as a stream has them once it flows: an upstream
connection of ``http1`` (its httptools parser fed the chunk as the model server frames it),
the OpenAI adapter, the ``Attempt`` between them and the sink, a ``DirectStream`` with its
``OpenAIChunks`` encoder, and a ``send()`` that takes the body as uvicorn's does when the
client keeps up (a coroutine that returns at once). Only the sockets are missing: a fake
transport takes the connection's writes.

A stream of text (one content delta a chunk, bench/fastmock.py's) and one of argument
fragments (bench/fastmock.py's tools mode: every fragment but a call's first on a call already
placed), or the ``--shapes`` asked for (``reasoning`` too), are fed ``--chunks`` chunks each, in
turns of ``--batch``, and each turn's ``time.process_time`` is kept: the figure is the median
per chunk of each, and its ratio to text. With ``--streams N`` each shape is N streams fed a
chunk each in turn, as a relay serves them: the CPU's caches then hold less of each.
``--profile`` runs cProfile over the same turns instead, one shape after the other.

    .venv/bin/python bench/fragment_path.py --chunks 200000 --streams 500
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.streaming.attempt import UNWATCHED, Attempt
from app.streaming.encoders import OpenAIChunks
from app.streaming.relay import DirectStream
from app.streaming.routing import Target, Timeouts, Upstream
from app.streaming.upstreams.http1 import Client, Origin, _Connection
from app.types import Message
from bench.fastmock import SSE_HEAD, CallStream, Stream
from bench.fastmock import mock_text as tokens_of

HEAD = b'data: {"id":"chatcmpl-mock-r1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":['
TOKENS = 512  # one stream's chunks repeat after this many (the fragments: two calls, then again)


class _Transport:
    """Takes the connection's writes; says nothing of a socket."""

    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None

    def abort(self) -> None:
        pass


def _reasoning(mock: SimpleNamespace, i: int) -> bytes:
    return b'{"index":0,"delta":{"reasoning_content":' + msgspec.json.encode(mock.tokens[i]) + b"}"


# Each shape's choice and delta for token ``i``: bench/fastmock.py's, and reasoning text as vLLM sends it.
SHAPES: dict[str, Callable[[Any, int], bytes]] = {"text": Stream.delta, "tool calls": CallStream.delta, "reasoning": _reasoning}


def chunks(shape: str) -> list[bytes]:
    """The model server's chunks of one stream, as bench/fastmock.py frames them (chunked encoding)."""
    tokens = tokens_of("a prompt for the bench", TOKENS)
    mock = SimpleNamespace(tokens=tokens, names=[b'"write_story"', b'"write_story"'], rid="r1")
    delta = SHAPES[shape]
    out = []
    for i in range(len(tokens)):
        data = HEAD + delta(mock, i) + b',"finish_reason":null}]}\n\n'
        out.append(b"%x\r\n%b\r\n" % (len(data), data))
    return out


class Path_:
    """One stream's relay path, from the upstream connection's ``data_received`` to ``send()``."""

    def __init__(self, shape: str) -> None:
        self.sent = 0

        async def send(message: Message) -> None:
            self.sent += len(message["body"])

        upstream = Upstream("bench", "http://127.0.0.1:9", Client(), Timeouts(5, 60, 60, None))
        stream = DirectStream(send, OpenAIChunks("chatcmpl-r1", "m", include_usage=True, created=0),
                              lag_limit=1 << 20, heartbeat_interval=3600, grace=5, cancel=lambda: None)
        attempt = Attempt(Target(upstream), stream, number=1, request_id="r1", probe=False, total_deadline=math.inf, watcher=UNWATCHED)
        handler = upstream.adapter.handler(attempt._emit, stream.flush)
        connection = _Connection(upstream.client, Origin("http://127.0.0.1:9"))  # type: ignore[arg-type]
        connection.connection_made(_Transport())  # type: ignore[arg-type]
        connection.start(b"", handler)
        connection.data_received(SSE_HEAD)
        self.feed: Callable[[bytes], None] = connection.data_received
        self.chunks = chunks(shape)
        self.at = 0
        role = HEAD + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
        self.feed(b"%x\r\n%b\r\n" % (len(role), role))  # the first event: it commits the attempt

    def turn(self, count: int) -> None:
        feed, chunks, at = self.feed, self.chunks, self.at
        for _ in range(count):
            feed(chunks[at])
            at = at + 1 if at + 1 < len(chunks) else 0
        self.at = at


class Streams:
    """``count`` streams of one shape, fed a chunk each in turn: what the CPU's caches no longer hold is then in the figure."""

    def __init__(self, shape: str, count: int) -> None:
        self.paths = [Path_(shape) for _ in range(count)]

    def turn(self, count: int) -> None:
        paths = self.paths
        if len(paths) == 1:
            paths[0].turn(count)
            return
        for i in range(count):
            paths[i % len(paths)].turn(1)


def measure(paths: dict[str, Streams], total: int, batch: int) -> dict[str, list[float]]:
    """Per shape, the CPU seconds per chunk of each turn, the shapes interleaved."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(total // batch):
        for name, path in paths.items():
            start = time.process_time()
            path.turn(batch)
            times[name].append((time.process_time() - start) / batch)
    return times


def profile(paths: dict[str, Streams], total: int, batch: int) -> None:
    for name, path in paths.items():
        profiler = cProfile.Profile()
        for _ in range(total // batch):
            profiler.enable()
            path.turn(batch)
            profiler.disable()
        print(f"\n=== {name}: {total} chunks")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    paths = {shape: Streams(shape, args.streams) for shape in args.shapes}
    for path in paths.values():
        path.turn(2 * TOKENS * args.streams)  # warm: every chunk once, past the calls' first fragments
    if not args.gc:
        gc.disable()
    if args.profile:
        profile(paths, args.chunks, args.batch)
        return {}
    times = measure(paths, args.chunks, args.batch)
    medians = {name: statistics.median(each) * 1e6 for name, each in times.items()}
    text = medians.get("text")
    return {name: {"us_per_chunk": round(us, 3), "vs_text": round(us / text, 3) if text else None} for name, us in medians.items()}


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=lambda text: text.split(","), default=["text", "tool calls"],
                   help=f"comma-separated, of: {', '.join(SHAPES)}")
    p.add_argument("--streams", type=int, default=1, help="streams of each shape, fed in turns of one chunk each")
    p.add_argument("--chunks", type=int, default=200_000, help="chunks of each shape")
    p.add_argument("--batch", type=int, default=2_000, help="chunks of one shape per turn")
    p.add_argument("--profile", action="store_true", help="cProfile each shape instead of timing it")
    p.add_argument("--no-gc", dest="gc", action="store_false", help="with the collector disabled")
    print(uvloop.run(main(p.parse_args())))


if __name__ == "__main__":
    cli()
