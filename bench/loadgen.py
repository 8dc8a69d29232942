"""The benchmark's load generator: the load tester's runner (app/loadtest) plus a measured window.

Opens ``--streams`` streaming chat completions (one connection each, ramped over ``--ramp``
seconds, or one after the other with ``--sequential``) through ``app.loadtest`` (raw asyncio
Protocols on uvloop, httptools, the relay's SSE parser), which records per stream the time
to the first content event (from the request write), every gap between content events, the
events and how the stream ended: ``ok``, ``error`` (in-band), ``malformed``, ``no_terminal``,
``http_status``, ``connect_error``, ``timeout``, ``closed`` (we closed it after
``--close-after`` content events) or ``cut`` (we closed it at the end of the window or run).

Tokens are counted as the mock's words inside each content event (every word but a stream's
first begins with a space), so a relay that coalesces deltas into fewer events is credited
with every token it delivered.

With ``--per-connection N`` the clients keep their connections alive: a stream that ended
cleanly (``ok``, its body read to the end) hands its connection to the next request, until the
connection has carried N. So ``--streams 1000 --requests 3000 --per-connection 3`` is 1,000
keep-alive clients making 3 requests each, one after the other; ``--renew`` starts a new client
(a new connection) in the place of each that is done, until ``--requests`` have been made.
With ``--tools`` the request declares two function tools, and the model server answers with
tool calls (bench/fastmock.py: their argument fragments, one chunk per token). The client reads
a chunk of argument fragments as it reads a content delta, its arguments for the text: one
decode and the same bookkeeping, so that it does the same work for each event of either shape
(a client that did less for a fragment would sleep more, and every write of the server under
test would then cost it a wake-up more often: nginx showed 1.10-1.14x for fragments so). Such a
stream counts as streaming from its first event, and the window's ``sse_events`` (every SSE
event the streams received in it, of any kind) is the figure to divide by.

With ``--resumable``, ``--url`` is a relay's ``/v1/streams``: ``--streams`` resumable streams are
created there first (``--max-tokens`` each), then each is read once, as ``EventSource`` reads it.

With ``--window START,END`` (seconds from the start of the run) the event rate and the gaps
are computed over that window only, and the CPU time and RSS of each ``--pid NAME=PID`` are
sampled from /proc at the start of the run and at both ends of the window.
``--stop-at-window-end`` closes every stream when the window ends.

The summary is JSON, printed or written to ``--out``; ``--per-stream`` adds one record per
stream (request id, close time...) for cancellation measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
import time
import urllib.request
from typing import Any, cast
from urllib.parse import urlsplit

import msgspec
import uvloop

from app.loadtest.cli import raise_fd_limit
from app.loadtest.histogram import Histogram
from app.loadtest.runner import LoadConfig, Runner
from app.loadtest.stream import CLOSED, OK, Stream
from app.loadtest.target import api_of, build_target
from app.streaming.sse import SSEEvent

CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = '{"model":"mock","messages":[{"role":"user","content":"Tell me a story about token relays."}],"stream":true,"max_tokens":%d}'
TOOLS = ',"tools":[{"type":"function","function":{"name":"write_story","parameters":{"type":"object","properties":{"text":{"type":"string"}}}}},' \
    '{"type":"function","function":{"name":"save_story","parameters":{"type":"object","properties":{"text":{"type":"string"}}}}}]}'


def proc_sample(pid: int) -> dict[str, float]:
    """CPU seconds (utime + stime, and each) and RSS in KiB of a process, from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    user, system = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14 and 15 of proc(5)
    rss = 0.0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss = float(line.split()[1])
                break
    return {"cpu": user + system, "user": user, "sys": system, "rss_kib": rss}


def cores_sample() -> dict[str, list[int]]:
    """Per-core jiffies from /proc/stat: busy (all but idle and iowait) and softirq."""
    cores: dict[str, list[int]] = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"cpu") and line[3:4].isdigit():
                name, *values = line.split()
                v = [int(x) for x in values]
                cores[name.decode()] = [sum(v) - v[3] - v[4], v[6], sum(v)]
    return cores


class KeptStream(Stream):
    """A stream of a keep-alive client (``--per-connection``): after a clean end, its connection carries the client's next request."""

    __slots__ = ("kept", "uses")

    def __init__(self, sink: LoadGen, *args: Any) -> None:
        super().__init__(sink, *args)
        self.uses = 1  # requests its client has made, this one included
        self.kept: asyncio.Transport | None = None  # the connection, left open for the client's next request

    def on_message_complete(self) -> None:
        sink = cast(LoadGen, self._sink)
        if self.outcome == OK and self._transport is not None and self.uses < sink.args.per_connection and self._parser.should_keep_alive():
            self.kept, self._transport = self._transport, None  # finish() leaves it open
        super().on_message_complete()


