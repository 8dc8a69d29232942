"""CPU per log line, in-process: the access line as the relay's protocol writes it, and the request log's line.

Run from a tree (its ``app`` is measured); ``--tree DIR`` measures another one, e.g. a build
exported with ``git archive REV app | tar -x -C DIR``. Both lines go to a file, through the log
configuration the relay's ``serve`` uses, in the format given; the CPU counted is the process's,
the writer thread's included (every 500 lines the handlers are flushed, so nothing is dropped).

    .venv/bin/python bench/log_speed.py --format text
    .venv/bin/python bench/log_speed.py --format json --tree /tmp/old
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import uvloop


def _flush_all() -> None:
    for name in ("uvicorn.access", "token_relay"):
        for handler in logging.getLogger(name).handlers:
            handler.flush()


def measure(fn: Callable[[], None], lines: int, rounds: int) -> float:
    """Median µs of CPU per call of ``fn`` over ``rounds`` rounds of ``lines`` calls, on a running uvloop loop (as in the relay)."""

    async def run() -> float:
        start = time.process_time()
        for i in range(lines):
            fn()
            if i % 500 == 499:
                _flush_all()
        _flush_all()
        return (time.process_time() - start) / lines * 1e6

    return statistics.median(uvloop.run(run()) for _ in range(rounds))


def paced(fn: Callable[[], object], rate: float, seconds: float) -> float:
    """µs of CPU per call of ``fn``, called ``rate`` times a second for ``seconds`` on a uvloop loop idle in between (a relay at low load)."""
    calls = int(rate * seconds)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = time.process_time()
        began = loop.time()
        for i in range(calls):
            fn()
            await asyncio.sleep(max(0.0, began + (i + 1) / rate - loop.time()))
        await asyncio.sleep(0.2)  # the last batch's timer
        return time.process_time() - start

    return uvloop.run(run()) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--tree", help="the tree whose app/ is measured (default: this one)")
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--paced", type=float, help="requests a second: both lines of a request, then idle until the next (the writer's wake-ups counted)")
    parser.add_argument("--seconds", type=float, default=5.0, help="with --paced: for how long")
    args = parser.parse_args()
    sys.path.insert(0, args.tree or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

    from app.ops.record import RequestRecord
    from app.ops.requestlog import RequestLog
    from app.server import log_config
    from app.settings import Settings

    report = os.fdopen(os.dup(2), "w")  # the results, on the stderr the script was given
    out = tempfile.TemporaryFile()
    os.dup2(out.fileno(), 1)  # both streams to a file, as bench/procs.py runs a server
    os.dup2(out.fileno(), 2)
    logging.config.dictConfig(log_config(Settings(log_format=args.format)))
    access: logging.Logger = logging.getLogger("uvicorn.access")
    try:
        from app.access_log import access_log_of  # what the relay's protocol writes with, where it has one

        access = access_log_of(access) or access
    except ImportError:
        pass
    scope = {"client": ("127.0.0.1", 54321), "method": "POST", "path": "/v1/chat/completions", "query_string": b"", "http_version": "1.1"}
    record = RequestRecord("req_0123456789abcdef0123", "chat.completions", None)
    record.model, record.status, record.outcome = "mock", 200, "done"
    record.end()
    requests = RequestLog()

    def access_line() -> None:  # uvicorn's call, as in httptools_impl's send()
        access.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"], get_path_with_query_string(scope), scope["http_version"], 200)

    def request_line() -> None:
        requests.request_ended(record)

    if args.paced:
        results = {
            "nothing, paced (the loop's own cost)": paced(lambda: None, args.paced, args.seconds),
            "access line, paced": paced(access_line, args.paced, args.seconds),
            "request line, paced": paced(request_line, args.paced, args.seconds),
            "both lines, paced": paced(lambda: (access_line(), request_line()), args.paced, args.seconds),
        }
    else:
        results = {name: measure(fn, args.lines, args.rounds) for name, fn in (("access line", access_line), ("request line", request_line))}
    size = os.fstat(out.fileno()).st_size
    for name, value in results.items():
        report.write(f"{args.format} {name}: {value:.2f} µs\n")
    report.write(f"({size:,} bytes written)\n")


if __name__ == "__main__":
    main()
