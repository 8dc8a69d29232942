"""Running the service under uvicorn, in one process or several sharing one socket."""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import secrets
from typing import Any

import msgspec
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors import Multiprocess

from app.main import SETTINGS_ENV, create_app
from app.redaction import RedactTokens
from app.settings import Settings, settings_to_json


def log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging, with the relay's own logger on the same handler, and no stream token on any handler."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["token_relay"] = {"handlers": ["default"], "level": settings.log_level.upper(), "propagate": False}
    config["filters"] = {"redact_tokens": {"()": RedactTokens}}
    for handler in ("default", "access"):
        config["handlers"][handler]["filters"] = ["redact_tokens"]
    return config


class RelayConfig(uvicorn.Config):
    """uvicorn's config; loading the app, once in each process that serves, also sets up its collector."""

    def load(self) -> None:
        super().load()
        # What start-up built (modules, routes, the app) lives as long as the process: frozen,
        # it is out of every full collection's walk. The thresholds stay CPython's: requests
        # leave no cycles (tests/streaming/test_garbage.py), so collections are rare and short,
        # and a cycle that slips through is still freed.
        gc.collect()
        gc.freeze()


def uvicorn_config(settings: Settings, app: object) -> uvicorn.Config:
    return RelayConfig(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=log_config(settings),
        log_level=settings.log_level,
        access_log=settings.access_log,
        # None leaves uvicorn's own default: FORWARDED_ALLOW_IPS, else 127.0.0.1 and ::1.
        forwarded_allow_ips=None if settings.forwarded_allow_ips is None else list(settings.forwarded_allow_ips),
        # Streams are ended by the shutdown drain (app/shutdown.py); this bounds the wait for them.
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout)),
        timeout_keep_alive=5,
        backlog=4096,
    )


def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; with ``workers > 1`` in as many processes, on one socket."""
    if settings.workers == 1:
        # After a clean shutdown uvicorn re-raises the signal it caught; for SIGINT that is a
        # KeyboardInterrupt, which would print a traceback (uvicorn.run suppresses it too).
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(uvicorn_config(settings, create_app(settings))).run()
        return
    if settings.stream_secret is None:  # every worker must accept the stream URLs any of them signed
        settings = msgspec.structs.replace(settings, stream_secret=secrets.token_urlsafe(32))
    os.environ[SETTINGS_ENV] = settings_to_json(settings)
    config = uvicorn_config(settings, "app.main:create_app_from_environment")
    config.factory = True
    config.workers = settings.workers
    Multiprocess(config, sockets=[config.bind_socket()]).run()
