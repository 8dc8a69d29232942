"""The ``resumable`` scenario of bench/run.py: resumable streams on the memory log and on Redis, side by side.

One ``redis-server`` (nothing persisted) runs on the load core (0) with the mock and the load
generator; the relay under test on core 1. For each log, memory then Redis, in one run:

- a ``Last-Event-ID`` replay, on the relay before the load: ``--replay-requests`` sequential
  reads of a finished stream resuming after its 20th event, timed from the request's write to
  its first event (p50, p99);
- ``--resumable-streams`` streams (1,000) created in one relay process and each read once as
  ``EventSource`` reads it, at 50 tokens/s (bench/fastmock.py), over a measured window: tokens/s
  delivered against the pace asked (keeps pace: 100 %), the relay's CPU per content event and
  per token, and Redis's own CPU; the table ends with the relay's CPU on Redis over that on
  memory, per event (the target: at most 1.5) and per token (a relay that falls behind
  coalesces more tokens into each event, which flatters neither figure alone);
- Redis only: ``DELETE`` on a second relay process of a stream the first one generates, timed
  from the ``DELETE``'s write to the mock's record of the upstream disconnect (the app mock,
  ``GET /mock/stats``; both clocks are the machine's monotonic one), p50 and p99.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from procs import LOAD_CORE, PY, SERVER_CORE, Proc, free_port, http_get, loadgen, median, running, start_mock
from run import _ms, _pct, fmt

REDIS_SERVER = "/usr/bin/redis-server"
SECRET = "bench-" + "s" * 32


def start_redis() -> tuple[Proc, str]:
    port = free_port()
    proc = Proc("redis", [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], LOAD_CORE)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_relay(name: str, upstream: str, redis_url: str | None, streams: int) -> tuple[Proc, str]:
    port = free_port()
    env = {"RELAY_UPSTREAM": upstream + "/v1", "RELAY_ACCESS_LOG": "false", "RELAY_LOG_LEVEL": "warning", "RELAY_STREAM_GRACE": "60", "RELAY_MODELS": "mock",
           "RELAY_MAX_STREAMS": str(streams + 100), "RELAY_MAX_TOKENS_LIMIT": "1000000"}
    if redis_url is not None:
        env |= {"RELAY_REDIS_URL": redis_url, "RELAY_STREAM_SECRET": SECRET}
    proc = Proc(name, [PY, "-m", "app", "serve", "--port", str(port)], SERVER_CORE, env)
    base = f"http://127.0.0.1:{port}"
    proc.wait_ready(base + "/healthz")
    return proc, base


def resumable(kind: str, cfg: argparse.Namespace, redis: tuple[Proc, str]) -> dict[str, Any]:
    redis_proc, redis_url = redis
    mock, mock_base = start_mock("fast", ttft=0.0, interval=cfg.interval)
    with running(mock):
        relay, base = start_relay(f"relay-{kind}", mock_base, redis_url if kind == "redis" else None, cfg.resumable_streams)
        with running(relay):
            replays = replay_first_event(base, cfg.replay_requests)
            start = cfg.ramp + cfg.settle
            end = start + cfg.window
            pids = {"server": relay.pid, "redis": redis_proc.pid}
            r = loadgen(
                [base + "/v1/streams"], resumable=True, timeout=end + cfg.steady_wait + 60, pids=pids, streams=cfg.resumable_streams,
                ramp=cfg.ramp, max_tokens=int((end + cfg.steady_wait + 30) / cfg.interval), window=(start, end),
                stop_at_window_end=True, steady_wait=cfg.steady_wait,
            )
    w = r["window"] or {}
    seconds = w.get("seconds") or float("nan")
    cpu = w.get("cpu_s", {})
    events = w.get("events") or 0
    tokens = w.get("tokens") or 0
    asked = cfg.resumable_streams / cfg.interval
    return {
        "tokens_per_s": w.get("tokens_per_s"),
        "keeps_pace_pct": w["tokens_per_s"] / asked * 100 if w.get("tokens_per_s") else None,
        "events_per_s": w.get("events_per_s"),
        "relay_cpu_pct": cpu["server"] / seconds * 100 if "server" in cpu else None,
        "relay_us_per_event": cpu["server"] / events * 1e6 if "server" in cpu and events else None,
        "relay_us_per_token": cpu["server"] / tokens * 1e6 if "server" in cpu and tokens else None,
        "redis_cpu_pct": cpu["redis"] / seconds * 100 if kind == "redis" and "redis" in cpu else None,
        "gap_p99_ms": _ms(r["gap_s"].get("p99")),
        "replay_p50_ms": _pct(replays, 50),
        "replay_p99_ms": _pct(replays, 99),
        "ends": r["ends"],
    }


def replay_first_event(base: str, requests: int) -> list[float]:
    """Milliseconds from a resuming GET's write to its first event, on one finished stream, sorted."""
    created = _post(base + "/v1/streams", {"prompt": "replay me", "max_tokens": 60})
    _first_event(created["events_url"], None, until=b"event: done")  # read it to its end: it has finished
    return sorted(_first_event(created["events_url"], "20") for _ in range(requests))


