"""``token-relay loadtest URL…``: the arguments, the run, and what is printed.

The summary table goes to stdout (``--json``: the summary as JSON instead), the live
progress line to stderr when it is a terminal. Exit status: 0 when every stream ended well
(or was closed by the tester), 1 when any failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from app.loadtest.runner import LoadConfig, Runner
from app.loadtest.target import APIS, Target, TargetError, build_target, parse_header

EPILOG = """\
examples:
  token-relay loadtest http://127.0.0.1:8000/v1/chat/completions --streams 100 --ramp 2 --requests 1000
  token-relay loadtest http://127.0.0.1:8000/v1/generate -n 50 --duration 30 --plot run.png
  token-relay loadtest https://api.example.com/v1/chat/completions -H 'Authorization: Bearer KEY' --model gpt-4o-mini -n 5
  token-relay loadtest 'http://127.0.0.1:8000/v1/streams/abc/events' -n 200 --json > run.json
"""


def add_parser(commands: Any) -> None:
    """Add the ``loadtest`` subcommand to ``commands`` (the CLI's subparsers)."""
    p: argparse.ArgumentParser = commands.add_parser(
        "loadtest", help="open many concurrent SSE streams and report how each ended",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", nargs="+", help="the stream URL(s); with several, streams go round-robin")
    load = p.add_argument_group("load")
    load.add_argument("-n", "--streams", type=_positive_int, default=10, help="concurrent streams (default 10)")
    load.add_argument("--requests", type=_positive_int, help="streams in all (default: --streams)")
    load.add_argument("--duration", type=_positive_float, help="keep --streams streams going for this many seconds instead")
    load.add_argument("--ramp", type=_non_negative_float, default=0.0, help="seconds over which the first --streams streams start")
    load.add_argument("--close-after", type=_positive_int, default=0, metavar="K", help="close each stream after K content events")
    request = p.add_argument_group("request")
    request.add_argument("-X", "--method", help="default POST with a body, GET without (EventSource)")
    request.add_argument("-H", "--header", action="append", default=[], help="'Name: value', repeatable")
    request.add_argument("-d", "--body", help="the request body, or @FILE (default: one made for the URL's API)")
    request.add_argument("--api", choices=APIS, help="how to read the stream (default: from the path)")
    request.add_argument("--model", default="mock", help="model for the default OpenAI body (default mock)")
    request.add_argument("--prompt", default="Tell me a story about token relays.", help="prompt for the default body")
    request.add_argument("--max-tokens", type=_positive_int, default=64, help="max_tokens for the default body (default 64)")
    request.add_argument("--request-id-prefix", metavar="PREFIX", help="send X-Request-Id: PREFIX-<index>")
    request.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    limits = p.add_argument_group("limits (seconds; 0 for none)")
    limits.add_argument("--connect-timeout", type=_non_negative_float, default=10.0)
    limits.add_argument("--head-timeout", type=_non_negative_float, default=30.0, help="request to response head")
    limits.add_argument("--first-token-timeout", type=_non_negative_float, default=60.0, help="request to first output (content, reasoning, a tool call)")
    limits.add_argument("--idle-timeout", type=_non_negative_float, default=30.0, help="between outputs of any kind")
    limits.add_argument("--stream-timeout", type=_non_negative_float, default=0.0, help="a whole stream")
    output = p.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    output.add_argument("--per-stream", action="store_true", help="with --json: add one record per stream")
    output.add_argument("--plot", metavar="FILE.png", help="draw the latency distributions and streams over time (needs matplotlib)")
    output.add_argument("--no-progress", action="store_true", help="no live progress line, even on a terminal")


def run(args: argparse.Namespace) -> int:
    try:
        targets = _targets(args)
    except (TargetError, OSError) as exc:
        print(f"token-relay loadtest: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    config = LoadConfig(
        streams=args.streams, requests=args.requests, duration=args.duration, ramp=args.ramp,
        connect_timeout=args.connect_timeout, head_timeout=args.head_timeout, first_timeout=args.first_token_timeout,
        idle_timeout=args.idle_timeout, stream_timeout=args.stream_timeout, close_after=args.close_after,
        id_prefix=args.request_id_prefix, verify_tls=not args.insecure, keep_records=args.per_stream,
    )
    raise_fd_limit(args.streams + 64)
    from app.loadtest.report import Progress, table
    from app.loadtest.stats import summarize

    progress = Progress(sys.stderr) if sys.stderr.isatty() and not args.no_progress else None
    runner = Runner(targets, config, on_tick=progress)
    try:
        _event_loop_run(_run(runner))
    finally:
        if progress is not None:
            progress.close()
    summary = summarize(runner)
    if args.plot:
        from app.loadtest.plot import PlotUnavailable, plot

        try:
            plot(args.plot, summary, runner.ttft, runner.gaps)
        except PlotUnavailable as exc:
            print(f"token-relay loadtest: {exc}", file=sys.stderr)  # noqa: T201
            return 2
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        sys.stdout.write(table(summary) + "\n")
    return 1 if runner.failed else 0


async def _run(runner: Runner) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, runner.stop)  # Ctrl-C ends the run and still reports
    try:
        await runner.run()
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _event_loop_run(main: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def raise_fd_limit(needed: int) -> None:
    """Raise this process's soft limit on open files towards ``needed`` (never past the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard), hard))


def _targets(args: argparse.Namespace) -> list[Target]:
    body: bytes | None = None
    if args.body is not None:
        body = Path(args.body[1:]).read_bytes() if args.body.startswith("@") else args.body.encode()
    headers = [parse_header(h) for h in args.header]
    return [
        build_target(url, method=args.method, headers=headers, body=body, api=args.api, model=args.model, prompt=args.prompt, max_tokens=args.max_tokens)
        for url in args.url
    ]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value
