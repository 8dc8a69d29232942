"""The chart of one bench/run.py run: each target beside the direct connection, one panel per figure.

    .venv/bin/python bench/chart.py bench/out/run-<time>.json bench/results.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ratios import median_of

PANELS = (  # (scenario, figure, title, lower is better)
    ("steady", "tokens_per_s", "steady 50 tok/s per stream: tokens/s delivered", False),
    ("steady", "gap_p99_ms", "steady: inter-token gap p99 (ms)", True),
    ("steady", "server_us_per_token", "steady: server CPU µs per token", True),
    ("throughput", "tokens_per_s", "unpaced throughput: tokens/s on one core", False),
    ("memory", "kib_per_stream", "KiB per stream waiting for its first token", True),
    ("held", "upstream_requests", "held streams that reached the model server", False),
    ("cancel", "p99_ms", "disconnect to upstream closed: p99 (ms)", True),
    ("ttft", "added_p50_ms", "added time to first token, p50 (ms)", True),
)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if results.get(p[0])]
    if not panels:
        return
    columns = 4
    rows = (len(panels) + columns - 1) // columns
    figure, axes_grid = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), layout="constrained", squeeze=False)
    for axes in axes_grid.flat[len(panels):]:
        axes.set_visible(False)
    for axes, (scenario, figure_name, title, lower) in zip(axes_grid.flat, panels, strict=False):
        runs = results[scenario]
        targets = [t for t in dict.fromkeys(t for run in runs for t in run) if not t.startswith("_")]
        values = [median_of(runs, t, figure_name) for t in targets]
        shown = [(t, v) for t, v in zip(targets, values, strict=True) if v is not None]
        colours = ["grey" if t == "direct" else "tab:green" if t.startswith("token-relay") else "tab:blue" for t, _ in shown]
        axes.barh([t for t, _ in shown], [v for _, v in shown], color=colours)
        for i, (_, v) in enumerate(shown):
            axes.annotate(f"{v:,.1f}" if v < 100 else f"{v:,.0f}", (v, i), va="center", fontsize=8)
        axes.invert_yaxis()
        if max((v for _, v in shown), default=0) >= 10_000:
            axes.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:,.0f}k")
        axes.set_title(title + (" ↓" if lower else " ↑"), fontsize=9)
        axes.tick_params(labelsize=8)
        axes.grid(axis="x", alpha=0.3)
    git = results.get("git", {}).get("commit", "")
    figure.suptitle(f"bench/run.py {results.get('started', '')} at {git}: medians; grey = direct to the mock, green = Token Relay", fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    chart(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
