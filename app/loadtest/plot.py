"""``--plot FILE.png``: the latency distributions and the streams over time, with matplotlib.

matplotlib is an optional extra (``pip install 'token-relay[loadtest]'``); without it
``PlotUnavailable`` says how to get it. The figure has three panels: the CDF of time to first
token, the CDF of inter-token gaps (log time axis), and open streams with content events/s
over the run.
"""

from __future__ import annotations

import itertools
from typing import Any

from app.loadtest.histogram import Histogram


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot(path: str, summary: dict[str, Any], ttft: Histogram, gaps: Histogram) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'token-relay[loadtest]'") from exc

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    title = ", ".join(t["url"] for t in summary["targets"])
    streams = summary["streams"]
    figure.suptitle(f"{title}: {streams['started']} streams, {streams['ok']} ok, {streams['failed']} failed", fontsize=11)
    for axes, histogram, label in ((left, ttft, "time to first token"), (middle, gaps, "inter-token gap")):
        points = histogram.cumulative()
        if points:
            axes.step([v * 1e3 for v, _ in points], [share * 100 for _, share in points], where="post")
            if points[-1][0] > 0 and points[-1][0] / max(points[0][0], 1e-6) > 100:
                axes.set_xscale("symlog", linthresh=0.1)
        for q in (50, 99):
            value = histogram.percentile(q)
            if value is not None:
                axes.axvline(value * 1e3, linestyle=":", color="grey")
                axes.annotate(f"p{q} {value * 1e3:.1f} ms", (value * 1e3, q), fontsize=8)
        axes.set_title(label)
        axes.set_xlabel("ms")
        axes.set_ylabel("% of samples at or below")
        axes.grid(alpha=0.3)
    series = summary["series"]
    if series:
        times = [s[0] for s in series]
        right.plot(times, [s[1] for s in series], label="open streams")
        right.set_xlabel("s since start")
        right.set_ylabel("open streams")
        rates = [0.0] + [(b[2] - a[2]) / (b[0] - a[0]) if b[0] > a[0] else 0.0 for a, b in itertools.pairwise(series)]
        twin = right.twinx()
        twin.plot(times, rates, color="tab:orange", label="content events/s")
        twin.set_ylabel("content events/s")
        failed = [s[4] for s in series]
        if failed[-1]:
            right.plot(times, failed, color="tab:red", label="failed (total)")
        right.legend(loc="upper left", fontsize=8)
        twin.legend(loc="upper right", fontsize=8)
    right.set_title("streams over time")
    right.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
    plt.close(figure)
