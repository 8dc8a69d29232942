"""A load generator for SSE token streams: raw asyncio Protocols on uvloop, httptools parsing.

Opens ``--streams`` streaming POSTs (one connection each, ramped over ``--ramp`` seconds, or
one after the other with ``--sequential``) and, per stream, records the time to the first
content event (from the request write), every gap between content events, the event count
and how the stream ended: ``done`` (``data: [DONE]`` or ``event: done``), ``error`` (an
in-band error event), ``incomplete`` (the body ended without either), ``http_<status>``,
``lost`` (the connection broke), ``closed`` (we closed it after ``--close-after`` events),
``cut`` (we closed it at the end of the window) or ``timeout``.

Events are split on a blank line (``\\n\\n``, or ``\\r\\n\\r\\n`` when the stream uses CRLF),
which is enough for our own servers. A content event is one carrying non-empty text: an
OpenAI chunk with ``"content":"..."`` or a native ``event: token``.

With ``--window START END`` (seconds from the start of the run) the event rate and the gaps
are computed over that window only, and the CPU time and RSS of each ``--pid NAME=PID`` are
sampled from /proc at the start of the run and at both ends of the window.
``--stop-at-window-end`` closes every stream when the window ends.

The summary is JSON, printed or written to ``--out``; ``--per-stream`` adds one record per
stream (request id, close time...) for cancellation measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from array import array
from typing import Any
from urllib.parse import urlsplit

import httptools
import uvloop

CLK_TCK = os.sysconf("SC_CLK_TCK")
DONE_DATA = b"data: [DONE]"
BODY = '{"model":"mock","messages":[{"role":"user","content":"Tell me a story about token relays."}],"stream":true,"max_tokens":%d}'


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


def percentile(values: Any, q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None for no values."""
    if not len(values):
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class Stream(asyncio.Protocol):
    __slots__ = (
        "buf",
        "closed_at",
        "content",
        "end",
        "error",
        "events",
        "gen",
        "index",
        "last",
        "opened_at",
        "parser",
        "request",
        "request_id",
        "sep",
        "status",
        "t_first",
        "t_head",
        "t_request",
        "tokens",
        "transport",
    )

    def __init__(self, gen: LoadGen, index: int) -> None:
        self.gen = gen
        self.index = index
        self.request_id = f"{gen.id_prefix}-{index}"
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.buf = b""
        self.sep = b""
        self.status = 0
        self.events = 0
        self.content = 0
        self.tokens = 0
        self.end = ""
        self.error = ""
        self.opened_at = time.monotonic()
        self.t_request = 0.0
        self.t_head = 0.0
        self.t_first = 0.0
        self.last = 0.0
        self.closed_at = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.t_request = time.monotonic()
        transport.write(self.gen.request_bytes(self.index, self.request_id))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.finish("lost")

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish("lost")

    # httptools callbacks

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.t_head = time.monotonic()

    def on_body(self, body: bytes) -> None:
        if self.end or self.status != 200:
            return
        now = time.monotonic()
        sep = self.sep
        if not sep:
            sep = self.sep = b"\r\n\r\n" if b"\r\n" in body else b"\n\n"
        if self.buf:
            body = self.buf + body
        if body.endswith(sep) and body.count(sep) == 1:  # the usual case: exactly one event
            self.buf = b""
            self.on_event(body, now)
            return
        parts = body.split(sep)
        self.buf = parts.pop()
        for event in parts:
            if self.end:
                return
            self.on_event(event, now)

    def on_event(self, event: bytes, now: float) -> None:
        if not event or event[0] == 58:  # ":" comment (heartbeat)
            return
        self.events += 1
        if (b'"content":"' in event and b'"content":""' not in event) or b"event: token" in event:
            self.content += 1
            gen = self.gen
            # Mock tokens are words, each after a space but the first: count the spaces that are
            # not the one after a field name ("data: ").
            tokens = event.count(b" ") - event.count(b": ")
            if self.content == 1:
                self.t_first = now
                tokens += 1
                gen.started += 1
            elif gen.win_start <= now < gen.win_end:
                gen.gaps.append(now - self.last)
            self.last = now
            self.tokens += tokens
            gen.events_total += 1
            if gen.win_start <= now < gen.win_end:
                gen.events_window += 1
                gen.tokens_window += tokens
            if self.content == gen.close_after:
                self.close("closed")
        elif event.startswith(DONE_DATA) or event.startswith(b"event: done") or b"\nevent: done" in event:
            self.finish("done")
        elif event.startswith(b'data: {"error"') or event.startswith(b"event: error") or b"\nevent: error" in event:
            self.error = event[:400].decode("utf-8", "replace")
            self.finish("error")

    def on_message_complete(self) -> None:
        self.finish("incomplete" if self.status == 200 else f"http_{self.status}")

    # ending

    def close(self, why: str) -> None:
        """Close the connection ourselves, recording when."""
        if self.end:
            return
        self.closed_at = time.monotonic()
        self.finish(why)

    def finish(self, why: str) -> None:
        if self.end:
            return
        self.end = why
        if self.transport is not None:
            self.transport.close()
        self.gen.stream_done(self)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "target": self.index % len(self.gen.targets),
            "status": self.status,
            "end": self.end,
            "error": self.error or None,
            "events": self.events,
            "content": self.content,
            "ttft": self.t_first - self.t_request if self.t_first else None,
            "closed_at": self.closed_at or None,
        }


