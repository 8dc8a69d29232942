"""Runs the benchmark scenarios of the product issue and prints their tables.

Every server is started here as a subprocess: the server under test pinned to core 1, the
model server (mock) and the load generator to core 0. Each figure is the median of
``--runs`` runs, and the direct-to-mock baseline is rerun beside every run (targets are
interleaved within a run), so ratios compare like with like on a noisy machine.

Targets: ``direct`` (the load generator talks to the mock: the baseline), ``litellm`` (LiteLLM's
proxy, from its own venv: bench/setup_litellm.sh), ``token-relay``
(``python -m app serve``), ``usual-httpx`` / ``usual-httpx2`` / ``usual-aiohttp``
(bench/usual_relay.py with that client), ``tcp-proxy`` (bench/tcpproxy.py: the floor
of any relay, a byte-for-byte proxy) and ``nginx`` (Debian's package, ``apt-get install nginx``:
one process, ``proxy_buffering off``, HTTP/1.1 with ``keepalive`` to the model server, access
log off; its config is written to a temporary directory, bench/procs.py). ``token-relay@REV``
runs app/ as committed at git revision REV (exported under bench/out/trees/), so that builds
can be compared in one run while app/ changes underneath. ``token-relay`` runs with its access
log off, ``token-relay+log`` (or ``token-relay@REV+log``) in its default state: on.
``token-relay+NAME=VALUE`` (several joined by ``+``, with or without ``@REV``) runs it with those
settings: ``token-relay+RELAY_METRICS=false`` beside ``token-relay`` is the cost of the metrics,
``token-relay+RELAY_LOG_LEVEL=info`` that of the request log's line per request.

Scenarios:

- ``steady``: N streams at 50 tokens/s each (mock interval 0.02 s) opened over a ramp, then
  a steady window: delivered content events/s and tokens/s, gaps between events, server CPU
  per token (/proc utime+stime over the window) and RSS. Upstream: bench/fastmock.py,
  because the embedded mock cannot produce 50k tokens/s on a core it shares (``--steady-mock
  app`` to use it anyway).
- ``cancel``: streams closed by the client after K content events. Per stream, two figures:
  the mock's disconnect time (``GET /mock/stats``) minus the client's close time, which adds
  the mock's own time to notice; and, on the wire (bench/wire.py, needs root), the kernel's
  timestamp of the relay's FIN or RST to the mock minus that of the client's FIN.
- ``memory``: N streams held open before their first token (mock ttft 60 s); the server's
  RSS growth per open stream.
- ``throughput`` and ``held`` (10,000 streams in one process): see bench/capacity.py.
- ``resumable``: resumable streams on the memory log and on Redis side by side (1,000 streams
  at 50 tokens/s in one relay, a ``Last-Event-ID`` replay's first event, ``DELETE`` across two
  relay processes): see bench/resumable.py.
- ``burst``: 1,000 keep-alive clients ramped up over 2 s, 3 requests each of 100 tokens at
  50 tokens/s; ``burst-100`` the same with 100 clients: events/s, TTFT, gaps, CPU per request
  and per event, upstream reconnects; the relay with its access log off and on (bench/burst.py).
- ``dialects``: the steady scenario once per client API for each Token Relay target (chat
  completions, Anthropic's Messages, OpenAI's Responses) on the same model server: server CPU
  per content event of each, and its ratio to chat completions'; see bench/dialects.py.
- ``tool-calls``: the steady scenario three times for each Token Relay target (and nginx, when it
  is a target), streaming text, text padded to the fragments' length, and two parallel tool
  calls' argument fragments (one chunk per token, the same pace and counts), side by side:
  server CPU per SSE event of each shape; see bench/toolcalls.py.
- ``ttft``: sequential requests, round-robin over all targets at once (so each relayed
  request has a direct one beside it); TTFT from the request write to the first content
  event, and the per-pair difference to direct.

    .venv/bin/python bench/run.py            # everything, ~10 minutes
    .venv/bin/python bench/run.py --quick    # smaller, one run, under a minute
    .venv/bin/python bench/run.py --quick --scenarios resumable
    .venv/bin/python bench/run.py --scenarios steady --targets direct,token-relay --runs 5
    .venv/bin/python bench/run.py --profile  # adds a py-spy profile of token-relay (steady)
    # what operations cost: per event (steady: CPU per token) and per request (ttft), with and without
    .venv/bin/python bench/run.py --scenarios steady,ttft --targets direct,token-relay,token-relay+RELAY_METRICS=false,token-relay+RELAY_LOG_LEVEL=info
    .venv/bin/python bench/run.py --scenarios burst,burst-100 --targets direct,nginx,token-relay

bench/request_profile.py profiles one request's path (py-spy, by phase); bench/scaling.py
measures ``--workers 2`` against 1.

Raw results go to bench/out/run-<time>.json, the tables (ending with the ratios of bench/ratios.py)
to stdout and bench/out/run-<time>.md, the chart (bench/chart.py) to bench/out/run-<time>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from procs import (
    ACCESS_LOG,
    BENCH,
    LITELLM,
    LOAD_CORE,
    NGINX,
    PY,
    PYSPY,
    ROOT,
    SERVER_CORE,
    Proc,
    exclusive,
    http_get,
    loadgen,
    median,
    running,
    start_mock,
    start_target,
    warm_up,
)
from wire import capturing, first_close

ALL_TARGETS = ("direct", "token-relay", "token-relay" + ACCESS_LOG, "nginx", "usual-httpx", "usual-httpx2", "usual-aiohttp", "tcp-proxy", "litellm")
# tcp-proxy (the floor) is cheap in ttft and always added there; elsewhere name it in --targets
# (and --steady-targets): it costs another 2 minutes.
DEFAULT_TARGETS = ("direct", "token-relay", "nginx", "usual-httpx", "usual-httpx2", "usual-aiohttp", "litellm")
ALL_SCENARIOS = ("steady", "cancel", "memory", "ttft", "burst", "burst-100", "throughput", "held", "resumable", "tool-calls", "dialects")


def steady(target: str, cfg: argparse.Namespace, path: str | None = None, pad: int = 0, **load: Any) -> dict[str, Any]:
    """``path``: another of a relay's streaming endpoints than chat completions (bench/dialects.py); ``pad``: the mock's (start_mock)."""
    mock, mock_base = start_mock(cfg.steady_mock, ttft=0.0, interval=cfg.interval, pad=pad)
    server: Proc | None = None
    with running(mock):
        server, url = start_target(target, mock_base)
        if path is not None:
            url = url.replace("/v1/chat/completions", path)
        with running(server):
            warm_up(url)
            start = cfg.ramp + cfg.settle
            end = start + cfg.window
            pids = {"mock": mock.pid, **({"server": server.pid} if server else {})}
            max_tokens = int((end + cfg.steady_wait + 5) / cfg.interval)
            r = loadgen(
                [url],
                timeout=end + cfg.steady_wait + 20,
                pids=pids,
                streams=cfg.streams,
                ramp=cfg.ramp,
                max_tokens=max_tokens,
                window=(start, end),
                stop_at_window_end=True,
                steady_wait=cfg.steady_wait,
                **load,
            )
            if cfg.profile_target == target:
                profile(server, url, cfg)
    w = r["window"] or {}
    seconds = w.get("seconds") or float("nan")
    cpu = w.get("cpu_s", {})
    tokens = w.get("tokens") or 0
    server_cpu = cpu.get("server")
    core0 = w.get("cores", {}).get("cpu" + LOAD_CORE, {})
    core1 = w.get("cores", {}).get("cpu" + SERVER_CORE, {})
    return {
        "tokens_per_s": w.get("tokens_per_s"),
        "events_per_s": w.get("events_per_s"),
        "gap_p50_ms": _ms(r["gap_s"].get("p50")),
        "gap_p99_ms": _ms(r["gap_s"].get("p99")),
        "gap_max_ms": _ms(r["gap_s"].get("max")),
        "ttft_p50_ms": _ms(r["ttft_s"].get("p50")),
        "ttft_p99_ms": _ms(r["ttft_s"].get("p99")),
        "server_cpu_pct": server_cpu / seconds * 100 if server_cpu is not None else None,
        "server_us_per_token": server_cpu / tokens * 1e6 if server_cpu is not None and tokens else None,
        "server_us_per_event": server_cpu / w["events"] * 1e6 if server_cpu is not None and w.get("events") else None,
        "sse_events_per_s": w["sse_events"] / seconds if w.get("sse_events") else None,
        "server_us_per_sse_event": server_cpu / w["sse_events"] * 1e6 if server_cpu is not None and w.get("sse_events") else None,
        "server_sys_pct_of_cpu": w.get("sys_s", {}).get("server", 0) / server_cpu * 100 if server_cpu else None,
        "server_rss_mib": w.get("rss_kib", {}).get("server", 0) / 1024 if server else None,
        # Everything core 1 did (the server pinned there, plus the softirq work of its sends): the honest cost.
        "core1_busy_pct": core1.get("busy_s", 0) / seconds * 100 if core1 else None,
        "core1_softirq_pct": core1.get("softirq_s", 0) / seconds * 100 if core1 else None,
        "core1_us_per_token": core1.get("busy_s", 0) / tokens * 1e6 if core1 and tokens and server else None,
        "core0_busy_pct": core0.get("busy_s", 0) / seconds * 100 if core0 else None,
        "mock_cpu_pct": cpu.get("mock", 0) / seconds * 100,
        "loadgen_cpu_pct": cpu.get("loadgen", 0) / seconds * 100,
        "mock_us_per_token": cpu.get("mock", 0) / tokens * 1e6 if tokens else None,
        "window_opened": w.get("opened"),
        "ends": r["ends"],
        "connect_errors": r["connect_errors"],
        "failure": (r.get("failures") or [None])[0],  # the first, with its detail: what went wrong, when something did
    }


def profile(server: Proc | None, url: str, cfg: argparse.Namespace) -> None:
    """A second steady run with py-spy attached to the server for 10 s of its window."""
    if server is None:
        return
    start = cfg.ramp + cfg.settle
    end = start + max(cfg.window, 12)
    out = profile_path(cfg)
    load = [PY, str(BENCH / "loadgen.py"), "--url", url, "--streams", str(cfg.streams), "--ramp", str(cfg.ramp)]
    load += ["--max-tokens", str(int((end + cfg.steady_wait + 5) / cfg.interval)), "--window", f"{start},{end}", "--stop-at-window-end"]
    load += ["--steady-wait", str(cfg.steady_wait), "--timeout", str(end + cfg.steady_wait + 20), "--out", str(BENCH / "out" / "profile-loadgen.json")]
    spy = ["taskset", "-c", LOAD_CORE, PYSPY, "record", "--pid", str(server.pid), "--rate", "200", "--nonblocking"]
    raw = [*spy, "--duration", "10", "--format", "raw", "--function", "--output", str(out)]
    if cfg.profile_native:  # py-spy must pause the process to unwind native frames
        raw = [arg for arg in raw if arg != "--nonblocking"] + ["--native"]
    svg = [*spy, "--duration", "5", "--format", "flamegraph", "--output", str(out.with_suffix(".svg"))]
    loadgen_proc = subprocess.Popen(["taskset", "-c", LOAD_CORE, *load], cwd=ROOT)
    try:
        time.sleep(start + 3)  # the window opens once every stream is streaming: after the ramp's backlog
        for argv in (raw, svg):
            subprocess.run(argv, cwd=ROOT, check=False, timeout=40, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        loadgen_proc.wait(timeout=end + 40)
    print(summarise_profile(out))


def profile_path(cfg: argparse.Namespace) -> Path:
    return BENCH / "out" / f"profile-steady-{cfg.streams}{'-native' if cfg.profile_native else ''}.txt"


def summarise_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function, from py-spy's raw (collapsed) output."""
    if not path.exists():
        return f"(no profile at {path})"
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    lines = [f"py-spy profile ({total} samples): top functions by self time", "", "| self % | incl. % | function |", "|---:|---:|---|"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {n / total * 100:.1f} | {inclusive[frame] / total * 100:.1f} | `{frame}` |")
    lines += ["", "top by inclusive time:", "", "| incl. % | function |", "|---:|---|"]
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {n / total * 100:.1f} | `{frame}` |")
    text = "\n".join(lines)
    path.with_suffix(".md").write_text(text + "\n")
    return text


def cancel(target: str, cfg: argparse.Namespace) -> dict[str, Any]:
    mock, mock_base = start_mock("app", ttft=0.0, interval=cfg.interval)
    with running(mock):
        server, url = start_target(target, mock_base)
        with running(server):
            warm_up(url)
            prefix = f"c{os.getpid()}{target[:3]}{int(time.time() * 1000) % 100000}"
            with capturing(int(LOAD_CORE)) as capture:
                r = loadgen(
                    [url],
                    timeout=30,
                    streams=cfg.cancel_streams,
                    ramp=cfg.cancel_ramp,
                    max_tokens=5000,
                    close_after=cfg.close_after,
                    per_stream=True,
                    id_prefix=prefix,
                )
                closed = {s["id"]: s["closed_at"] for s in r["per_stream"] if s["end"] == "closed" and s["closed_at"]}
                seen: dict[str, dict[str, Any]] = {}
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:  # disconnects still on their way are waited for, up to 3 s
                    stats = json.loads(http_get(mock_base + "/mock/stats"))
                    seen = {d["request_id"]: d for d in stats["disconnects"] if d["request_id"] in closed and "at" in d}
                    if len(seen) >= len(closed):
                        break
                    time.sleep(0.2)
    latencies = sorted((seen[rid]["at"] - closed[rid]) * 1e3 for rid in seen)
    result = {
        "closed": len(closed),
        "propagated_pct": len(seen) / len(closed) * 100 if closed else None,
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
        "max_ms": latencies[-1] if latencies else None,
        "ends": r["ends"],
    }
    if capture is not None and server is not None:
        # On the wire: the client's FIN leaving the load generator, then the relay's FIN or RST
        # leaving on the upstream connection the mock saw the request on.
        client_ports = {s["id"]: s["port"] for s in r["per_stream"]}
        relay_port, mock_port = urlsplit(url).port, urlsplit(mock_base).port
        assert relay_port is not None and mock_port is not None
        wire: list[float] = []
        for rid, record in seen.items():
            t0 = first_close(capture.segments, client_ports[rid], relay_port) if client_ports.get(rid) else None
            upstream_port = int(record["peer"].rpartition(":")[2]) if record.get("peer") else None
            t1 = first_close(capture.segments, upstream_port, mock_port, after=t0) if t0 is not None and upstream_port else None
            if t1 is not None and t0 is not None:
                wire.append((t1 - t0) * 1e3)
        wire.sort()
        result.update(wire_n=len(wire), wire_p50_ms=_pct(wire, 50), wire_p99_ms=_pct(wire, 99), wire_max_ms=wire[-1] if wire else None)
    return result


def memory(target: str, cfg: argparse.Namespace) -> dict[str, Any]:
    mock, mock_base = start_mock("app", ttft=60.0, interval=cfg.interval)
    with running(mock):
        server, url = start_target(target, mock_base)
        with running(server):
            pids = {"mock": mock.pid, **({"server": server.pid} if server else {})}
            # Warm-up: open and drop 100 waiting streams, so first-use allocations are not counted.
            loadgen([url], timeout=20, streams=100, ramp=0.3, max_tokens=10, window=(1.0, 1.2), stop_at_window_end=True)
            time.sleep(0.3)
            hold = cfg.memory_ramp + 1.5
            r = loadgen(
                [url],
                timeout=hold + 20,
                pids=pids,
                streams=cfg.memory_streams,
                ramp=cfg.memory_ramp,
                max_tokens=10,
                window=(hold, hold + 0.5),
                stop_at_window_end=True,
            )
    samples = r["samples"]
    name = "server" if server else "mock"
    before = samples["start"][name]["rss_kib"]
    after = samples["window_end"][name]["rss_kib"]
    # Streams still open and waiting when the window closed them (LiteLLM sends no head before the first token).
    open_streams = r["ends"].get("cut", 0)
    return {
        "measured": name,
        "open_streams": open_streams,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_stream": (after - before) / open_streams if open_streams else None,
        "mock_kib_per_stream": (samples["window_end"]["mock"]["rss_kib"] - samples["start"]["mock"]["rss_kib"]) / open_streams if open_streams else None,
        "ends": r["ends"],
    }


def ttft(targets: list[str], cfg: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One run: every target up at once, requests round-robin across them, one at a time."""
    mock, mock_base = start_mock("app", ttft=0.0, interval=0.002)
    procs: list[Proc | None] = []
    urls: list[str] = []
    with running(mock):
        try:
            for target in targets:
                proc, url = start_target(target, mock_base)
                procs.append(proc)
                urls.append(url)
            for url in urls:
                warm_up(url)
            pids = {target: proc.pid for target, proc in zip(targets, procs, strict=True) if proc is not None}
            r = loadgen(urls, timeout=120, pids=pids, streams=cfg.ttft_requests * len(urls), sequential=True, max_tokens=2, per_stream=True)
            upstream_connections = json.loads(http_get(mock_base + "/mock/stats")).get("connections")
        finally:
            for proc in procs:
                if proc is not None:
                    proc.stop()
    by_target: list[list[float | None]] = [[] for _ in targets]
    for s in r["per_stream"]:
        by_target[s["target"]].append(s["ttft"] * 1e3 if s["ttft"] is not None else None)
    direct = by_target[targets.index("direct")] if "direct" in targets else None
    out: dict[str, dict[str, Any]] = {}
    for target, values in zip(targets, by_target, strict=True):
        present = sorted(v for v in values if v is not None)
        row: dict[str, Any] = {"n": len(present), "failed": len(values) - len(present), "p50_ms": _pct(present, 50), "p99_ms": _pct(present, 99)}
        if target in r["samples"]["start"] and target in r["samples"]["end"] and values:
            row["server_us_per_request"] = (r["samples"]["end"][target]["cpu"] - r["samples"]["start"][target]["cpu"]) / len(values) * 1e6
        if direct is not None and target != "direct":
            diffs = sorted(v - d for v, d in zip(values, direct, strict=False) if v is not None and d is not None)
            row["added_p50_ms"] = _pct(diffs, 50)
            row["added_p99_ms"] = _pct(diffs, 99)
            # The percentiles' difference: what the relay adds to the direct connection's own p99.
            # The p99 of per-pair differences above also carries the direct request's own noise.
            direct_present = sorted(d for d in direct if d is not None)
            if present and direct_present:
                row["p99_over_direct_ms"] = _pct(present, 99) - _pct(direct_present, 99)
        out[target] = row
    out["_mock"] = {"upstream_connections": upstream_connections, "requests": len(r["per_stream"])}
    return out


def _ms(seconds: float | None) -> float | None:
    return seconds * 1e3 if seconds is not None else None


def _pct(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# Tables


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def steady_table(runs: list[dict[str, dict[str, Any]]], targets: list[str]) -> str:
    head = (
        "| target | tokens/s | vs direct | events/s | gap p50 ms | gap p99 ms | p99 vs direct | server CPU µs/token (kernel share) "
        "| server CPU % | core 1 busy µs/token (softirq % of core) | server RSS MiB "
        "| core 0 busy % (mock+loadgen) | ends (run 1) |"
    )
    lines = [head, "|" + "---|" * 13]
    for target in targets:
        rows = [run[target] for run in runs if target in run]
        if not rows:
            continue
        ratios, p99s = [], []
        for run in runs:
            if target in run and "direct" in run and run["direct"]["tokens_per_s"] and run[target]["tokens_per_s"] is not None:
                ratios.append(run[target]["tokens_per_s"] / run["direct"]["tokens_per_s"] * 100)
                p99s.append(run[target]["gap_p99_ms"] / run["direct"]["gap_p99_ms"])
        core0 = median([r.get("core0_busy_pct") for r in rows])
        lines.append(
            f"| {target} | {fmt(median([r['tokens_per_s'] for r in rows]), 0)} | {fmt(median(ratios))} % | {fmt(median([r['events_per_s'] for r in rows]), 0)} "
            f"| {fmt(median([r['gap_p50_ms'] for r in rows]))} | {fmt(median([r['gap_p99_ms'] for r in rows]))} | {fmt(median(p99s), 2)}x "
            f"| {fmt(median([r['server_us_per_token'] for r in rows]))} ({fmt(median([r.get('server_sys_pct_of_cpu') for r in rows]), 0)} %) "
            f"| {fmt(median([r['server_cpu_pct'] for r in rows]), 0)} "
            f"| {fmt(median([r.get('core1_us_per_token') for r in rows]))} ({fmt(median([r.get('core1_softirq_pct') for r in rows]), 0)} %) "
            f"| {fmt(median([r['server_rss_mib'] for r in rows]), 0)} | {fmt(core0, 0)} | {rows[0]['ends']} |"
        )
    return "\n".join(lines)


def cancel_table(runs: list[dict[str, dict[str, Any]]], targets: list[str]) -> str:
    lines = [
        "| target | closed | noticed by the mock | mock p50 ms | mock p99 ms | mock max ms | on the wire: n | wire p50 ms | wire p99 ms | wire max ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        rows = [run[target] for run in runs if target in run]
        if rows:
            lines.append(
                f"| {target} | {rows[0]['closed']} | {fmt(median([r['propagated_pct'] for r in rows]))} % | {fmt(median([r['p50_ms'] for r in rows]), 2)} "
                f"| {fmt(median([r['p99_ms'] for r in rows]), 2)} | {fmt(median([r['max_ms'] for r in rows]), 2)} "
                f"| {fmt(median([r.get('wire_n') for r in rows]), 0)} | {fmt(median([r.get('wire_p50_ms') for r in rows]), 3)} "
                f"| {fmt(median([r.get('wire_p99_ms') for r in rows]), 3)} | {fmt(median([r.get('wire_max_ms') for r in rows]), 3)} |"
            )
    return "\n".join(lines)


def memory_table(runs: list[dict[str, dict[str, Any]]], targets: list[str]) -> str:
    lines = [
        "| target | measured | open streams | RSS before MiB | RSS after MiB | KiB per open stream | mock KiB per stream |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        rows = [run[target] for run in runs if target in run]
        if rows:
            lines.append(
                f"| {target} | {rows[0]['measured']} | {fmt(median([r['open_streams'] for r in rows]), 0)} "
                f"| {fmt(median([r['rss_before_mib'] for r in rows]))} | {fmt(median([r['rss_after_mib'] for r in rows]))} "
                f"| {fmt(median([r['kib_per_stream'] for r in rows]))} "
                f"| {fmt(median([r['mock_kib_per_stream'] for r in rows]))} |"
            )
    return "\n".join(lines)


def ttft_table(runs: list[dict[str, dict[str, Any]]], targets: list[str]) -> str:
    lines = [
        "| target | requests | TTFT p50 ms | TTFT p99 ms | added p50 ms (pairs) | p99 minus direct p99 ms | p99 of pair diffs ms | server CPU µs/request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        rows = [run[target] for run in runs if target in run]
        if rows:
            lines.append(
                f"| {target} | {sum(r['n'] for r in rows)} (+{sum(r['failed'] for r in rows)} failed) | {fmt(median([r['p50_ms'] for r in rows]), 3)} "
                f"| {fmt(median([r['p99_ms'] for r in rows]), 3)} | {fmt(median([r.get('added_p50_ms') for r in rows]), 3)} "
                f"| {fmt(median([r.get('p99_over_direct_ms') for r in rows]), 3)} "
                f"| {fmt(median([r.get('added_p99_ms') for r in rows]), 3)} | {fmt(median([r.get('server_us_per_request') for r in rows]), 0)} |"
            )
    return "\n".join(lines)


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty_app": git("status", "--porcelain", "app")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts, one run, short windows: under a minute")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help=f"from {', '.join(ALL_TARGETS)}")
    p.add_argument("--steady-targets", default="all", help="steady runs only these of --targets (default: all of them)")
    p.add_argument("--streams", type=int, default=1000, help="steady: concurrent streams")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between tokens of one stream")
    p.add_argument("--ramp", type=float, default=3.0)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--window", type=float, default=20.0, help="steady: seconds measured")
    p.add_argument("--steady-wait", type=float, default=6.0, help="steady: wait up to this long after the settle for every stream to be streaming")
    p.add_argument("--steady-mock", choices=["fast", "app"], default="fast")
    p.add_argument("--cancel-streams", type=int, default=200)
    p.add_argument("--cancel-ramp", type=float, default=2.0)
    p.add_argument("--close-after", type=int, default=5)
    p.add_argument("--memory-streams", type=int, default=1000)
    p.add_argument("--memory-ramp", type=float, default=2.0)
    p.add_argument("--ttft-requests", type=int, default=1000, help="per target and run (a p99 of 200 is its 2nd-worst value)")
    p.add_argument("--burst-clients", type=int, default=1000, help="burst: keep-alive clients (burst-100: --burst-small-clients)")
    p.add_argument("--burst-small-clients", type=int, default=100)
    p.add_argument("--burst-requests", type=int, default=3, help="burst: requests per client, one after the other")
    p.add_argument("--burst-tokens", type=int, default=100, help="burst: tokens per answer, at --interval")
    p.add_argument("--burst-ramp", type=float, default=2.0)
    p.add_argument("--throughput-streams", type=int, default=50)
    p.add_argument("--throughput-tokens", type=int, default=2000, help="throughput: tokens per stream")
    p.add_argument("--throughput-window", type=float, default=8.0)
    p.add_argument("--held-streams", type=int, default=10_000)
    p.add_argument("--held-ramp", type=float, default=15.0)
    p.add_argument("--held-settle", type=float, default=5.0)
    p.add_argument("--held-targets", default="direct,token-relay,usual-aiohttp,litellm", help="held runs only these of --targets")
    p.add_argument("--resumable-streams", type=int, default=1000, help="resumable: streams in one relay process")
    p.add_argument("--replay-requests", type=int, default=1000, help="resumable: Last-Event-ID replays timed, per log")
    p.add_argument("--delete-requests", type=int, default=200, help="resumable: DELETEs across processes timed")
    p.add_argument("--chart", help="draw the chart of this run to this PNG (default bench/out/run-<time>.png)")
    p.add_argument("--lock-wait", type=float, default=900.0, help="seconds to wait for another run to finish")
    p.add_argument("--profile", action="store_true", help="py-spy token-relay during one extra steady run")
    p.add_argument("--profile-native", action="store_true", help="with --profile: include native frames (uvloop, httptools, msgspec)")
    cfg = p.parse_args(argv)
    if cfg.quick:
        cfg.runs, cfg.streams, cfg.ramp, cfg.settle, cfg.window, cfg.steady_wait = 1, 300, 1.0, 0.5, 4.0, 2.0
        cfg.cancel_streams, cfg.cancel_ramp, cfg.memory_streams, cfg.memory_ramp, cfg.ttft_requests = 50, 0.5, 300, 0.5, 50
        cfg.throughput_window, cfg.held_streams, cfg.held_ramp, cfg.held_settle = 2.0, 1000, 1.0, 1.0
        cfg.resumable_streams, cfg.replay_requests, cfg.delete_requests = 200, 50, 20
        cfg.burst_clients, cfg.burst_small_clients, cfg.burst_tokens, cfg.burst_ramp = 200, 50, 20, 0.5
        if cfg.scenarios == ",".join(ALL_SCENARIOS):
            cfg.scenarios = "steady,cancel,memory,ttft"  # under a minute; name throughput or held to add them
        if cfg.targets == ",".join(DEFAULT_TARGETS):
            cfg.targets = "direct,token-relay,usual-httpx"
    targets = [t for t in cfg.targets.split(",") if t]
    scenarios = [s for s in cfg.scenarios.split(",") if s]
    for name in targets:
        if name not in ALL_TARGETS and not name.startswith(("token-relay@", "token-relay+")):
            p.error(f"unknown target {name!r}")
    if "direct" not in targets:
        targets.insert(0, "direct")
    if "litellm" in targets and not LITELLM.exists():
        print(f"LiteLLM is not installed at {LITELLM} (bench/setup_litellm.sh installs it): leaving it out", flush=True)
        targets.remove("litellm")
    if "nginx" in targets and not os.access(NGINX, os.X_OK):
        print(f"nginx is not installed ({NGINX} is missing): apt-get install nginx, or NGINX_BIN=/path; leaving it out", flush=True)
        targets.remove("nginx")
    cfg.profile_target = None
    (BENCH / "out").mkdir(exist_ok=True)
    with exclusive(cfg.lock_wait):
        return run(cfg, targets, scenarios, argv)


def run(cfg: argparse.Namespace, targets: list[str], scenarios: list[str], argv: list[str] | None) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, Any] = {"config": vars(cfg), "git": git_state(), "started": stamp, "nproc": os.cpu_count()}
    started = time.monotonic()
    tables: list[str] = [f"# bench/run.py {' '.join(argv if argv is not None else sys.argv[1:])}", "", f"commit {results['git']['commit']}"]
    if results["git"]["dirty_app"]:
        tables.append(f"(app/ has uncommitted changes: {results['git']['dirty_app']!r})")

    def section(title: str, table: str) -> None:
        tables.extend(["", f"## {title}", "", table])
        print(f"\n## {title}\n\n{table}\n", flush=True)

    timing: dict[str, float] = {}
    results["timing_s"] = timing
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        timing[name] = time.monotonic() - mark
        mark = time.monotonic()

    if "steady" in scenarios:
        steady_targets = targets if cfg.steady_targets == "all" else [t for t in targets if t in cfg.steady_targets.split(",")]
        runs: list[dict[str, dict[str, Any]]] = []
        for i in range(cfg.runs):
            run: dict[str, dict[str, Any]] = {}
            for target in steady_targets:
                run[target] = steady(target, cfg)
                print(f"steady run {i + 1} {target}: {json.dumps(run[target])}", flush=True)
            runs.append(run)
        results["steady"] = runs
        title = f"steady: {cfg.streams} streams x {1 / cfg.interval:.0f} tokens/s, {cfg.window:.0f} s window, median of {cfg.runs}"
        section(title, steady_table(runs, steady_targets))
        lap("steady")
    if "cancel" in scenarios:
        runs = []
        for i in range(cfg.runs):
            run = {}
            for target in targets:
                run[target] = cancel(target, cfg)
                print(f"cancel run {i + 1} {target}: {json.dumps(run[target])}", flush=True)
            runs.append(run)
        results["cancel"] = runs
        section(f"cancel: {cfg.cancel_streams} streams closed after {cfg.close_after} events, median of {cfg.runs}", cancel_table(runs, targets))
        lap("cancel")
    if "memory" in scenarios:
        runs = []
        for i in range(cfg.runs):
            run = {}
            for target in targets:
                run[target] = memory(target, cfg)
                print(f"memory run {i + 1} {target}: {json.dumps(run[target])}", flush=True)
            runs.append(run)
        results["memory"] = runs
        section(f"memory: {cfg.memory_streams} streams waiting for their first token, median of {cfg.runs}", memory_table(runs, targets))
        lap("memory")
    if "ttft" in scenarios:
        ttft_targets = targets if "tcp-proxy" in targets or cfg.quick else [*targets, "tcp-proxy"]
        runs = []
        for i in range(cfg.runs):
            runs.append(ttft(ttft_targets, cfg))
            print(f"ttft run {i + 1}: {json.dumps(runs[-1])}", flush=True)
        results["ttft"] = runs
        section(f"ttft: {cfg.ttft_requests} sequential requests per target, round-robin, median of {cfg.runs}", ttft_table(runs, ttft_targets))
        lap("ttft")
    for scenario, clients in (("burst", cfg.burst_clients), ("burst-100", cfg.burst_small_clients)):
        if scenario in scenarios:
            from burst import burst, burst_table, burst_targets

            runs = []
            for i in range(cfg.runs):
                run = {}
                for target in burst_targets(targets):
                    run[target] = burst(target, cfg, clients)
                    print(f"{scenario} run {i + 1} {target}: {json.dumps(run[target])}", flush=True)
                runs.append(run)
            results[scenario] = runs
            title = f"{scenario}: {clients} keep-alive clients x {cfg.burst_requests} requests of {cfg.burst_tokens} tokens"
            title += f" at {1 / cfg.interval:.0f} tokens/s, ramped over {cfg.burst_ramp:g} s, median of {cfg.runs}"
            section(title, burst_table(runs, burst_targets(targets)))
            lap(scenario)
    from capacity import held, held_table, throughput, throughput_table

    if "throughput" in scenarios:
        runs = []
        for i in range(cfg.runs):
            run = {}
            for target in targets:
                run[target] = throughput(target, cfg)
                print(f"throughput run {i + 1} {target}: {json.dumps(run[target])}", flush=True)
            runs.append(run)
        results["throughput"] = runs
        title = f"throughput: {cfg.throughput_streams} streams at a time x {cfg.throughput_tokens} unpaced tokens"
        title += f", {cfg.throughput_window:.0f} s window, median of {cfg.runs}"
        section(title, throughput_table(runs, targets))
        lap("throughput")
    if "held" in scenarios:
        held_targets = [t for t in targets if t in cfg.held_targets.split(",")]
        run = {}
        for target in held_targets:
            run[target] = held(target, cfg)
            print(f"held {target}: {json.dumps(run[target])}", flush=True)
        results["held"] = [run]
        title = f"held: {cfg.held_streams} streams waiting for their first token in one process, opened over {cfg.held_ramp:.0f} s"
        section(title, held_table([run], held_targets))
        lap("held")
    if "resumable" in scenarios:
        from resumable import resumable_table, run_resumable

        runs = []
        for i in range(cfg.runs):
            runs.append(run_resumable(cfg))
            print(f"resumable run {i + 1}: {json.dumps(runs[-1])}", flush=True)
        results["resumable"] = runs
        title = f"resumable: {cfg.resumable_streams} streams x {1 / cfg.interval:.0f} tokens/s in one relay, memory log and Redis log"
        section(title + f", {cfg.window:.0f} s window, median of {cfg.runs}", resumable_table(runs, cfg))
        lap("resumable")
    relays = [t for t in targets if t.startswith("token-relay")]
    if "tool-calls" in scenarios:
        from toolcalls import run_tool_calls, tool_calls_table

        # nginx beside the relays: what the same two streams cost a server that only copies their bytes (the wire's share)
        shapes = relays + [t for t in targets if t == "nginx"]
        results["tool-calls"] = runs = [run_tool_calls(shapes, cfg, steady) for _ in range(cfg.runs)]
        title = f"tool-calls: {cfg.streams} streams x {1 / cfg.interval:.0f} chunks/s of text, then of tool-call fragments"
        section(title + f", {cfg.window:.0f} s window, median of {cfg.runs}", tool_calls_table(runs, shapes))
        lap("tool-calls")
    if "dialects" in scenarios:
        from dialects import dialects_table, run_dialects

        results["dialects"] = runs = [run_dialects(relays, cfg, steady) for _ in range(cfg.runs)]
        title = f"dialects: {cfg.streams} streams x {1 / cfg.interval:.0f} chunks/s through chat completions, Messages and Responses"
        section(title + f", {cfg.window:.0f} s window, median of {cfg.runs}", dialects_table(runs, relays))
        lap("dialects")
    if cfg.profile and relays:
        cfg.profile_target = "token-relay" if "token-relay" in relays else relays[-1]
        results["profile_run"] = steady(cfg.profile_target, cfg)
        tables.extend(["", "## profile", "", summarise_profile(profile_path(cfg))])
        lap("profile")

    from ratios import ratios

    section("ratios: Token Relay against the direct connection and the usual relay (medians)", ratios(results))
    results["elapsed_s"] = time.monotonic() - started
    print(f"elapsed {results['elapsed_s']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items()))
    tables.append(f"\nelapsed {results['elapsed_s']:.0f} s")
    (BENCH / "out" / f"run-{stamp}.json").write_text(json.dumps(results, indent=1))
    (BENCH / "out" / f"run-{stamp}.md").write_text("\n".join(tables) + "\n")
    from chart import chart

    png = Path(cfg.chart) if cfg.chart else BENCH / "out" / f"run-{stamp}.png"
    chart(results, png)
    print(f"chart: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
