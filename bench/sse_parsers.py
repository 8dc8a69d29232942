"""The SSE parser on the hot path, against the Python alternatives: speed on typical token chunks, and conformance.

Parsers: ours (``SSEParser.feed``, and the adapter's path: the one-event fast path
``single_data`` before ``feed``), httpx-sse 0.4 (its ``SSELineDecoder`` and ``SSEDecoder``
behind an incremental UTF-8 decoder, as ``aiter_sse`` uses them), sseclient-py
(``SSEClient.events`` over the chunks) and aiohttp-sse-client (its ``EventSource`` reading an
aiohttp ``StreamReader`` fed the chunks: its parsing is written into that loop).
sse-starlette has no client side.

Workloads, each a stream of OpenAI ``chat.completion.chunk`` events of one token each, as
vLLM sends them: ``one-per-read`` (each read holds one whole event: a model server at 50
tokens/s), ``16-per-read`` (reads that hold 16 events: a client catching up) and
``split-97`` (reads of 97 bytes, so events straddle reads).

Speed is events per second of this process's CPU time (``time.thread_time``), the median of
``--runs`` rounds; the parsers take turns within each round, so all see the same machine.
Conformance is the share of tests/streaming/sse_cases.py (web-platform-tests, the WHATWG
spec's examples, Chromium's parser cases) each parser gets right, fed whole.

    .venv/bin/pip install -e '.[bench]'
    taskset -c 1 .venv/bin/python bench/sse_parsers.py [--events 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import exclusive  # noqa: E402

from app.streaming.sse import SSEParser  # noqa: E402
from tests.streaming.sse_cases import WPT  # noqa: E402

# One parser: chunks in, (type, data, last event id) of each event out.
Parse = Callable[[list[bytes]], list[tuple[str, str, str]]]


def ours(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    parser = SSEParser()
    return [(e.event, e.data, e.id) for chunk in chunks for e in parser.feed(chunk)]


def ours_fast_path(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    """What the OpenAI adapter does: the one-event fast path (data as bytes, decoded by msgspec later), else ``feed``."""
    parser = SSEParser()
    out: list[tuple[str, str, str]] = []
    for chunk in chunks:
        single = parser.single_data(chunk)
        if single is not None:
            out.append(("message", single.decode(), parser.last_event_id))
        else:
            out += [(e.event, e.data, e.id) for e in parser.feed_lines(chunk)]
    return out


def httpx_sse(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder

    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines, events = SSELineDecoder(), SSEDecoder()
    out = []
    for chunk in chunks:
        for line in lines.decode(text.decode(chunk)):
            sse = events.decode(line)
            if sse is not None:
                out.append((sse.event or "message", sse.data, sse.id))
    return out


def sseclient_py(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    import sseclient

    return [(e.event, e.data, e.id or "") for e in sseclient.SSEClient(iter(chunks)).events()]


def aiohttp_sse_client(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    return asyncio.run(_aiohttp_sse_client(chunks))


async def _aiohttp_sse_client(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.streams import StreamReader
    from aiohttp_sse_client.client import EventSource

    loop = asyncio.get_running_loop()
    reader = StreamReader(BaseProtocol(loop), 2**40, loop=loop)  # a limit it never reaches: the reader never pauses

    class Response:  # what EventSource.__anext__ reads: a status and the body's StreamReader
        status = 200
        content = reader

    source = EventSource("http://127.0.0.1/", session=object())  # type: ignore[arg-type]  # it opens no connection here
    source._response = Response()
    source._origin = "http://127.0.0.1"
    out = []
    for chunk in chunks:  # fed up front: what is timed is the line splitting and parsing
        reader.feed_data(chunk)
    reader.feed_eof()
    source.connect = _stop  # at the end of the body the client would reconnect: stop instead
    source._reconnection_time = _NoWait()
    try:
        async for event in source:
            out.append((event.type or "message", event.data, event.last_event_id))
    except _End:
        pass
    return out


class _End(Exception):
    pass


async def _stop(retry: int = 0) -> None:
    raise _End


class _NoWait:
    def __imul__(self, other: Any) -> _NoWait:
        return self

    def total_seconds(self) -> float:
        return 0.0


PARSERS: dict[str, Parse] = {
    "token-relay (feed)": ours,
    "token-relay (fast path, as the adapter)": ours_fast_path,
    "httpx-sse 0.4.3": httpx_sse,
    "sseclient-py 1.9.0": sseclient_py,
    "aiohttp-sse-client 0.2.1": aiohttp_sse_client,
}


def token_events(count: int) -> list[bytes]:
    words = "the quick brown fox jumps over a lazy dog caf\u00e9 na\u00efve \u6f22\u5b57".split()
    head = b'data: {"id":"chatcmpl-8f2a","object":"chat.completion.chunk","created":1718000000,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":'
    return [head + b'[{"index":0,"delta":{"content":" %b"},"logprobs":null,"finish_reason":null}]}\n\n' % words[i % len(words)].encode()
            for i in range(count)]


def workloads(count: int) -> dict[str, list[bytes]]:
    events = token_events(count)
    whole = b"".join(events)
    return {
        "one-per-read": events,
        "16-per-read": [b"".join(events[i:i + 16]) for i in range(0, count, 16)],
        "split-97": [whole[i:i + 97] for i in range(0, len(whole), 97)],
    }


def timed(parse: Parse, chunks: list[bytes]) -> tuple[float, int]:
    start = time.thread_time()
    events = parse(chunks)
    return time.thread_time() - start, len(events)


def conformance(parse: Parse) -> tuple[int, list[str]]:
    failed = []
    for name, (stream, expected, _) in WPT.items():
        try:
            got = parse([stream])
        except Exception as exc:  # a parser that raises fails the case
            got = [("raised", type(exc).__name__, "")]
        if got != expected:
            failed.append(name)
    return len(WPT) - len(failed), failed


def rounds(runs: int, loads: dict[str, list[bytes]]) -> Iterator[dict[tuple[str, str], float]]:
    for _ in range(runs):
        figures = {}
        for load, chunks in loads.items():
            expected = None
            for name, parse in PARSERS.items():
                seconds, events = timed(parse, chunks)
                expected = expected or events
                if events != expected:
                    raise SystemExit(f"{name} found {events} events in {load}, not {expected}")
                figures[(name, load)] = events / seconds
        yield figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lock-wait", type=float, default=900.0)
    args = parser.parse_args()
    logging.getLogger("aiohttp_sse_client").setLevel(logging.ERROR)  # it logs every bogus retry of the conformance cases
    loads = workloads(args.events)
    with exclusive(args.lock_wait):
        results = list(rounds(args.runs, loads))
    print(f"events/s of CPU time, median of {args.runs} rounds, {args.events} events per workload; x: against ours (feed), same rounds\n")
    print("| parser | " + " | ".join(loads) + " | conformance |")
    print("| --- |" + " --- |" * (len(loads) + 1))
    base = "token-relay (feed)"
    for name, parse in PARSERS.items():
        cells = []
        for load in loads:
            rate = statistics.median(r[(name, load)] for r in results)
            ratio = statistics.median(r[(name, load)] / r[(base, load)] for r in results)
            cells.append(f"{rate / 1000:,.0f}k ({ratio:.2f}x)")
        passed, failed = conformance(parse)
        shown = ", ".join(failed[:4]) + (", ..." if len(failed) > 4 else "")
        print(f"| {name} | " + " | ".join(cells) + f" | {passed}/{len(WPT)}" + (f" (fails {shown})" if failed else "") + " |")


if __name__ == "__main__":
    main()
