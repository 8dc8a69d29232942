"""Proxies for the tests: a TCP one able to cut every connection at once (a network that drops), and an HTTP egress proxy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

from tests.threaded import server_in_thread


class DroppingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((client_writer, server_writer))
        try:
            await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))
        finally:
            self._writers.difference_update((client_writer, server_writer))

    def drop(self) -> None:
        """Reset every open connection, as a network failure would."""

        def abort() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(abort)

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """Run the proxy in a thread; yield its base URL."""

        def stop(server: asyncio.Server) -> None:  # on the proxy's loop
            for writer in list(self._writers):
                writer.transport.abort()
            server.close()

        with server_in_thread(self._loop, self._handle, stop, "proxy") as port:
            yield f"http://127.0.0.1:{port}"


class ForwardProxy:
    """An HTTP proxy on loopback, as an egress proxy is: it opens CONNECT tunnels and forwards requests in absolute form.

    It records the first request line of each connection (``CONNECT host:port``, or ``POST
    http://host:port/path``) and its ``Proxy-Authorization``; with ``authorization`` set, any
    other answer gets 407, and nothing reaches the upstream.
    """

    def __init__(self, authorization: str | None = None) -> None:
        self.authorization = authorization
        self.requests: list[tuple[str, str | None]] = []
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line, *fields = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = dict(field.split(": ", 1) for field in fields if field)
        authorization = next((value for name, value in headers.items() if name.lower() == "proxy-authorization"), None)
        self.requests.append((f"{method} {target}", authorization))
        if self.authorization is not None and authorization != self.authorization:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        where = target if method == "CONNECT" else urlsplit(target).netloc
        host, _, port = where.rpartition(":")
        server_reader, server_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            server_writer.write(head)  # an origin server must take the absolute form too (RFC 9112 §3.2.2)
        self._writers.update((writer, server_writer))
        try:
            await asyncio.gather(_pipe(reader, server_writer), _pipe(server_reader, writer))
        finally:
            self._writers.difference_update((writer, server_writer))

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """Run the proxy in a thread; yield its URL (``http://127.0.0.1:PORT``)."""

        def stop(server: asyncio.Server) -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            server.close()

        with server_in_thread(self._loop, self._handle, stop, "forward proxy") as port:
            yield f"http://127.0.0.1:{port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass  # the other side is gone, or a drop aborted this one: close below
    finally:
        writer.close()
