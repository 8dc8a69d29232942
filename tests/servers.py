"""Real uvicorn servers for the tests, each in its own thread with its own event loop.

A server listens on a socket the test binds first (port 0 on 127.0.0.1), so there is no
race for the port, and stops when its context exits. The streaming tests marked
``under_every_server`` run the relay under granian and hypercorn too (tests/asgi_servers.py).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from app.main import create_app
from app.mock import MockModel
from app.server import RelayConfig
from app.settings import Settings, load_settings
from tests.asgi_servers import OTHER_SERVERS

SERVERS = ("uvicorn", *OTHER_SERVERS)
under_every_server = pytest.mark.parametrize("asgi_server", SERVERS, indirect=True)
"""Runs a test once per ASGI server: the test, or its relay's fixture, takes ``asgi_server`` (tests/conftest.py)."""

TRANSPORTS = ("http1", "httpx")
"""The relay's HTTP clients to its upstreams; a relay fixture that takes ``transport`` (tests/streaming/conftest.py) runs over each."""


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


def relay_settings(upstream: str | None, *, environ: dict[str, str] | None = None, transport: str | None = None, **overrides: Any) -> Settings:
    """The relay's settings; with ``transport``, the one ``upstream`` (or each of ``upstreams``) is reached with that HTTP client."""
    values: dict[str, Any] = {"upstream": upstream, "access_log": False, "log_level": "warning"}
    values.update(overrides)
    if transport is not None:
        if upstream is not None:  # the shorthand has no transport: the same upstream, spelled out
            values["upstream"] = None
            values["upstreams"] = [{"name": "default", "base_url": upstream, "protocol": values.pop("protocol", "openai")}]
        values["upstreams"] = [{"transport": transport} | dict(config) for config in values["upstreams"]]
    return load_settings(values, environ=environ or {})


@contextlib.contextmanager
def relay_server(
    upstream: str | None, *, server: str = "uvicorn", environ: dict[str, str] | None = None, transport: str | None = None, **overrides: Any,
) -> Iterator[str]:
    """The relay under ``server``, relaying to ``upstream``; yields its base URL (``environ`` is what the settings are checked against).

    Under uvicorn it is served as the runner serves it (``RelayConfig``), with the test process's own logging (pytest's capture).
    """
    settings = relay_settings(upstream, environ=environ, transport=transport, **overrides)
    if server == "uvicorn":
        served = serve_config(RelayConfig(settings, log_config=None, timeout_graceful_shutdown=2))
    else:
        served = OTHER_SERVERS[server](create_app(settings))
    with served as url:
        yield url
