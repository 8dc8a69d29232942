"""The tests' raw servers end every connection's handler when they stop, so that no task is left pending on a closed loop."""

from __future__ import annotations

import asyncio
import socket

from tests.threaded import server_in_thread


def test_a_handler_still_running_when_the_server_stops_is_ended_not_abandoned() -> None:
    ended: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.Event().wait()  # a connection nobody closes
        finally:
            ended.append("handler")
            writer.close()

    loop = asyncio.new_event_loop()
    with server_in_thread(loop, handle, lambda server: server.close(), "test server") as port, \
            socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"x")
        client.settimeout(0.2)
        try:
            client.recv(1)  # the handler is running by now
        except TimeoutError:
            pass
    assert ended == ["handler"]
