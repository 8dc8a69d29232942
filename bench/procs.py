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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
PYSPY = str(Path(PY).parent / "py-spy")
SERVER_CORE = "1"
LOAD_CORE = "0"
ACCESS_LOG = "+log"  # a token-relay target with this suffix keeps the access log on, as it is by default
# LiteLLM's proxy pins its own uvicorn, uvloop and starlette, so it lives in a venv of its own (bench/setup_litellm.sh).
LITELLM = Path(os.environ.get("LITELLM_BIN", str(BENCH / "out" / "litellm-venv" / "bin" / "litellm")))
FD_LIMIT = 65536  # 10,000 held streams are 20,000 sockets in a relay
# Debian's nginx package (apt-get install nginx): the C proxy the relay is measured against.
NGINX = os.environ.get("NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"
# nginx's upstream keepalive: idle connections kept per worker (the figure the relay's pool is compared with).
NGINX_KEEPALIVE = 1024


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
        self.scratch: Path | None = None  # a temporary directory of its own (nginx's), removed in stop()
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
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


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


def start_mock(kind: str, *, ttft: float, interval: float, tokens: int = 100_000, core: str = LOAD_CORE, pad: int = 0) -> tuple[Proc, str]:
    """``pad``: underscores at the end of each text token (bench/fastmock.py's ``--pad``; the fast mock only)."""
    port = free_port()
    args = ["--port", str(port), "--ttft", str(ttft), "--interval", str(interval), "--tokens", str(tokens)]
    if kind == "fast":
        proc = Proc("fastmock", [PY, str(BENCH / "fastmock.py"), *args, "--pad", str(pad)], core)
    elif pad:
        raise ValueError("only the fast mock pads its tokens")
    else:
        proc = Proc("mock", [PY, "-m", "app", "mock", *args], core, {"RELAY_LOG_LEVEL": "warning"})
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
        # token-relay+NAME=VALUE[+…] with those settings (token-relay+RELAY_METRICS=false: without metrics);
        # token-relay+log keeps the access log in its default state (on, at level info: warning would silence it).
        build, *settings = target.split("+")
        cwd = export_app(build.partition("@")[2]) if "@" in build else ROOT
        env = {"RELAY_UPSTREAM": mock_base + "/v1", "RELAY_ACCESS_LOG": "false", "RELAY_LOG_LEVEL": "warning"}
        for setting in settings:
            name, _, value = setting.partition("=")
            env |= {"RELAY_ACCESS_LOG": "true", "RELAY_LOG_LEVEL": "info"} if setting == ACCESS_LOG.lstrip("+") else {name: value}
        proc = Proc(target, [PY, "-m", "app", "serve", "--port", str(port)], SERVER_CORE, env, cwd)
        proc.wait_ready(base + "/healthz")
    elif target == "nginx":
        proc = start_nginx(port, mock_base)
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


def nginx_config(port: int, mock_base: str, scratch: Path) -> str:
    """One process (``master_process off``: its CPU is the pid's), no buffering, HTTP/1.1 kept alive to the model server."""
    upstream = mock_base.removeprefix("http://")
    temp = " ".join(f"{kind}_temp_path {scratch / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {FD_LIMIT};
pid {scratch / "nginx.pid"};
error_log {scratch / "error.log"} warn;
events {{ worker_connections {FD_LIMIT // 2}; }}
http {{
    access_log off;
    {temp}
    upstream model {{ server {upstream}; keepalive {NGINX_KEEPALIVE}; keepalive_requests 1000000; keepalive_timeout 60s; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def start_nginx(port: int, mock_base: str) -> Proc:
    if not os.access(NGINX, os.X_OK):
        raise RuntimeError(f"nginx is not installed at {NGINX}: apt-get install nginx (or NGINX_BIN=/path)")
    scratch = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    (scratch / "nginx.conf").write_text(nginx_config(port, mock_base, scratch))
    proc = Proc("nginx", [NGINX, "-p", str(scratch), "-c", str(scratch / "nginx.conf"), "-e", "stderr"], SERVER_CORE)
    proc.scratch = scratch
    proc.wait_ready(f"http://127.0.0.1:{port}/mock/stats")
    return proc


def export_app(rev: str) -> Path:
    """app/ as of git revision ``rev``, exported once under bench/out/trees/."""
    tree = BENCH / "out" / "trees" / rev
    if not (tree / "app" / "__main__.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev, "app"], cwd=ROOT, capture_output=True, check=True, timeout=30).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=30)
    return tree


def loadgen(urls: list[str], *, timeout: float, pids: dict[str, int] | None = None, core: str = LOAD_CORE, **options: Any) -> dict[str, Any]:
    """Run bench/loadgen.py on the load core (or ``core``: a taskset list); options map to its flags (True for a bare flag)."""
    out = BENCH / "out" / f"loadgen-{os.getpid()}.json"
    argv = ["taskset", "-c", core, PY, str(BENCH / "loadgen.py"), "--timeout", str(timeout), "--out", str(out)]
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
    # The load tester (app/loadtest) of this tree, not whichever one the venv was installed from.
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    subprocess.run(argv, cwd=ROOT, env=env, check=True, timeout=timeout + 30, preexec_fn=raise_fd_limit)
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
