"""The processes of a benchmark: servers pinned to a core, the load generator, and the lock.

Every server is a subprocess started here, pinned with taskset (the server under test to
core 1, the mock and the load generator to core 0), with a raised open-files limit, and
stopped by its own pid. ``exclusive`` keeps two benchmarks from running at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
PYSPY = str(ROOT / ".venv" / "bin" / "py-spy")
SERVER_CORE = "1"
LOAD_CORE = "0"
# LiteLLM's proxy pins its own uvicorn, uvloop and starlette, so it lives in a venv of its own (bench/setup_litellm.sh).
LITELLM = Path(os.environ.get("LITELLM_BIN", str(BENCH / "out" / "litellm-venv" / "bin" / "litellm")))
FD_LIMIT = 65536  # 10,000 held streams are 20,000 sockets in a relay


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


class Proc:
    """A server subprocess pinned to one core; stopped by its own pid only."""

    def __init__(self, name: str, argv: list[str], core: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.name = name
        self.log = open(BENCH / "out" / f"{name}.log", "ab")  # closed in stop()
        environ = {**os.environ, **(env or {})}
        self.popen = subprocess.Popen(
            ["taskset", "-c", core, *argv], cwd=cwd, env=environ, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=raise_fd_limit,
        )
        self.pid = self.popen.pid  # taskset execs the command: same pid

    def wait_ready(self, url: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see bench/out/{self.name}.log")
            try:
                http_get(url, timeout=1.0)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready at {url} after {timeout} s")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.log.close()


def raise_fd_limit() -> None:
    """In a child before exec: room for 10,000 held streams (root may raise the hard limit too)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, max(hard, FD_LIMIT)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def running(*procs: Proc | None) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in reversed(procs):
            if proc is not None:
                proc.stop()


def start_mock(kind: str, *, ttft: float, interval: float, tokens: int = 100_000) -> tuple[Proc, str]:
    port = free_port()
    args = ["--port", str(port), "--ttft", str(ttft), "--interval", str(interval), "--tokens", str(tokens)]
    if kind == "fast":
        proc = Proc("fastmock", [PY, str(BENCH / "fastmock.py"), *args], LOAD_CORE)
    else:
        proc = Proc("mock", [PY, "-m", "app", "mock", *args], LOAD_CORE, {"RELAY_LOG_LEVEL": "warning"})
    base = f"http://127.0.0.1:{port}"
    proc.wait_ready(base + "/mock/stats")
    return proc, base


def start_target(target: str, mock_base: str) -> tuple[Proc | None, str]:
    """Start the server under test in front of the mock; returns it and its completions URL."""
    if target == "direct":
        return None, mock_base + "/v1/chat/completions"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if target.partition("+")[0] == "token-relay" or target.startswith("token-relay@"):
        # token-relay@REV runs app/ as committed at REV, exported aside: a fixed build to compare;
        # token-relay+NAME=VALUE[+…] with those settings (token-relay+RELAY_METRICS=false: without metrics).
        build, *settings = target.split("+")
        cwd = export_app(build.partition("@")[2]) if "@" in build else ROOT
        env = {"RELAY_UPSTREAM": mock_base + "/v1", "RELAY_ACCESS_LOG": "false", "RELAY_LOG_LEVEL": "warning"}
        env |= dict(setting.partition("=")[::2] for setting in settings)
        proc = Proc(target, [PY, "-m", "app", "serve", "--port", str(port)], SERVER_CORE, env, cwd)
        proc.wait_ready(base + "/healthz")
    elif target.startswith("usual-"):
        client = target.removeprefix("usual-")
        proc = Proc(target, [PY, str(BENCH / "usual_relay.py"), "--port", str(port), "--upstream", mock_base + "/v1"], SERVER_CORE, {"USUAL_CLIENT": client})
        proc.wait_ready(base + "/healthz")
    elif target == "litellm":
        if not LITELLM.exists():
            raise RuntimeError(f"{LITELLM} is not installed: run bench/setup_litellm.sh")
        config = BENCH / "out" / f"litellm-{port}.yaml"
        config.write_text(
            "model_list:\n  - model_name: mock\n    litellm_params:\n"
            f"      model: openai/mock\n      api_base: {mock_base}/v1\n      api_key: none\n"
            # X-Request-Id reaches the mock, so that cancel can match each disconnect to its client
            "general_settings:\n  forward_client_headers_to_llm_api: true\n"
        )
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        argv = [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1", "--telemetry", "False"]
        proc = Proc(target, argv, SERVER_CORE, env)
        proc.wait_ready(base + "/health/liveliness", timeout=60)
    elif target == "tcp-proxy":
        proc = Proc(target, [PY, str(BENCH / "tcpproxy.py"), "--port", str(port), "--upstream", mock_base.removeprefix("http://")], SERVER_CORE)
        proc.wait_ready(base + "/mock/stats")
    else:
        raise ValueError(f"unknown target {target!r}")
    return proc, base + "/v1/chat/completions"


def export_app(rev: str) -> Path:
    """app/ as of git revision ``rev``, exported once under bench/out/trees/."""
    tree = BENCH / "out" / "trees" / rev
    if not (tree / "app" / "__main__.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev, "app"], cwd=ROOT, capture_output=True, check=True, timeout=30).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=30)
    return tree


def loadgen(urls: list[str], *, timeout: float, pids: dict[str, int] | None = None, **options: Any) -> dict[str, Any]:
    """Run bench/loadgen.py on the load core; options map to its flags (True for a bare flag)."""
    out = BENCH / "out" / f"loadgen-{os.getpid()}.json"
    argv = ["taskset", "-c", LOAD_CORE, PY, str(BENCH / "loadgen.py"), "--timeout", str(timeout), "--out", str(out)]
    for url in urls:
        argv += ["--url", url]
    for name, pid in (pids or {}).items():
        argv += ["--pid", f"{name}={pid}"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    subprocess.run(argv, cwd=ROOT, check=True, timeout=timeout + 30, preexec_fn=raise_fd_limit)
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return result


def warm_up(url: str) -> None:
    loadgen([url], timeout=15, streams=20, ramp=0.2, max_tokens=3)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# Scenarios: each returns one flat dict of figures for one run of one target.


@contextlib.contextmanager
def exclusive(wait: float) -> Iterator[None]:
    """One benchmark at a time on this machine: two at once would measure each other."""
    with open(BENCH / "out" / "run.lock", "w") as lock:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"another bench/run.py still holds {lock.name} after {wait:.0f} s") from None
                time.sleep(2)
        others = [pid for pid in _bench_processes() if pid != os.getpid()]
        if others:
            print(f"warning: other benchmark processes are running ({others}); the figures will be disturbed", flush=True)
        yield


def _bench_processes() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            argv = cmdline.split(b"\0")
            if b"python" in os.path.basename(argv[0]) and any(a.endswith((b"bench/run.py", b"bench/loadgen.py")) for a in argv[1:3]):
                pids.append(int(entry.name))
    return pids