class LoadGen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.id_prefix = args.id_prefix
        self.close_after = args.close_after or -1
        extra = "".join(f"{h}\r\n" for h in args.header)
        body = (BODY % args.max_tokens).encode()
        # Stream i goes to URL i % len(urls): with --sequential that interleaves the targets.
        self.targets: list[tuple[str, int, bytes]] = []
        for each in args.url:
            url = urlsplit(each)
            host, port = url.hostname or "127.0.0.1", url.port or 80
            head = (
                f"POST {url.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n{extra}X-Request-Id: "
            ).encode()
            self.targets.append((host, port, head))
        self._body = body
        self.streams: list[Stream] = []
        self.connect_errors: dict[str, int] = {}
        self.gaps = array("d")
        self.window = args.window or (0.0, float("inf"))
        self.t0 = 0.0
        self.win_start = 0.0
        self.win_end = float("inf")
        self.events_total = 0
        self.events_window = 0
        self.tokens_window = 0
        self.started = 0
        self.window_opened: dict[str, Any] | None = None
        self.open = 0
        self.finished = 0
        self.samples: dict[str, dict[str, dict[str, float]]] = {}
        self.core_samples: dict[str, dict[str, list[int]]] = {}
        self.pids: dict[str, int] = dict(args.pid)
        self.all_done: asyncio.Future[None] | None = None
        self.seq_done: asyncio.Future[None] | None = None

    def request_bytes(self, index: int, request_id: str) -> bytes:
        return self.targets[index % len(self.targets)][2] + request_id.encode() + b"\r\n\r\n" + self._body

    def stream_done(self, stream: Stream) -> None:
        self.finished += 1
        if self.seq_done is not None and not self.seq_done.done():
            self.seq_done.set_result(None)
        if self.finished >= self.args.streams and self.all_done is not None and not self.all_done.done():
            self.all_done.set_result(None)

    def sample(self, label: str) -> None:
        taken: dict[str, dict[str, float]] = {}
        for name, pid in self.pids.items():
            try:
                taken[name] = proc_sample(pid)
            except OSError:
                pass
        taken["loadgen"] = proc_sample(os.getpid())
        taken["_at"] = {"t": time.monotonic() - self.t0}
        self.samples[label] = taken
        self.core_samples[label] = cores_sample()

    async def open_stream(self, index: int) -> Stream | None:
        loop = asyncio.get_running_loop()
        stream = Stream(self, index)
        self.streams.append(stream)
        try:
            async with asyncio.timeout(self.args.connect_timeout):
                host, port, _ = self.targets[index % len(self.targets)]
                await loop.create_connection(lambda: stream, host, port)
        except (OSError, TimeoutError) as exc:
            key = type(exc).__name__
            self.connect_errors[key] = self.connect_errors.get(key, 0) + 1
            stream.finish("connect_error")
            return None
        return stream

    async def run(self) -> dict[str, Any]:
        args = self.args
        loop = asyncio.get_running_loop()
        self.all_done = loop.create_future()
        self.t0 = time.monotonic()
        self.win_start = self.t0 + self.window[0]
        self.win_end = self.t0 + self.window[1]
        self.sample("start")
        deadline = self.t0 + args.timeout
        handles: list[asyncio.TimerHandle] = []
        if args.window and args.steady_wait:
            # The window opens once every stream is streaming (or at the latest steady_wait later).
            self.win_start = self.win_end = float("inf")
            handles.append(loop.call_later(self.window[0], self._try_window, self.t0 + self.window[0] + args.steady_wait, handles))
        elif args.window:
            handles.append(loop.call_later(self.window[0], self.sample, "window_start"))
            handles.append(loop.call_later(self.window[1], self._window_end))
        tasks: set[asyncio.Task[Any]] = set()
        try:
            async with asyncio.timeout_at(loop.time() + args.timeout):
                if args.sequential:
                    for i in range(args.streams):
                        self.seq_done = loop.create_future()
                        if await self.open_stream(i) is not None:
                            await self.seq_done
                        if args.pause:
                            await asyncio.sleep(args.pause)
                else:
                    step = args.ramp / args.streams if args.streams else 0
                    for i in range(args.streams):
                        due = self.t0 + i * step
                        delay = due - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        task = asyncio.ensure_future(self.open_stream(i))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                if self.finished < args.streams:
                    await self.all_done
        except TimeoutError:
            pass
        finally:
            for handle in handles:
                handle.cancel()
            for task in list(tasks):
                task.cancel()
            for stream in self.streams:
                stream.finish("timeout")
            if "end" not in self.samples:
                self.sample("end")
        await asyncio.sleep(0.05)  # let the closes go out
        return self.summary(time.monotonic() - self.t0, deadline)

    def _try_window(self, latest: float, handles: list[asyncio.TimerHandle]) -> None:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        failed = sum(1 for s in self.streams if s.end and not s.content)
        if self.started + failed < self.args.streams and now < latest:
            handles.append(loop.call_later(0.05, self._try_window, latest, handles))
            return
        self.window_opened = {"at": now - self.t0, "streaming": self.started, "of": self.args.streams}
        self.win_start = now
        self.win_end = now + self.window[1] - self.window[0]
        self.sample("window_start")
        handles.append(loop.call_later(self.window[1] - self.window[0], self._window_end))

    def _window_end(self) -> None:
        self.sample("window_end")
        if self.args.stop_at_window_end:
            for stream in list(self.streams):
                stream.close("cut")

    def summary(self, elapsed: float, deadline: float) -> dict[str, Any]:
        ends: dict[str, int] = {}
        for stream in self.streams:
            ends[stream.end or "unfinished"] = ends.get(stream.end or "unfinished", 0) + 1
        ttfts = [s.t_first - s.t_request for s in self.streams if s.t_first]
        heads = sum(1 for s in self.streams if s.status == 200)
        window = None
        if "window_start" in self.samples and "window_end" in self.samples:
            a, b = self.samples["window_start"], self.samples["window_end"]
            seconds = b["_at"]["t"] - a["_at"]["t"]
            window = {
                "seconds": seconds,
                "events": self.events_window,
                "events_per_s": self.events_window / seconds if seconds > 0 else None,
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
        out: dict[str, Any] = {
            "url": self.args.url,
            "streams": self.args.streams,
            "elapsed_s": elapsed,
            "ends": ends,
            "heads_200": heads,
            "connect_errors": self.connect_errors,
            "content_events": self.events_total,
            "tokens": sum(s.tokens for s in self.streams),
            "events_all": sum(s.events for s in self.streams),
            "ttft_s": _dist(ttfts),
            "gap_s": _dist(self.gaps),
            "window": window,
            "samples": self.samples,
        }
        if self.args.per_stream:
            out["per_stream"] = [s.record() for s in self.streams]
            out["ttft_list"] = [s.t_first - s.t_request if s.t_first else None for s in self.streams]
        return out


def _dist(values: Any) -> dict[str, float | int | None]:
    if not len(values):
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "mean": statistics.fmean(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "p999": percentile(ordered, 99.9),
        "max": ordered[-1],
    }


def _pid(text: str) -> tuple[str, int]:
    name, _, pid = text.partition("=")
    return name, int(pid)


def _window(text: str) -> tuple[float, float]:
    start, _, end = text.partition(",")
    return float(start), float(end)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, action="append", help="e.g. http://127.0.0.1:8000/v1/chat/completions; repeat to round-robin")
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which the streams are opened")
    p.add_argument("--sequential", action="store_true", help="one stream at a time (for TTFT at concurrency 1)")
    p.add_argument("--pause", type=float, default=0.0, help="with --sequential: seconds between streams")
    p.add_argument("--max-tokens", type=int, default=100)
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
    p.add_argument("--header", action="append", default=[], help="extra request header, 'Name: value'")
    p.add_argument("--id-prefix", default=f"lg{os.getpid()}", help="X-Request-Id is PREFIX-<index>")
    p.add_argument("--pid", type=_pid, action="append", default=[], help="NAME=PID: sample its CPU and RSS")
    p.add_argument("--per-stream", action="store_true", help="include one record per stream")
    p.add_argument("--out", help="write the JSON summary here instead of stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = uvloop.run(LoadGen(args).run())
    text = json.dumps(summary)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
