"""A real ``redis-server`` for the tests: on a free loopback port, nothing persisted, stopped by its pid.

Redis cannot be asked for a free port (``--port 0`` means "no TCP"), so a port is taken from
the kernel and released just before Redis binds it; if another process grabs it in between,
Redis exits at once and another port is tried.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.processes import free_port

REDIS_SERVER = os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")
START_TIMEOUT = 10.0
ATTEMPTS = 5


class RedisServer:
    """One ``redis-server`` process; ``kill()`` and ``restart()`` are for fault tests."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on a free port, or on the same port as before once it has run."""
        for _ in range(ATTEMPTS):
            port = self.port or free_port()
            if self._start_on(port):
                self.port = port
                return
        raise RuntimeError(f"redis-server did not start; its log: {self._log().read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, as a lost host or an OOM kill would end it: no goodbye to the clients."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def restart(self) -> None:
        """Kill it and start it again, empty, on the same port (the clients keep their URL)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def _start_on(self, port: int) -> bool:
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(self.directory), "--logfile", str(self._log())]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # most likely the port was taken meanwhile
            if _answers_ping(port):
                return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT:g} s")

    def _log(self) -> Path:
        return self.directory / "redis.log"


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="relay-redis-") as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()
