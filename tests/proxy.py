"""A TCP proxy in front of a server, able to cut every connection at once: a network that drops."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


class DroppingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

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
        started = threading.Event()

        async def main() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            started.set()
            with contextlib.suppress(asyncio.CancelledError):  # close() ends serve_forever so
                await self._server.serve_forever()
            await self._server.wait_closed()

        thread = threading.Thread(target=self._loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        if not started.wait(5) or self._server is None:
            raise RuntimeError("the proxy did not start")
        port = self._server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self.drop()
            self._loop.call_soon_threadsafe(self._server.close)
            thread.join(5)
            self._loop.close()
