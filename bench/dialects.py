"""The ``dialects`` scenario: does a client API other than chat completions cost the relay more CPU per event?

For each Token Relay target, the steady scenario (bench/run.py: ``--streams`` streams at one
chunk every ``--interval`` seconds, ramped, then a measured window) runs once per dialect, in a
row, on the same OpenAI-compatible model server: ``/v1/chat/completions`` (the baseline),
``/v1/messages`` (Anthropic's Messages API) and ``/v1/responses`` (OpenAI's Responses API). The
load tester reads each as its API ends it (app/loadtest: content is ``choices[0].delta.content``,
``content_block_delta`` with a text delta, ``response.output_text.delta``).

The figure is the server's CPU (utime + stime over the window) per content event the clients
received, and its ratio to chat completions' beside it in the same run (issue target: 1.2x at most).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from procs import median

DIALECTS = {"chat completions": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}


def run_dialects(relays: list[str], cfg: argparse.Namespace, steady: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One run: for each relay target, the steady scenario in each dialect."""
    run: dict[str, dict[str, Any]] = {}
    for target in relays:
        for name, path in DIALECTS.items():
            run[f"{target} {name}"] = figures = steady(target, cfg, path=path)
            print(f"dialects {target} {name}: {json.dumps(figures)}", flush=True)
    return run


def dialects_table(runs: list[dict[str, dict[str, Any]]], relays: list[str]) -> str:
    lines = [
        "| target | dialect | events/s | gap p99 ms | server CPU % | server CPU µs/event | vs chat completions (per run) | ends (run 1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in relays:
        base = f"{target} chat completions"
        for name in DIALECTS:
            key = f"{target} {name}"
            rows = [run[key] for run in runs if key in run]
            if not rows:
                continue
            ratios = [
                run[key]["server_us_per_event"] / run[base]["server_us_per_event"]
                for run in runs
                if run.get(key, {}).get("server_us_per_event") and run.get(base, {}).get("server_us_per_event")
            ]
            lines.append(
                f"| {target} | {name} | {_fmt(median([r['events_per_s'] for r in rows]), 0)} | {_fmt(median([r['gap_p99_ms'] for r in rows]))} "
                f"| {_fmt(median([r['server_cpu_pct'] for r in rows]), 0)} | {_fmt(median([r['server_us_per_event'] for r in rows]))} "
                f"| {_fmt(median(ratios), 2)}x | {rows[0]['ends']} |"
            )
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"
