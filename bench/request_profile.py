"""Where one request's CPU goes: py-spy on a relay serving many short streamed chat completions.

The relay (``token-relay``, or ``token-relay+log`` with its access log on, as by default) runs on
the server core in front of bench/fastmock.py (no pacing); the load generator keeps
``--clients`` kept-alive connections busy with requests of ``--tokens`` tokens each, one after
the other (``--per-connection`` requests a connection, then a new one: the accept and the close
are in the profile too). py-spy samples the relay (``--native``: uvloop, httptools and msgspec
frames are seen), and each sample is put in the phase of the request it belongs to, by the
first frame of the stack that a rule of ``PHASES`` names. The table is the share of the relay's
samples per phase, and the upstream connections the model server saw (reconnects).

A profile under load: the shares are meaningful, the absolute times are not (py-spy's
``--native`` pauses the process to unwind it, and the machine may be shared).

    .venv/bin/python bench/request_profile.py --target token-relay+log --seconds 10
    .venv/bin/python bench/request_profile.py --target token-relay --clients 1000 --tokens 100 --interval 0.02 --per-connection 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from procs import BENCH, LOAD_CORE, PY, PYSPY, ROOT, http_get, running, start_mock, start_target, warm_up

# (phase, substrings of a frame: the first rule that matches any frame of a stack, leaf first, wins)
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # uvicorn computes the client address and the quoted path for the access log's call only
    ("access log", ("logging/__init__.py", "redaction.py", "access_log.py", "uvicorn/logging.py", "get_path_with_query_string", "get_client_addr")),
    ("upstream connect", ("_connect (app/streaming/upstreams/http1.py", "create_connection", "sock_connect")),
    ("upstream pool check", ("_unread (", "_pooled (", "_release (")),
    ("upstream request build", ("request (app/streaming/upstreams/http1.py", "build_request", "anthropic_request.py", "payload")),
    ("upstream response (parse, adapter)", ("upstreams/", "sse.py", "lines.py")),
    ("encode + write events", ("encoders.py", "relay.py", "message.py")),
    ("generation (phases, failover)", ("generation.py", "routing.py")),
    ("response head / respond", ("respond.py",)),
    ("route: body read, decode, validate", ("routes/", "schemas.py", "request.py")),
    ("auth + middleware", ("middleware.py", "cors", "hosts.py")),
    ("uvicorn: request head parse", ("on_url", "on_header", "on_headers_complete", "on_message_begin", "parse_url", "feed_data")),
    ("uvicorn: send (write)", ("httptools_impl.py:send", "send (uvicorn", "RequestResponseCycle.send", "write (")),
    ("uvicorn: request cycle", ("httptools_impl.py", "connections.py", "uvicorn/")),
    ("accept / close (event loop)", ("_on_accept", "accept", "connection_made", "connection_lost", "close", "shutdown")),
    ("asyncio / uvloop (tasks, timers)", ("asyncio/", "uvloop", "run_forever", "_run_once", "Handle._run", "TimerHandle")),
)


def phase_of(stack: list[str]) -> str:
    for name, needles in PHASES:
        for frame in reversed(stack):
            if any(needle in frame for needle in needles):
                return name
    return "other"


def summarise(raw: Path) -> dict[str, float]:
    """The share of samples per phase, from py-spy's raw (collapsed) output."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any("idle" in f and "(" not in f for f in frames[-1:]):
            continue
        n = int(count)
        total += n
        phase = phase_of(frames)
        counts[phase] = counts.get(phase, 0) + n
    return {phase: n / total * 100 for phase, n in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="token-relay+log", help="token-relay, token-relay+log, token-relay@REV[+log]")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--tokens", type=int, default=5, help="tokens per answer")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between the model server's tokens (0.02: the burst scenarios' pace)")
    p.add_argument("--per-connection", type=int, default=20, help="requests a kept-alive connection carries")
    p.add_argument("--seconds", type=float, default=10.0, help="py-spy's duration")
    p.add_argument("--rate", type=int, default=500)
    p.add_argument("--python-only", action="store_true", help="no --native: py-spy samples without pausing the relay")
    p.add_argument("--out", default=str(BENCH / "out" / "request-profile"), help="prefix of the outputs: .txt (raw), .svg, .json")
    cfg = p.parse_args(argv)
    (BENCH / "out").mkdir(exist_ok=True)
    out = Path(cfg.out)
    mock, mock_base = start_mock("fast", ttft=0.0, interval=cfg.interval)
    with running(mock):
        server, url = start_target(cfg.target, mock_base)
        assert server is not None
        with running(server):
            warm_up(url)
            before = json.loads(http_get(mock_base + "/mock/stats"))
            load = [PY, str(BENCH / "loadgen.py"), "--url", url, "--streams", str(cfg.clients), "--requests", "100000000"]
            load += ["--per-connection", str(cfg.per_connection), "--renew", "--max-tokens", str(cfg.tokens), "--ramp", "0.2"]
            load += ["--timeout", str(cfg.seconds + 3), "--pid", f"server={server.pid}", "--out", str(out.with_suffix(".loadgen.json"))]
            loadgen = subprocess.Popen(["taskset", "-c", LOAD_CORE, *load], cwd=ROOT)
            try:
                time.sleep(1.0)
                spy = ["taskset", "-c", LOAD_CORE, PYSPY, "record", "--pid", str(server.pid), "--rate", str(cfg.rate)]
                spy += ["--nonblocking"] if cfg.python_only else ["--native"]
                spy += ["--duration", str(int(cfg.seconds)), "--format", "raw", "--function", "--output", str(out.with_suffix(".txt"))]
                subprocess.run(spy, cwd=ROOT, check=False, timeout=cfg.seconds + 30, stdout=subprocess.DEVNULL)
            finally:
                loadgen.wait(timeout=cfg.seconds + 40)
            after = json.loads(http_get(mock_base + "/mock/stats"))
    run = json.loads(out.with_suffix(".loadgen.json").read_text())
    requests = after["requests"] - before["requests"]
    result = {
        "target": cfg.target,
        "requests": requests,
        "upstream_connections_opened": after["connections"] - before["connections"] - 1,  # less the stats request's own
        "client_connections_opened": run.get("connections"),
        "ends": run["ends"],
        "server_cpu_us_per_request": (run["samples"]["end"]["server"]["cpu"] - run["samples"]["start"]["server"]["cpu"]) / requests * 1e6 if requests else None,
        "phases_pct": summarise(out.with_suffix(".txt")),
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
