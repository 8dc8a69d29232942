"""The ``token-relay`` command: ``serve`` (the relay), ``mock`` (the mock model server) and ``loadtest``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from app.loadtest import cli as loadtest_cli
from app.settings import PROTOCOLS, SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="token-relay", description="Relay LLM token streams to clients as Server-Sent Events.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the relay (on the embedded mock model server unless --upstream is given)")
    serve.add_argument("--host", help="address to bind (RELAY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (RELAY_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (RELAY_WORKERS, else WEB_CONCURRENCY, default 1)")
    serve.add_argument("--upstream", help="base URL of an OpenAI-compatible model server, ending in /v1 (RELAY_UPSTREAM)")
    serve.add_argument("--protocol", choices=PROTOCOLS, help="the upstream's protocol (RELAY_PROTOCOL, default openai)")
    serve.add_argument("--config", help="a TOML file of settings (RELAY_CONFIG)")

    mock = commands.add_parser("mock", help="run the mock model server alone")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8001)
    mock.add_argument("--ttft", type=float, help="seconds before the first token (RELAY_MOCK_TTFT, default 0.2)")
    mock.add_argument("--interval", type=float, help="seconds between tokens (RELAY_MOCK_INTERVAL, default 0.02)")
    mock.add_argument("--tokens", type=int, help="tokens per answer (RELAY_MOCK_TOKENS, default 64)")
    mock.add_argument("--config", help="a TOML file of settings (RELAY_CONFIG)")

    loadtest_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "loadtest":
        return loadtest_cli.run(args)
    try:
        if args.command == "serve":
            workers = args.workers
            if workers is None and "RELAY_WORKERS" not in os.environ and os.environ.get("WEB_CONCURRENCY"):
                workers = os.environ["WEB_CONCURRENCY"]
            overrides = {"host": args.host, "port": args.port, "workers": workers, "upstream": args.upstream, "protocol": args.protocol}
            settings = load_settings(overrides, config_file=args.config)
        else:
            overrides = {"mock_ttft": args.ttft, "mock_interval": args.interval, "mock_tokens": args.tokens}
            settings = load_settings(overrides, config_file=args.config)
    except SettingsError as exc:
        print(f"token-relay: {exc}", file=sys.stderr)  # noqa: T201
        return 2

    if args.command == "serve":
        from app.server import serve

        serve(settings)
    else:
        import uvicorn

        from app.mock import MockModel

        model = MockModel(ttft=settings.mock_ttft, interval=settings.mock_interval, tokens=settings.mock_tokens)
        uvicorn.run(model, host=args.host, port=args.port, log_level=settings.log_level, access_log=False, lifespan="off")
    return 0
