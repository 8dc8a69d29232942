"""How fast the load tester reads: events per CPU-second of its own process, on one core.

bench/fastmock.py serves on core 1; ``token-relay loadtest`` runs on core 0 and reports its
own CPU time (``cpu_s``) in its JSON. Two shapes of load:

- ``unpaced``: 50 streams at a time, 5,000 tokens each written as fast as the socket takes
  them: many events per read, the parser's own speed.
- ``paced``: 1,000 streams at 50 tokens/s (one event every 20 ms per stream, one event per
  read): what a steady chat load costs, syscalls included.

    .venv/bin/python bench/loadtest_speed.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from procs import LOAD_CORE, PY, ROOT, exclusive, raise_fd_limit, running, start_mock

SHAPES = {
    "unpaced": ({"interval": 0.0}, ["-n", "50", "--requests", "400", "--max-tokens", "5000"]),
    "paced": ({"interval": 0.02}, ["-n", "1000", "--ramp", "2", "--duration", "12", "--max-tokens", "1500"]),
}


def measure(shape: str) -> dict[str, float]:
    mock_options, load_args = SHAPES[shape]
    mock, base = start_mock("fast", ttft=0.0, tokens=100_000, **mock_options)
    with running(mock):
        argv = ["taskset", "-c", LOAD_CORE, PY, "-m", "app", "loadtest", base + "/v1/chat/completions", *load_args, "--json"]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, preexec_fn=raise_fd_limit)
    summary = json.loads(done.stdout)
    return {
        "events": summary["events"],
        "cpu_s": summary["cpu_s"],
        "events_per_cpu_s": summary["events"] / summary["cpu_s"],
        "events_per_s": summary["events"] / summary["elapsed_s"],
        "cpu_pct": summary["cpu_s"] / summary["elapsed_s"] * 100,
        "failed": summary["streams"]["failed"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    cfg = p.parse_args()
    lines = ["| load | events/s delivered | tester CPU % of core 0 | events per CPU-second | µs per event | runs | failed |", "|---|---|---|---|---|---|---|"]
    with exclusive(900):
        for shape in SHAPES:
            runs = [measure(shape) for _ in range(cfg.runs)]
            for r in runs:
                print(f"{shape}: {json.dumps(r)}", flush=True)
            rate = statistics.median(r["events_per_cpu_s"] for r in runs)
            lines.append(
                f"| {shape} | {statistics.median(r['events_per_s'] for r in runs):,.0f} | {statistics.median(r['cpu_pct'] for r in runs):.0f} "
                f"| {rate:,.0f} | {1e6 / rate:.1f} | {cfg.runs} | {sum(r['failed'] for r in runs)} |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
