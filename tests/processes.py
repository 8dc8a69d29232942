"""The relay as users run it, ``python -m app serve`` in processes of its own, each stopped by its pid."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import httpx

from tests.servers import bound_socket

START_TIMEOUT = 20.0


class Start(Protocol):
    def __call__(self, *args: str, preexec_fn: Callable[[], None] | None = None, **env: str) -> tuple[subprocess.Popen[bytes], str]: ...


def free_port() -> int:
    sock = bound_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@contextlib.contextmanager
def relay_processes() -> Iterator[Start]:
    """``start(*args, **env)`` runs a relay on a free port and returns once its /readyz answers 200; all stop afterwards."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str, preexec_fn: Callable[[], None] | None = None, **env: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port), *args],
            env={**os.environ, "RELAY_ACCESS_LOG": "false", **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    return process, url
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the relay did not start: {process.stdout.read() if process.stdout else ''}")
            time.sleep(0.05)

    try:
        yield start
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()  # not kill(): a parent killed outright leaves its worker processes running
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
            process.wait(10)
            if process.stdout:
                process.stdout.close()