class _Function(msgspec.Struct, gc=False):
    arguments: str | None = None


class _Call(msgspec.Struct, gc=False):
    function: _Function | None = None


class _Delta(msgspec.Struct, gc=False):
    tool_calls: list[_Call] | None = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None


class _Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] = []


_decode_calls = msgspec.json.Decoder(_Chunk).decode


class CallStream(Stream):
    """A stream of ``--tools``: a chunk of argument fragments is read as a content delta is, its arguments for the text."""

    __slots__ = ()

    def _message(self, event: SSEEvent, now: float) -> None:
        data = event.data
        if data[:1] == "{" and not self.outcome:
            try:
                chunk = _decode_calls(data)
            except msgspec.DecodeError:
                chunk = None
            if chunk is not None and chunk.choices and (delta := chunk.choices[0].delta) is not None and delta.tool_calls:
                text = "".join(call.function.arguments or "" for call in delta.tool_calls if call.function is not None)
                if text:
                    self._content(text, now)
                    return
        super()._message(event, now)  # anything else (the role, the finish, the usage, an error), as the load tester reads it


class LoadGen(Runner):
    """The runner, with word-token counting, a measured window and /proc samples."""

    def __init__(self, args: argparse.Namespace) -> None:
        if args.resumable:
            targets = [build_target(url) for url in create_streams(args.url[0], args.streams, args.max_tokens)]
        else:
            body = BODY % args.max_tokens
            # Chat completions gets the body above (with tools, if asked); another API (Messages, Responses) its own default.
            targets = [
                build_target(url, body=(body[:-1] + TOOLS if args.tools else body).encode()) if api_of(urlsplit(url).path) == "openai-chat"
                else build_target(url, max_tokens=args.max_tokens, prompt="Tell me a story about token relays.")
                for url in args.url
            ]
        config = LoadConfig(
            streams=1 if args.sequential else args.streams, requests=args.requests or args.streams, ramp=0.0 if args.sequential else args.ramp,
            connect_timeout=args.connect_timeout, head_timeout=0, first_timeout=0, idle_timeout=0,
            close_after=args.close_after, id_prefix=args.id_prefix, keep_records=False, tick=0.5,
        )
        super().__init__(targets, config)
        self.args = args
        self.window = args.window or (0.0, float("inf"))
        self.win_start = 0.0
        self.win_end = float("inf")
        self.window_gaps = Histogram()
        self.events_window = 0
        self.tokens_window = 0
        self.words = 0
        self.streaming = 0  # streams that had their first content event
        self.window_opened: dict[str, Any] | None = None
        self.samples: dict[str, dict[str, dict[str, float]]] = {}
        self.core_samples: dict[str, dict[str, list[int]]] = {}
        self.pids: dict[str, int] = dict(args.pid)
        self.per_stream: list[dict[str, Any]] = []
        self.ttfts: list[float | None] = []
        # Keep-alive clients with requests left: each one's open connection (None: it needs a new one) and its requests so far.
        self.idle: list[tuple[asyncio.Transport | None, int]] = []
        self.clients = 0  # keep-alive clients started by the ramp
        self.connections = 0  # opened by keep-alive clients

    def make_stream(self, index: int) -> Stream:
        if self.args.per_connection <= 1 and not self.args.tools:
            return super().make_stream(index)
        target = self.targets[index % len(self.targets)]
        request_id = f"{self.config.id_prefix}-{index}" if self.config.id_prefix is not None else None
        kind = KeptStream if self.args.per_connection > 1 else CallStream
        return kind(self, target, index, request_id, self.config.close_after or -1)

    def _fill(self) -> None:
        """With ``--per-connection``: each slot is one client, and a client's next request goes on its own connection."""
        if self.args.per_connection <= 1:
            super()._fill()
            return
        while self.idle and not self.stopping and self.total is not None and self.started < self.total:
            self._next(*self.idle.pop())
        while self.clients < self._slots and not self.stopping and self.total is not None and self.started < self.total:
            self.clients += 1
            self._next(None, 0)

    def _next(self, transport: asyncio.Transport | None, uses: int) -> None:
        """A client's next request: on its kept connection if still open, else on a new one."""
        index = self.started
        self.started += 1
        stream = cast(KeptStream, self.make_stream(index))
        stream.uses = uses + 1
        self.live.add(stream)
        if transport is not None and not transport.is_closing():
            transport.set_protocol(stream)
            stream.connection_made(transport)
            return
        if transport is not None:
            transport.close()
        target = index % len(self.targets)
        assert self._tg is not None
        self.connections += 1
        task = self._tg.create_task(self._connect(stream, self.targets[target], self._ssl[target]))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    # the runner's sink, per content event: keep it cheap

    def on_content(self, stream: Stream, now: float, gap: float, text: str) -> None:
        self.content_events += 1
        tokens = text.count(" ")
        if gap < 0:
            tokens += 1
            self.streaming += 1
        elif self.win_start <= now < self.win_end:
            self.window_gaps.add(gap)
        self.words += tokens
        if self.win_start <= now < self.win_end:
            self.events_window += 1
            self.tokens_window += tokens

    def on_finish(self, stream: Stream) -> None:
        if isinstance(stream, KeptStream) and stream.uses < self.args.per_connection:
            self.idle.append((stream.kept, stream.uses))  # its client goes on (on a new connection if its own is gone)
        elif isinstance(stream, KeptStream) and self.args.renew:
            self.idle.append((None, 0))  # a new client in its place
        if self.args.per_stream:
            self.per_stream.append({
                "id": stream.request_id, "target": stream.index % len(self.targets), "status": stream.status, "end": stream.outcome,
                "error": stream.detail or None, "events": stream.events, "content": stream.content, "ttft": stream.ttft,
                "closed_at": stream.t_end if stream.outcome == CLOSED else None, "port": stream.local_port,
            })
        super().on_finish(stream)

    # the window

    def sample(self, label: str) -> None:
        taken: dict[str, dict[str, float]] = {}
        for name, pid in self.pids.items():
            try:
                taken[name] = proc_sample(pid)
            except OSError:
                pass
        taken["loadgen"] = proc_sample(os.getpid())
        taken["_at"] = {"t": time.monotonic() - self.t0, "events": float(self.events + sum(stream.events for stream in self.live))}
        self.samples[label] = taken
        self.core_samples[label] = cores_sample()

    async def measure(self) -> dict[str, Any]:
        args = self.args
        loop = asyncio.get_running_loop()
        self.t0 = time.monotonic()
        self.sample("start")
        handles = [loop.call_later(args.timeout, self.stop)]
        if args.window and args.steady_wait:
            # The window opens once every stream is streaming (or at the latest steady_wait later).
            self.win_start = self.win_end = float("inf")
            handles.append(loop.call_later(self.window[0], self._try_window, self.t0 + self.window[0] + args.steady_wait, handles))
        elif args.window:
            self.win_start, self.win_end = self.t0 + self.window[0], self.t0 + self.window[1]
            handles.append(loop.call_later(self.window[0], self.sample, "window_start"))
            handles.append(loop.call_later(self.window[1], self._window_end))
        try:
            await self.run()
        finally:
            for handle in handles:
                handle.cancel()
            for transport, _ in self.idle:
                if transport is not None:
                    transport.close()
            if "end" not in self.samples:
                self.sample("end")
        await asyncio.sleep(0.05)  # let the closes go out
        return self.summary()

    def _try_window(self, latest: float, handles: list[asyncio.TimerHandle]) -> None:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        streaming = sum(1 for stream in self.live if stream.events) + self.finished - self.failed if self.args.tools else self.streaming
        if streaming + self.failed < self.args.streams and now < latest and not self.stopping:
            handles.append(loop.call_later(0.05, self._try_window, latest, handles))
            return
        self.window_opened = {"at": now - self.t0, "streaming": streaming, "of": self.args.streams}
        self.win_start = now
        self.win_end = now + self.window[1] - self.window[0]
        self.sample("window_start")
        handles.append(loop.call_later(self.window[1] - self.window[0], self._window_end))

    def _window_end(self) -> None:
        self.sample("window_end")
        if self.args.stop_at_window_end:
            self.stop()

    def summary(self) -> dict[str, Any]:
        window = None
        if "window_start" in self.samples and "window_end" in self.samples:
            a, b = self.samples["window_start"], self.samples["window_end"]
            seconds = b["_at"]["t"] - a["_at"]["t"]
            window = {
                "seconds": seconds,
                "events": self.events_window,
                "events_per_s": self.events_window / seconds if seconds > 0 else None,
                "sse_events": b["_at"]["events"] - a["_at"]["events"],
                "opened": self.window_opened,
                "tokens": self.tokens_window,
                "tokens_per_s": self.tokens_window / seconds if seconds > 0 else None,
                "cpu_s": {name: b[name]["cpu"] - a[name]["cpu"] for name in a if name in b and name != "_at"},
                "sys_s": {name: b[name]["sys"] - a[name]["sys"] for name in a if name in b and name != "_at"},
                "rss_kib": {name: b[name]["rss_kib"] for name in b if name != "_at"},
                # Per core, over the window: busy and softirq seconds (softirq time is not in any process's utime/stime).
                "cores": {
                    core: {
                        "busy_s": (end[0] - begin[0]) / CLK_TCK,
                        "softirq_s": (end[1] - begin[1]) / CLK_TCK,
                        "total_s": (end[2] - begin[2]) / CLK_TCK,
                    }
                    for core, begin in self.core_samples["window_start"].items()
                    if (end := self.core_samples["window_end"].get(core)) is not None
                },
            }
        gaps = self.window_gaps.summary()
        gaps["p999"] = self.window_gaps.percentile(99.9)
        out: dict[str, Any] = {
            "url": self.args.url,
            "streams": self.args.streams,
            "elapsed_s": self.elapsed,
            "ends": {name: n for name, n in self.outcomes.items() if n},
            "heads_200": self.statuses.get(200, 0),
            "connect_errors": {"connect_error": self.outcomes["connect_error"]} if self.outcomes["connect_error"] else {},
            "failures": self.details,  # the first 20 failed streams: outcome, status, detail
            "content_events": self.content_events,
            "tokens": self.words,
            "events_all": self.events,
            "connections": self.connections,
            "ttft_s": self.ttft.summary(),
            "gap_s": gaps,
            "window": window,
            "samples": self.samples,
        }
        if self.args.per_stream:
            out["per_stream"] = sorted(self.per_stream, key=lambda s: int(s["id"].rpartition("-")[2]) if s["id"] else 0)
            out["ttft_list"] = [s["ttft"] for s in out["per_stream"]]
        return out


