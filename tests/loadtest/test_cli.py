"""``python -m app loadtest`` end to end, in a subprocess, against the real mock and relay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.mock import MockModel


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", "loadtest", *args], capture_output=True, text=True, timeout=60, check=False)


def test_json_summary_has_its_documented_shape(mock: tuple[MockModel, str]) -> None:
    done = loadtest(mock[1] + "/chat/completions", "-n", "2", "--requests", "4", "--max-tokens", "5", "--json", "--per-stream")
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    assert summary["streams"] == {"started": 4, "finished": 4, "ok": 4, "failed": 0, "neutral": 0}
    assert summary["outcomes"]["ok"] == 4 and summary["statuses"] == {"200": 4}
    assert summary["tokens"] == 20 and summary["content_events"] == 20
    for key in ("ttft_s", "gap_s"):
        assert set(summary[key]) == {"n", "mean", "p50", "p90", "p99", "max"}
    assert summary["ttft_s"]["n"] == 4 and summary["gap_s"]["n"] == 16
    assert summary["targets"] == [{"url": mock[1] + "/chat/completions", "api": "openai-chat", "method": "POST"}]
    assert summary["config"]["streams"] == 2 and summary["failures"] == []
    for key in ("elapsed_s", "cpu_s", "events_per_s", "tokens_per_s", "bytes", "series"):
        assert key in summary
    assert [record["outcome"] for record in summary["per_stream"]] == ["ok"] * 4


def test_failed_streams_make_the_exit_status_1_and_show_in_the_table(relay: str) -> None:
    done = loadtest(relay + "/v1/chat/completions", "--model", "mock-fault-error-midstream", "-n", "2")
    assert done.returncode == 1
    assert "time to first token" in done.stdout
    assert "error 2 (failure)" in done.stdout
    assert "upstream" in done.stdout  # the first failure's detail: the relay's error chunk


def test_bad_arguments_exit_2_with_one_line(tmp_path: Path) -> None:
    done = loadtest("http://127.0.0.1:1/v1/generate", "-H", "not a header")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not a header" in done.stderr
    assert loadtest("http://127.0.0.1:1/v1/generate", "--body", f"@{tmp_path / 'missing.json'}").returncode == 2
    assert loadtest("http://127.0.0.1:1/v1/generate", "--streams", "0").returncode == 2


def test_body_from_a_file_and_a_plot(mock: tuple[MockModel, str], tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "mock", "messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 3}))
    png = tmp_path / "run.png"
    done = loadtest(mock[1] + "/chat/completions", "-d", f"@{body}", "-n", "3", "--plot", str(png), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["content_events"] == 9 and summary["tokens"] == 9  # no usage asked for: tokens are content events
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
