"""A raw HTTP/1.1 client for tests that must control exactly when bytes are read."""

from __future__ import annotations

import json
import socket
from typing import Any

import anyio
import httptools
from anyio.abc import SocketAttribute, SocketStream


class Response:
    """A response's status and de-chunked body, parsed with httptools as bytes are fed."""

    def __init__(self) -> None:
        self.status = 0
        self.body = bytearray()
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


async def open_post(
    url: str, path: str, body: dict[str, Any], *, receive_buffer: int | None = None, request_id: str = "raw", headers: str = "",
) -> SocketStream:
    """Connect and send a POST, with ``headers`` (``"Name: value\\r\\n"`` lines) after the usual ones; nothing is read until the caller reads.

    Keep ``receive_buffer`` well above loopback's MSS (64 KiB): with a smaller one, a reader that
    resumes after a long pause never advertises a window the sender will use, and the transfer
    crawls along on the sender's backed-off zero-window probes.
    """
    data = json.dumps(body).encode()
    head = f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nX-Request-Id: {request_id}\r\n{headers}"
    return await _open(url, f"POST {path}", head, data, receive_buffer)


async def open_get(url: str, path: str, *, receive_buffer: int | None = None) -> SocketStream:
    """Connect and send a GET; nothing is read until the caller reads (see ``open_post``)."""
    return await _open(url, f"GET {path}", "", b"", receive_buffer)


async def open_request(url: str, request_line: str) -> SocketStream:
    """Connect and send a request without a body, its line (``"DELETE /path?query"``) exactly as given."""
    return await _open(url, request_line, "", b"", None)


async def _open(url: str, request_line: str, headers: str, body: bytes, receive_buffer: int | None) -> SocketStream:
    host, port = url.removeprefix("http://").split(":")
    stream = await anyio.connect_tcp(host, int(port))
    if receive_buffer is not None:
        stream.extra(SocketAttribute.raw_socket).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await stream.send(f"{request_line} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode() + body)
    return stream


async def read_until(stream: SocketStream, response: Response, *, body_contains: bytes | None = None) -> None:
    """Read until the response is complete (or the body contains ``body_contains``), or the peer closes."""
    while not response.complete and not (body_contains and body_contains in response.body):
        try:
            chunk = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
        response.parser.feed_data(chunk)
