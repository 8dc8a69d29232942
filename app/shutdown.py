"""Graceful shutdown: on SIGTERM or SIGINT, end every stream with a terminal event first.

uvicorn, on a signal, stops accepting and waits (up to its graceful-shutdown timeout, set
from ``drain_timeout``) for open responses to finish on their own; a stream would simply be
cut when that time ran out. The lifespan therefore chains a handler in front of uvicorn's:
it ends every generation in flight with a ``shutting_down`` error, which closes its
upstream and lets its writer send the terminal event, and then calls uvicorn's handler.
This works the same in one process and in each of ``--workers`` processes. Signals can only
be handled in the main thread; elsewhere (a server in a test thread) nothing is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def on_shutdown_signal(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` in the event loop when SIGTERM or SIGINT arrives, then the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handler(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous[sig]
        if callable(chained):
            chained(sig, frame)
        else:  # nobody else handles it: let the default action happen
            signal.signal(sig, chained)
            signal.raise_signal(sig)

    for each in SIGNALS:
        signal.signal(each, handler)
    try:
        yield
    finally:
        for number, chained in previous.items():
            signal.signal(number, chained)
