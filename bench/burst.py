"""Arrival bursts of short answers (bench/run.py's ``burst`` and ``burst-100``): the cost of a whole request.

``--burst-clients`` keep-alive clients (1,000 for ``burst``, 100 for ``burst-100``) are ramped
up over ``--burst-ramp`` seconds; each makes ``--burst-requests`` streamed chat completions
one after the other on its connection (bench/loadgen.py ``--per-connection``), each answer
``--burst-tokens`` tokens at ``--interval`` seconds per token from bench/fastmock.py. Over the
whole run: content events/s delivered, TTFT p50/p99 (from each request's write), the gap p99
between events, and the server's CPU (/proc, its pid) per request and per event; the upstream
connections the model server saw opened (reconnects of the relay's pool) and the client
connections the load generator opened.

The relay runs twice, with its access log off (``token-relay``) and in its default state, on
(``token-relay+log``), beside nginx and the direct connection.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from procs import ACCESS_LOG, http_get, loadgen, median, running, start_mock, start_target, warm_up
from run import _ms, fmt


def burst(target: str, cfg: argparse.Namespace, clients: int) -> dict[str, Any]:
    mock, mock_base = start_mock("fast", ttft=0.0, interval=cfg.interval)
    with running(mock):
        server, url = start_target(target, mock_base)
        with running(server):
            warm_up(url)
            before = json.loads(http_get(mock_base + "/mock/stats"))
            pids = {"mock": mock.pid, **({"server": server.pid} if server else {})}
            expected = cfg.burst_ramp + cfg.burst_requests * cfg.burst_tokens * cfg.interval
            r = loadgen(
                [url], timeout=expected * 4 + 30, pids=pids, streams=clients, requests=clients * cfg.burst_requests,
                per_connection=cfg.burst_requests, ramp=cfg.burst_ramp, max_tokens=cfg.burst_tokens,
            )
            after = json.loads(http_get(mock_base + "/mock/stats"))
    start, end = r["samples"]["start"], r["samples"]["end"]
    events = r["content_events"]
    requests = sum(r["ends"].values())
    server_cpu = end["server"]["cpu"] - start["server"]["cpu"] if server else None
    return {
        "events_per_s": events / r["elapsed_s"] if r["elapsed_s"] else None,
        # Above 1: the target fell behind and coalesced tokens into fewer events (CPU per event then rises).
        "tokens_per_event": r["tokens"] / events if events else None,
        "ttft_p50_ms": _ms(r["ttft_s"].get("p50")),
        "ttft_p99_ms": _ms(r["ttft_s"].get("p99")),
        "gap_p99_ms": _ms(r["gap_s"].get("p99")),
        "server_ms_per_request": server_cpu / requests * 1e3 if server_cpu is not None and requests else None,
        "server_us_per_event": server_cpu / events * 1e6 if server_cpu is not None and events else None,
        "server_cpu_pct": server_cpu / r["elapsed_s"] * 100 if server_cpu is not None and r["elapsed_s"] else None,
        # The model server's own stats request is one connection of these.
        "upstream_connections": after["connections"] - before["connections"] - 1,
        "client_connections": r.get("connections"),
        "elapsed_s": r["elapsed_s"],
        "ends": r["ends"],
    }


def burst_targets(targets: list[str]) -> list[str]:
    """The targets, with the relay's default state (access log on) beside each relay measured with it off."""
    out: list[str] = []
    for target in targets:
        out.append(target)
        if target.startswith("token-relay") and not target.endswith(ACCESS_LOG) and target + ACCESS_LOG not in targets:
            out.append(target + ACCESS_LOG)
    return out


def burst_table(runs: list[dict[str, dict[str, Any]]], targets: list[str]) -> str:
    lines = [
        "| target | events/s delivered | vs direct | TTFT p50 ms | TTFT p99 ms | gap p99 ms | CPU per request ms | CPU per event µs "
        "| tokens per event | server CPU % | upstream connections opened | ends (run 1) |",
        "|" + "---|" * 12,
    ]
    for target in targets:
        rows = [run[target] for run in runs if target in run]
        if not rows:
            continue
        shares = [run[target]["events_per_s"] / run["direct"]["events_per_s"] * 100 for run in runs
                  if target in run and "direct" in run and run["direct"]["events_per_s"] and run[target]["events_per_s"] is not None]
        lines.append(
            f"| {target} | {fmt(median([r['events_per_s'] for r in rows]), 0)} | {fmt(median(shares))} % "
            f"| {fmt(median([r['ttft_p50_ms'] for r in rows]), 2)} | {fmt(median([r['ttft_p99_ms'] for r in rows]), 1)} "
            f"| {fmt(median([r['gap_p99_ms'] for r in rows]), 1)} | {fmt(median([r['server_ms_per_request'] for r in rows]), 2)} "
            f"| {fmt(median([r['server_us_per_event'] for r in rows]), 1)} | {fmt(median([r['tokens_per_event'] for r in rows]), 2)} "
            f"| {fmt(median([r['server_cpu_pct'] for r in rows]), 0)} "
            f"| {fmt(median([r['upstream_connections'] for r in rows]), 0)} | {rows[0]['ends']} |"
        )
    return "\n".join(lines)
