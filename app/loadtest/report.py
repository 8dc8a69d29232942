"""What a person reads: the live progress line (on a terminal) and the summary table."""

from __future__ import annotations

import time
from typing import Any, TextIO

from app.loadtest.runner import Runner
from app.loadtest.stream import FAILURES


class Progress:
    """One line on ``out``, rewritten every tick: elapsed, open, done, failed, events/s over the last tick."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last = (time.monotonic(), 0)
        self._width = 0

    def __call__(self, runner: Runner) -> None:
        now = time.monotonic()
        then, count = self._last
        rate = (runner.content_events - count) / (now - then) if now > then else 0.0
        self._last = (now, runner.content_events)
        of = f"/{runner.total}" if runner.total is not None else ""
        line = (
            f"{runner.elapsed:7.1f}s  open {runner.open:>6}  done {runner.finished:>7}{of}  failed {runner.failed:>5}"
            f"  content events/s {rate:>10,.0f}  total {runner.content_events:,}"
        )
        self._width = max(self._width, len(line))
        self._out.write("\r" + line.ljust(self._width))
        self._out.flush()

    def close(self) -> None:
        if self._width:
            self._out.write("\n")
            self._out.flush()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:,.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(summary: dict[str, Any]) -> str:
    """The summary as aligned plain text."""
    streams = summary["streams"]
    lines = [
        "targets:  " + ", ".join(f"{t['method']} {t['url']} ({t['api']})" for t in summary["targets"]),
        f"streams:  {streams['started']} started, {streams['ok']} ok, {streams['failed']} failed, {streams['neutral']} closed by the tester"
        f"  in {summary['elapsed_s']:.1f} s",
        "",
        f"{'':<22}{'n':>8}{'p50 ms':>11}{'p90 ms':>11}{'p99 ms':>11}{'max ms':>11}",
    ]
    for label, key in (("time to first token", "ttft_s"), ("inter-token gap", "gap_s")):
        d = summary[key]
        lines.append(f"{label:<22}{d['n']:>8}{_ms(d['p50']):>11}{_ms(d['p90']):>11}{_ms(d['p99']):>11}{_ms(d['max']):>11}")
    lines += [
        "",
        f"tokens/s {_rate(summary['tokens_per_s'])}   content events/s {_rate(summary['content_events_per_s'])}   "
        f"tokens {summary['tokens']:,}   events {summary['events']:,}   bytes {summary['bytes']:,}",
    ]
    if summary["elapsed_s"] > 0:
        busy = summary["cpu_s"] / summary["elapsed_s"] * 100
        lines.append(f"load tester CPU: {busy:.0f} % of one core" + ("  (saturated: the figures may be the tester's limit)" if busy > 90 else ""))
    counted = [(name, n) for name, n in summary["outcomes"].items() if n]
    lines.append("outcomes: " + ", ".join(f"{name} {n}" + (" (failure)" if name in FAILURES else "") for name, n in counted))
    if summary["statuses"]:
        lines.append("statuses: " + ", ".join(f"{status} {n}" for status, n in summary["statuses"].items()))
    if summary["failures"]:
        lines.append("first failures:")
        seen: set[tuple[str, str]] = set()
        for failure in summary["failures"]:
            kind = (failure["outcome"], failure["detail"])
            if kind not in seen:
                seen.add(kind)
                lines.append(f"  {failure['outcome']}: {failure['detail'] or '-'}")
    return "\n".join(lines)