def create_streams(url: str, count: int, max_tokens: int) -> list[str]:
    """POST ``count`` resumable streams (16 at a time); their events URLs."""
    body = json.dumps({"prompt": "Tell me a story about token relays.", "max_tokens": max_tokens}).encode()

    def one(_: int) -> str:
        request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.loads(response.read())["events_url"])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(count)))


def _pid(text: str) -> tuple[str, int]:
    name, _, pid = text.rpartition("=")  # a target may have = in its name (token-relay+RELAY_METRICS=false)
    return name, int(pid)


def _window(text: str) -> tuple[float, float]:
    start, _, end = text.partition(",")
    return float(start), float(end)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, action="append", help="e.g. http://127.0.0.1:8000/v1/chat/completions; repeat to round-robin")
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--requests", type=int, default=0, help="streams in all, --streams at a time (default: --streams)")
    p.add_argument("--per-connection", type=int, default=1, help="requests each kept-alive connection carries, one after the other")
    p.add_argument("--renew", action="store_true", help="with --per-connection: a client done with its requests is followed by a new one")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which the streams are opened")
    p.add_argument("--sequential", action="store_true", help="one stream at a time (for TTFT at concurrency 1)")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--tools", action="store_true", help="declare tools: the model server answers with tool calls (see above)")
    p.add_argument("--resumable", action="store_true", help="--url is a relay's /v1/streams: create the streams, then read them")
    p.add_argument("--close-after", type=int, default=0, help="close each stream after this many content events")
    p.add_argument("--window", type=_window, help="START,END seconds from the start: the measured window")
    p.add_argument("--stop-at-window-end", action="store_true")
    p.add_argument(
        "--steady-wait",
        type=float,
        default=0.0,
        help="open the window (at START at the earliest) only once every stream has its first event, waiting at most this long",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="hard limit on the whole run, seconds")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--id-prefix", default=f"lg{os.getpid()}", help="X-Request-Id is PREFIX-<index>")
    p.add_argument("--pid", type=_pid, action="append", default=[], help="NAME=PID: sample its CPU and RSS")
    p.add_argument("--per-stream", action="store_true", help="include one record per stream")
    p.add_argument("--out", help="write the JSON summary here instead of stdout")
    args = p.parse_args(argv)
    if args.tools and args.per_connection > 1:
        p.error("--tools streams one request a connection")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit(args.streams + 64)
    summary = uvloop.run(LoadGen(args).measure())
    text = json.dumps(summary)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
