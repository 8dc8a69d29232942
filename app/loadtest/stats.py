"""The summary of a run: one JSON-able dict, the source of the table, ``--json`` and the exit status.

Shape (times in seconds; a distribution is ``{n, mean, p50, p90, p99, max}``)::

    {
      "targets": [{"url", "api", "method"}], "config": {...LoadConfig},
      "elapsed_s", "cpu_s" (the tester's own CPU time), "streams": {"started", "finished", "ok", "failed", "neutral"},
      "outcomes": {"ok", "error", "malformed", "no_terminal", "http_status", "connect_error", "timeout", "closed", "cut"},
      "statuses": {"200": n, ...}, "failures": [{"index", "outcome", "status", "detail"}, ... at most 20],
      "ttft_s": distribution, "gap_s": distribution,
      "events", "content_events", "tokens", "bytes", "events_per_s", "content_events_per_s", "tokens_per_s",
      "series": [[t, open, content events so far, finished, failed], ...],
      "per_stream": [...]   (with --per-stream)
    }

``tokens`` are the completion tokens the streams reported in their usage where they did
(native ``done``, OpenAI with ``include_usage``), else their content events.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.loadtest.runner import Runner
from app.loadtest.stream import CLOSED, CUT, OK


def summarize(runner: Runner) -> dict[str, Any]:
    elapsed = runner.elapsed

    def rate(count: int) -> float | None:
        return count / elapsed if elapsed > 0 else None

    out: dict[str, Any] = {
        "targets": [{"url": t.url, "api": t.api, "method": t.method} for t in runner.targets],
        "config": msgspec.to_builtins(runner.config),
        "elapsed_s": elapsed,
        "cpu_s": runner.cpu_s,
        "streams": {
            "started": runner.started,
            "finished": runner.finished,
            "ok": runner.outcomes[OK],
            "failed": runner.failed,
            "neutral": runner.outcomes[CLOSED] + runner.outcomes[CUT],
        },
        "outcomes": dict(runner.outcomes),
        "statuses": {str(status): n for status, n in sorted(runner.statuses.items())},
        "failures": list(runner.details),
        "ttft_s": runner.ttft.summary(),
        "gap_s": runner.gaps.summary(),
        "events": runner.events,
        "content_events": runner.content_events,
        "tokens": runner.tokens,
        "bytes": runner.bytes,
        "events_per_s": rate(runner.events),
        "content_events_per_s": rate(runner.content_events),
        "tokens_per_s": rate(runner.tokens),
        "series": [list(sample) for sample in runner.series],
    }
    if runner.config.keep_records:
        out["per_stream"] = runner.records
    return out