def delete_across(cfg: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    """DELETE on relay B of streams relay A generates: to the mock's record of the upstream's disconnect, in ms."""
    mock, mock_base = start_mock("app", ttft=0.0, interval=cfg.interval)
    with running(mock):
        a, a_base = start_relay("relay-a", mock_base, redis_url, 10)
        b, b_base = start_relay("relay-b", mock_base, redis_url, 10)
        with running(a, b):
            deleted: dict[str, float] = {}
            for n in range(cfg.delete_requests):
                request_id = f"del-{time.time_ns()}-{n}"
                created = _post(a_base + "/v1/streams", {"prompt": "x", "max_tokens": 100_000}, request_id)
                _first_event(created["events_url"], None)  # generating, and read on A
                cancel = b_base + "/v1/" + created["cancel_url"].split("/v1/", 1)[1]
                deleted[request_id] = time.monotonic()
                urllib.request.urlopen(urllib.request.Request(cancel, method="DELETE"), timeout=10).read()
            seen: dict[str, float] = {}
            deadline = time.monotonic() + 5
            while len(seen) < len(deleted) and time.monotonic() < deadline:
                stats = json.loads(http_get(mock_base + "/mock/stats"))
                seen = {d["request_id"]: d["at"] for d in stats["disconnects"] if d["request_id"] in deleted and "at" in d}
                time.sleep(0.1)
    latencies = sorted((seen[rid] - deleted[rid]) * 1e3 for rid in seen)
    return {"deleted": len(deleted), "propagated": len(seen), "p50_ms": _pct(latencies, 50), "p99_ms": _pct(latencies, 99),
            "max_ms": latencies[-1] if latencies else None}


def run_resumable(cfg: argparse.Namespace) -> dict[str, Any]:
    """Memory, then Redis, then DELETE across processes: one run of the scenario."""
    redis = start_redis()
    with running(redis[0]):
        result: dict[str, Any] = {kind: resumable(kind, cfg, redis) for kind in ("memory", "redis")}
        result["delete"] = delete_across(cfg, redis[1])
    for unit in ("event", "token"):
        memory, on_redis = result["memory"].get(f"relay_us_per_{unit}"), result["redis"].get(f"relay_us_per_{unit}")
        result[f"cpu_ratio_per_{unit}"] = on_redis / memory if memory and on_redis else None
    return result


def resumable_table(runs: list[dict[str, Any]], cfg: argparse.Namespace) -> str:
    rows = [
        ("keeps pace (tokens/s delivered / asked), %", "keeps_pace_pct", 1), ("content events/s", "events_per_s", 0),
        ("relay CPU, %", "relay_cpu_pct", 1), ("relay CPU per event, µs", "relay_us_per_event", 1),
        ("relay CPU per token, µs", "relay_us_per_token", 1), ("Redis CPU, %", "redis_cpu_pct", 1),
        ("gap between events p99, ms", "gap_p99_ms", 1), ("Last-Event-ID replay, first event p50, ms", "replay_p50_ms", 2),
        ("Last-Event-ID replay, first event p99, ms", "replay_p99_ms", 2),
    ]
    lines = ["| | memory log | Redis log |", "|---|---:|---:|"]
    for label, key, digits in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(median([run[kind].get(key) for run in runs]), digits) for kind in ("memory", "redis")) + " |")
    for unit, target in (("event", " (target ≤ 1.5)"), ("token", "")):
        ratio = median([run[f"cpu_ratio_per_{unit}"] for run in runs])
        lines.append(f"| relay CPU per {unit}, Redis / memory{target} | | {fmt(ratio, 2)} |")
    delete = [run["delete"] for run in runs]
    lines.append(f"| DELETE on B to A's upstream closed, p50 / p99 / max, ms ({delete[0]['deleted']} streams) | | "
                 f"{fmt(median([d['p50_ms'] for d in delete]), 1)} / {fmt(median([d['p99_ms'] for d in delete]), 1)} / "
                 f"{fmt(median([d['max_ms'] for d in delete]), 1)} |")
    return "\n".join(lines)


def _post(url: str, body: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    headers = {"content-type": "application/json", **({"x-request-id": request_id} if request_id else {})}
    with urllib.request.urlopen(urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers), timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def _first_event(url: str, last_event_id: str | None, until: bytes = b"\nid: ") -> float:
    """GET ``url`` on a new connection; milliseconds from the request's write until ``until`` arrives."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    head = f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
    if last_event_id is not None:
        head += f"Last-Event-ID: {last_event_id}\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        started = time.perf_counter()
        sock.sendall((head + "\r\n").encode())
        received = b""
        while until not in received:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"the stream ended before {until!r}: {received[-300:]!r}")
            received += chunk
        return (time.perf_counter() - started) * 1e3

