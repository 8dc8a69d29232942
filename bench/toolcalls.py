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

A third run streams text again, each token padded to make its chunk exactly as long as an
argument fragment's, both ways (``text, as long``: bench/fastmock.py ``--pad 42``): a fragment
carries 42 bytes more than a content delta upstream and again downstream, and what those
bytes cost (the reads, the writes, the loopback) is the wire's, not the kind's. Against it,
only the kind of event differs. nginx, when it is a target, runs the same three streams: a
server that only copies their bytes shows what the difference between them costs the wire.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from procs import median

SHAPES = ("text", "text, as long", "tool calls")
# The bytes an argument fragment's chunk has more than a content delta's, from the model server and to the client alike.
PAD = 42


def run_tool_calls(relays: list[str], cfg: argparse.Namespace, steady: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One run: for each target, the steady scenario with text, with text as long as the fragments, then with tool calls."""
    run: dict[str, dict[str, Any]] = {}
    for target in relays:
        for shape in SHAPES:
            run[f"{target} {shape}"] = figures = steady(target, cfg, tools=shape == "tool calls", pad=PAD if shape == "text, as long" else 0)
            print(f"tool-calls {target} {shape}: {json.dumps(figures)}", flush=True)
    return run


def tool_calls_table(runs: list[dict[str, dict[str, Any]]], relays: list[str]) -> str:
    lines = [
        "| target | chunks | SSE events/s | server CPU % | server CPU µs/event | vs text (per run) | vs text as long (per run) | ends (run 1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in relays:
        for shape in SHAPES:
            key = f"{target} {shape}"
            rows = [run[key] for run in runs if key in run]
            if not rows:
                continue
            lines.append(
                f"| {target} | {shape} | {_fmt(median([r['sse_events_per_s'] for r in rows]), 0)} "
                f"| {_fmt(median([r['server_cpu_pct'] for r in rows]), 0)} | {_fmt(median([r['server_us_per_sse_event'] for r in rows]))} "
                f"| {_ratio(runs, key, f'{target} text')} | {_ratio(runs, key, f'{target} text, as long')} | {rows[0]['ends']} |"
            )
    return "\n".join(lines)


def _ratio(runs: list[dict[str, dict[str, Any]]], key: str, base: str) -> str:
    """The median over the runs of ``key``'s CPU per event against ``base``'s in the same run."""
    ratios = [
        run[key]["server_us_per_sse_event"] / run[base]["server_us_per_sse_event"]
        for run in runs
        if run.get(key, {}).get("server_us_per_sse_event") and run.get(base, {}).get("server_us_per_sse_event")
    ]
    return f"{_fmt(median(ratios) if ratios else None, 2)}x" if ratios else "—"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"
