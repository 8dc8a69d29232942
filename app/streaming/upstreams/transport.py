"""What ``Generation`` needs of an HTTP client, whichever it is: ``http1.Client`` (the fast path) or ``HttpxTransport``.

Both take the same ``Origin`` (where, through which proxy, with which TLS) and feed the same
``ResponseHandler`` (an adapter's, app/streaming/upstreams/handler.py): ``on_response`` with
the head, ``on_body`` per piece, then ``on_end`` or ``on_lost``. ``request`` returns once the
head has arrived, raising ``UpstreamConnectError``, ``UpstreamTimeout`` (``connect``, or
``first_token`` for the head) or ``UpstreamProtocolError``; the exchange's ``close()`` ends
the upstream request at once if its body has not ended, and the handler hears nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from app.streaming.upstreams.http1 import Origin, ResponseHandler


class Exchange(Protocol):
    status: int

    def close(self) -> None: ...


class Transport(Protocol):
    @property
    def closed(self) -> bool: ...

    async def request(
        self, origin: Origin, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes, handler: ResponseHandler, *,
        connect_timeout: float, head_timeout: float,
    ) -> Exchange: ...
