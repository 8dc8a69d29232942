"""``--workers 2`` against one worker: what a second core adds (code for a quiet machine with 3 cores or more).

Each relay (``python -m app serve --workers N``, with Redis and a stream secret, as several
workers need; one worker runs with the same settings) is pinned to ``--server-cores`` (one core
of them for one worker), and the model server (bench/fastmock.py), Redis and the load generator to
``--load-cores``, so that the load never competes with the workers. Two loads, each given
``--seconds`` after a warm-up:

- ``tokens``: ``--streams`` streams at a time of ``--tokens`` unpaced tokens each (the
  ``throughput`` shape): tokens/s delivered, and the workers' CPU per token;
- ``requests``: ``--clients`` keep-alive clients asking one short answer (``--short`` tokens)
  after another: requests/s, and the workers' CPU per request.

Each worker's CPU is read from /proc (the supervisor's children), so the figures say whether the
second worker was busy, and the ratio of 2 workers to 1 is printed per load. On a machine with
fewer than three cores the load shares a core with the workers: the script says so, and the
ratio it prints is then a lower bound, not a measurement of scaling.

    .venv/bin/python bench/scaling.py --server-cores 1,2 --load-cores 0,3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from procs import BENCH, PY, Proc, free_port, loadgen, running, start_mock, warm_up
from resumable import SECRET, start_redis


def start_relay(workers: int, cores: str, mock_base: str, redis_url: str) -> tuple[Proc, str]:
    port = free_port()
    env = {"RELAY_UPSTREAM": mock_base + "/v1", "RELAY_ACCESS_LOG": "false", "RELAY_LOG_LEVEL": "warning",
           "RELAY_REDIS_URL": redis_url, "RELAY_STREAM_SECRET": SECRET, "RELAY_MAX_TOKENS_LIMIT": "1000000"}
    proc = Proc(f"relay-{workers}w", [PY, "-m", "app", "serve", "--port", str(port), "--workers", str(workers)], cores, env)
    base = f"http://127.0.0.1:{port}"
    proc.wait_ready(base + "/healthz", timeout=30)
    return proc, base + "/v1/chat/completions"


def worker_pids(proc: Proc, workers: int) -> dict[str, int]:
    """The processes that serve: the supervisor's spawned children with several workers, the process itself with one."""
    if workers == 1:
        return {"worker0": proc.pid}
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    spawned = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return {f"worker{i}": pid for i, pid in enumerate(spawned)}


def measure(load: str, workers: int, cfg: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    mock, mock_base = start_mock("fast", ttft=0.0, interval=0.0, core=cfg.load_cores)
    cores = cfg.server_cores if workers > 1 else cfg.server_cores.split(",")[0]
    with running(mock):
        relay, url = start_relay(workers, cores, mock_base, redis_url)
        with running(relay):
            for _ in range(workers):
                warm_up(url)
            pids = worker_pids(relay, workers)
            start, end = 1.0, 1.0 + cfg.seconds
            options: dict[str, Any] = {"window": (start, end), "stop_at_window_end": True, "ramp": 0.5, "requests": 100_000_000}
            if load == "tokens":
                options |= {"streams": cfg.streams, "max_tokens": cfg.tokens}
            else:
                options |= {"streams": cfg.clients, "max_tokens": cfg.short, "per_connection": 1000}
            r = loadgen([url], timeout=end + 20, pids=pids, core=cfg.load_cores, **options)
    w = r["window"] or {}
    seconds = w.get("seconds") or float("nan")
    cpu = {name: w.get("cpu_s", {}).get(name) for name in pids}
    busy = sum(v for v in cpu.values() if v is not None)
    ended = sum(n for end, n in r["ends"].items() if end == "ok")
    return {
        "workers": workers, "load": load, "tokens_per_s": w.get("tokens_per_s"), "events_per_s": w.get("events_per_s"),
        "requests_per_s": ended / r["elapsed_s"] if load == "requests" and r["elapsed_s"] else None,
        "worker_cpu_pct": {name: v / seconds * 100 for name, v in cpu.items() if v is not None},
        "us_per_token": busy / w["tokens"] * 1e6 if w.get("tokens") else None,
        "us_per_request": busy / ended * 1e6 if load == "requests" and ended else None,
        "ends": r["ends"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    wide = (os.cpu_count() or 1) >= 3
    p.add_argument("--server-cores", default="1,2" if wide else "0,1", help="taskset list for the workers (one worker: its first core)")
    p.add_argument("--load-cores", default="0", help="taskset list for the model server, Redis and the load generator")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--streams", type=int, default=64, help="tokens: streams at a time")
    p.add_argument("--tokens", type=int, default=2000, help="tokens: per stream, unpaced")
    p.add_argument("--clients", type=int, default=64, help="requests: keep-alive clients")
    p.add_argument("--short", type=int, default=5, help="requests: tokens per answer")
    p.add_argument("--loads", default="tokens,requests")
    cfg = p.parse_args(argv)
    if set(cfg.server_cores.split(",")) & set(cfg.load_cores.split(",")):
        print(f"warning: the load (cores {cfg.load_cores}) shares a core with the workers (cores {cfg.server_cores}): "
              "the ratio below is a lower bound, not a measurement of scaling", flush=True)
    (BENCH / "out").mkdir(exist_ok=True)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    redis, redis_url = start_redis()
    with running(redis):
        for load in cfg.loads.split(","):
            results[load] = {workers: measure(load, workers, cfg, redis_url) for workers in (1, 2)}
            print(f"{load}: {json.dumps(results[load])}", flush=True)
    print("\n| load | 1 worker | 2 workers | ratio | CPU per unit, 1 / 2 workers |\n|---|---|---|---|---|")
    for load, by in results.items():
        key, unit = ("tokens_per_s", "us_per_token") if load == "tokens" else ("requests_per_s", "us_per_request")
        one, two = by[1][key], by[2][key]
        ratio = f"{two / one:.2f}x" if one and two else "-"
        print(f"| {load} ({key}) | {one or 0:,.0f} | {two or 0:,.0f} | {ratio} | {by[1][unit] or 0:.1f} / {by[2][unit] or 0:.1f} µs |")
    (BENCH / "out" / "scaling.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
