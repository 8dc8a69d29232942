"""Two capacity scenarios of bench/run.py: throughput with no pacing, and 10,000 held streams.

- ``throughput``: ``--throughput-streams`` streams at a time, each asking for
  ``--throughput-tokens`` tokens that bench/fastmock.py writes as fast as the socket takes
  them (interval 0), a new stream as soon as one ends; over a window: tokens/s delivered,
  events/s, server CPU per token. What a target can relay on one core when nothing paces it.
- ``held``: ``--held-streams`` streams opened over ``--held-ramp`` seconds and held waiting
  for their first token (fastmock ttft 600 s), all in one server process: how many are
  held, what each costs in RSS, and what failed. The processes get a raised open-files limit
  (run.py's ``raise_fd_limit``): a relay holding 10,000 streams has 20,000 sockets open.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from procs import LOAD_CORE, http_get, loadgen, median, running, start_mock, start_target, warm_up
from run import _ms, fmt


def throughput(target: str, cfg: argparse.Namespace) -> dict[str, Any]:
    mock, mock_base = start_mock("fast", ttft=0.0, interval=0.0)
    with running(mock):
        server, url = start_target(target, mock_base)
        with running(server):
            warm_up(url)
            start, end = 1.0, 1.0 + cfg.throughput_window
            pids = {"mock": mock.pid, **({"server": server.pid} if server else {})}
            r = loadgen(
                [url], timeout=end + 20, pids=pids, streams=cfg.throughput_streams, requests=10_000_000, ramp=0.2,
                max_tokens=cfg.throughput_tokens, window=(start, end), stop_at_window_end=True,
            )
    w = r["window"] or {}
    seconds = w.get("seconds") or float("nan")
    cpu = w.get("cpu_s", {})
    tokens = w.get("tokens") or 0
    server_cpu = cpu.get("server")
    ends = r["ends"]
    return {
        "tokens_per_s": w.get("tokens_per_s"),
        "events_per_s": w.get("events_per_s"),
        "server_us_per_token": server_cpu / tokens * 1e6 if server_cpu is not None and tokens else None,
        "server_cpu_pct": server_cpu / seconds * 100 if server_cpu is not None else None,
        "loadgen_cpu_pct": cpu.get("loadgen", 0) / seconds * 100,
        "core0_busy_pct": w.get("cores", {}).get("cpu" + LOAD_CORE, {}).get("busy_s", 0) / seconds * 100,
        "ttft_p50_ms": _ms(r["ttft_s"].get("p50")),
        "failed": sum(n for end, n in ends.items() if end not in ("ok", "cut")),
        "ends": ends,
    }


def held(target: str, cfg: argparse.Namespace) -> dict[str, Any]:
    mock, mock_base = start_mock("fast", ttft=600.0, interval=0.02)
    with running(mock):
        server, url = start_target(target, mock_base)
        with running(server):
            pids = {"mock": mock.pid, **({"server": server.pid} if server else {})}
            hold = cfg.held_ramp + cfg.held_settle
            r = loadgen(
                [url], timeout=hold + 40, pids=pids, streams=cfg.held_streams, ramp=cfg.held_ramp, max_tokens=10,
                window=(hold, hold + 0.5), stop_at_window_end=True, connect_timeout=20,
            )
        upstream_requests = json.loads(http_get(mock_base + "/mock/stats")).get("requests")
    samples = r["samples"]
    name = "server" if server else "mock"
    ends = r["ends"]
    held_streams = ends.get("cut", 0)  # still waiting, healthy, when the window closed them
    start, end = samples["start"].get(name, {}), samples.get("window_end", {}).get(name, {})
    before, after = start.get("rss_kib"), end.get("rss_kib")
    return {
        "measured": name,
        "asked": cfg.held_streams,
        "held": held_streams,
        "heads_200": r["heads_200"],
        "upstream_requests": upstream_requests,  # how many of the held streams the model server saw
        "failed": sum(n for end, n in ends.items() if end != "cut"),
        "rss_before_mib": before / 1024 if before is not None else None,
        "rss_after_mib": after / 1024 if after is not None else None,
        "kib_per_stream": (after - before) / held_streams if before is not None and after is not None and held_streams else None,
        "server_cpu_s": end["cpu"] - start["cpu"] if "cpu" in start and "cpu" in end else None,
        "ends": ends,
        "failures": r.get("failures", [])[:5],
    }


def throughput_table(runs: list[dict[str, dict[str, Any]]], targets: list[str]) -> str:
    lines = [
        "| target | tokens/s | vs direct | events/s | server CPU µs/token | server CPU % | core 0 busy % | failed | ends (run 1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        rows = [run[target] for run in runs if target in run]
        if not rows:
            continue
        ratios = [run[target]["tokens_per_s"] / run["direct"]["tokens_per_s"] * 100 for run in runs
                  if target in run and "direct" in run and run["direct"]["tokens_per_s"] and run[target]["tokens_per_s"] is not None]
        lines.append(
            f"| {target} | {fmt(median([r['tokens_per_s'] for r in rows]), 0)} | {fmt(median(ratios))} % "
            f"| {fmt(median([r['events_per_s'] for r in rows]), 0)} | {fmt(median([r['server_us_per_token'] for r in rows]))} "
            f"| {fmt(median([r['server_cpu_pct'] for r in rows]), 0)} | {fmt(median([r['core0_busy_pct'] for r in rows]), 0)} "
            f"| {sum(r['failed'] for r in rows)} | {rows[0]['ends']} |"
        )
    return "\n".join(lines)


def held_table(runs: list[dict[str, dict[str, Any]]], targets: list[str]) -> str:
    lines = [
        "| target | measured | asked | held | answered (200) | reached the model server | failed | RSS before MiB | RSS after MiB "
        "| KiB per held stream | CPU s (ramp) | ends (run 1) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        rows = [run[target] for run in runs if target in run]
        if rows:
            lines.append(
                f"| {target} | {rows[0]['measured']} | {rows[0]['asked']} | {fmt(median([r['held'] for r in rows]), 0)} "
                f"| {rows[0]['heads_200']} | {rows[0].get('upstream_requests')} "
                f"| {sum(r['failed'] for r in rows)} | {fmt(median([r['rss_before_mib'] for r in rows]))} "
                f"| {fmt(median([r['rss_after_mib'] for r in rows]))} | {fmt(median([r['kib_per_stream'] for r in rows]))} "
                f"| {fmt(median([r['server_cpu_s'] for r in rows]))} | {rows[0]['ends']} |"
            )
    return "\n".join(lines)
