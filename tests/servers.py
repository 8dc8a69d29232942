"""Real uvicorn servers for the tests, each in its own thread with its own event loop.

A server listens on a socket the test binds first (port 0 on 127.0.0.1), so there is no
race for the port, and stops when its context exits.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from app.server import RelayConfig
from app.settings import Settings, load_settings
from app.streaming.upstreams.mock import MockModel


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def serve_in_thread(app: Any, **config: Any) -> contextlib.AbstractContextManager[str]:
    """Run ``app`` under uvicorn in a thread; yield its base URL ``http://127.0.0.1:PORT``."""
    return serve_config(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2, **config))


@contextlib.contextmanager
def serve_config(config: uvicorn.Config) -> Iterator[str]:
    """Run uvicorn with ``config`` in a thread; yield its base URL ``http://127.0.0.1:PORT``."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextlib.contextmanager
def mock_server(**options: Any) -> Iterator[tuple[MockModel, str]]:
    """A mock model server; yields it and its OpenAI base URL (``…/v1``)."""
    model = MockModel(**options)
    with serve_in_thread(model, lifespan="off") as url:
        yield model, url + "/v1"


def relay_settings(upstream: str | None, *, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"upstream": upstream, "access_log": False, "log_level": "warning"}
    values.update(overrides)
    return load_settings(values, environ=environ or {})


@contextlib.contextmanager
def relay_server(upstream: str | None, *, environ: dict[str, str] | None = None, **overrides: Any) -> Iterator[str]:
    """The relay, relaying to ``upstream``, served as the runner serves it; yields its base URL
    (``environ`` is what the settings are checked against)."""
    settings = relay_settings(upstream, environ=environ, **overrides)
    # The test process keeps its own logging (pytest's capture), and a short wait at the end.
    with serve_config(RelayConfig(settings, log_config=None, timeout_graceful_shutdown=2)) as url:
        yield url
