"""An asyncio TCP server on a loop of its own, in a thread: the raw servers of the tests (a proxy, a hostile model server)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.contextmanager
def server_in_thread(loop: asyncio.AbstractEventLoop, handle: Handler, stop: Callable[[asyncio.Server], None], what: str) -> Iterator[int]:
    """Serve ``handle`` on 127.0.0.1 from ``loop`` in a thread; yield the port. At the end ``stop(server)`` runs on the loop."""
    started = threading.Event()
    servers: list[asyncio.Server] = []

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # close() ends serve_forever so
            await server.serve_forever()
        # The connections' handlers end with the server: none is left pending when the loop closes.
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(5) or not servers:
        raise RuntimeError(f"the {what} did not start")
    try:
        yield servers[0].sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(stop, servers[0])
        thread.join(5)
        loop.close()
