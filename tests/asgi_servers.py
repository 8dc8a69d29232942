"""The relay under ASGI servers other than uvicorn, each in a thread with its own (uvloop) event loop.

ASGI leaves servers room: ``send()`` returns some awaitable, ``receive()`` reports a disconnect
when the server sees one. The streaming tests marked ``under_every_server`` (tests/servers.py)
run the relay under each server here as well as under uvicorn, so that it relies on the
contract only. Both run the lifespan, with its ``state``, as uvicorn does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import granian.server.embed
import hypercorn.asyncio
import hypercorn.config
import uvloop
from granian.constants import Interfaces


@contextlib.contextmanager
def granian_server(app: Any) -> Iterator[str]:
    """granian's embedded server: its Rust core, on the uvloop loop its CLI would pick."""
    # granian binds the port itself, with SO_REUSEPORT: this socket holds the port for it
    # without listening, so no connection can land on it.
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    server = granian.server.embed.Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGI, log_enabled=False)
    try:
        with _on_a_loop_of_its_own(server.serve, server.stop):
            _wait_until_listening(port)  # granian listens once the lifespan has started
            yield f"http://127.0.0.1:{port}"
    finally:
        reserved.close()


@contextlib.contextmanager
def hypercorn_server(app: Any, **options: Any) -> Iterator[str]:
    """hypercorn; ``options`` set its Config's attributes (``certfile`` and ``keyfile`` serve TLS, with HTTP/2 by ALPN)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = hypercorn.config.Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
    config.graceful_timeout = 2
    config.loglevel = "WARNING"
    for name, value in options.items():
        setattr(config, name, value)
    scheme = "https" if config.ssl_enabled else "http"
    stopping = asyncio.Event()
    with _on_a_loop_of_its_own(lambda: hypercorn.asyncio.serve(app, config, shutdown_trigger=stopping.wait), stopping.set):
        _wait_until_listening(port)  # hypercorn too, once the lifespan has started
        yield f"{scheme}://127.0.0.1:{port}"


OTHER_SERVERS: dict[str, Callable[[Any], contextlib.AbstractContextManager[str]]] = {"granian": granian_server, "hypercorn": hypercorn_server}


@contextlib.contextmanager
def _on_a_loop_of_its_own(serve: Callable[[], Any], stop: Callable[[], None]) -> Iterator[None]:
    """Run ``serve()`` on a uvloop loop in a thread; at the end call ``stop`` on that loop, and wait."""
    loops: list[asyncio.AbstractEventLoop] = []

    def run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            loops.append(runner.get_loop())
            runner.run(serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        _wait_until(lambda: bool(loops), thread)
        yield
    finally:
        if loops:
            loops[0].call_soon_threadsafe(stop)
        thread.join(10)


def _wait_until_listening(port: int) -> None:
    def accepts() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    _wait_until(accepts, None)


def _wait_until(started: Callable[[], bool], thread: threading.Thread | None) -> None:
    deadline = time.monotonic() + 10
    while not started():
        if (thread is not None and not thread.is_alive()) or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
