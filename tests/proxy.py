"""A TCP proxy in front of a server, able to cut every connection at once: a network that drops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from tests.threaded import server_in_thread


class DroppingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the other side is gone, or drop() aborted this one: close below
        finally:
            writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((client_writer, server_writer))
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer))
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
