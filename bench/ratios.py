"""The ratios a developer reads before and after a change: each Token Relay build against the
direct connection and against the usual relay, from one bench/run.py run's results.

    .venv/bin/python bench/ratios.py bench/out/run-<time>.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

FIGURES = (  # (scenario, figure, what, higher is better)
    ("steady", "tokens_per_s", "steady tokens/s", True),
    ("steady", "gap_p99_ms", "steady gap p99", False),
    ("steady", "server_us_per_token", "steady CPU per token", False),
    ("throughput", "tokens_per_s", "unpaced tokens/s", True),
    ("throughput", "server_us_per_token", "unpaced CPU per token", False),
    ("memory", "kib_per_stream", "KiB per waiting stream", False),
    ("cancel", "p99_ms", "cancel p99", False),
    ("ttft", "p50_ms", "TTFT p50", False),
)


def median_of(runs: list[dict[str, Any]], target: str, figure: str) -> float | None:
    """The median of one figure of one target over a scenario's runs (None when it has none)."""
    values = [run[target][figure] for run in runs if target in run and run[target].get(figure) is not None]
    return statistics.median(values) if values else None


def ratios(results: dict[str, Any]) -> str:
    """A markdown table: figure, each relay build's value, and its ratio to direct and to the usual relay."""
    targets = list(dict.fromkeys(t for scenario, *_ in FIGURES for run in results.get(scenario) or [] for t in run))
    relays = [t for t in targets if t.startswith("token-relay")]
    usual = next((t for t in ("usual-httpx", "usual-aiohttp", "usual-httpx2") if t in targets), None)
    if not relays:
        return "(no token-relay target in this run)"
    head = ["figure", *(f"{relay} / direct" for relay in relays)]
    if usual:
        head += [f"{relay} / {usual}" for relay in relays]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario, figure, what, higher in FIGURES:
        runs = results.get(scenario)
        if not runs:
            continue
        cells = [f"{what} ({'higher' if higher else 'lower'} is better)"]
        for base in ["direct", *([usual] if usual else [])]:
            for relay in relays:
                mine, theirs = median_of(runs, relay, figure), median_of(runs, base, figure)
                cells.append(f"{mine / theirs:.2f}x" if mine is not None and theirs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(ratios(json.loads(Path(sys.argv[1]).read_text())))
