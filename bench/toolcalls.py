"""The ``tool-calls`` scenario: does a stream of tool-call fragments cost the relay more CPU per event than text?

For each Token Relay target, the steady scenario (bench/run.py: ``--streams`` streams at one
chunk every ``--interval`` seconds, ramped, then a measured window) runs twice in a row: once
as steady runs it (text: one content delta per chunk), once with ``tools`` in the request,
which bench/fastmock.py answers with two parallel tool calls whose argument fragments come one
per chunk at the same pace (OpenAI's shape: ``delta.tool_calls[{index, id?, function: {name?,
arguments}}]``; the first half of a stream's chunks are call 0's, the rest call 1's). Same
streams, same pace, same counts: only the shape of the chunks differs.

The figure is the server's CPU (utime + stime over the window) per SSE event the clients
received (``sse_events``, of any kind: content events are only the text's), and its ratio to
the text run beside it. A client that keeps up gets one event per upstream chunk in both
shapes; a relay that falls behind coalesces, and then sends fewer, larger events.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from procs import median

SHAPES = ("text", "tool calls")


def run_tool_calls(relays: list[str], cfg: argparse.Namespace, steady: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One run: for each relay target, the steady scenario with text, then with tool calls."""
    run: dict[str, dict[str, Any]] = {}
    for target in relays:
        for shape in SHAPES:
            run[f"{target} {shape}"] = figures = steady(target, cfg, tools=shape == "tool calls")
            print(f"tool-calls {target} {shape}: {json.dumps(figures)}", flush=True)
    return run


def tool_calls_table(runs: list[dict[str, dict[str, Any]]], relays: list[str]) -> str:
    lines = [
        "| target | chunks | SSE events/s | server CPU % | server CPU µs/event | vs text (per run) | ends (run 1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in relays:
        for shape in SHAPES:
            key = f"{target} {shape}"
            rows = [run[key] for run in runs if key in run]
            if not rows:
                continue
            ratios = [
                run[key]["server_us_per_sse_event"] / run[f"{target} text"]["server_us_per_sse_event"]
                for run in runs
                if run.get(key, {}).get("server_us_per_sse_event") and run.get(f"{target} text", {}).get("server_us_per_sse_event")
            ]
            lines.append(
                f"| {target} | {shape} | {_fmt(median([r['sse_events_per_s'] for r in rows]), 0)} "
                f"| {_fmt(median([r['server_cpu_pct'] for r in rows]), 0)} | {_fmt(median([r['server_us_per_sse_event'] for r in rows]))} "
                f"| {_fmt(median(ratios), 2)}x | {rows[0]['ends']} |"
            )
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"
