"""Running the service under uvicorn, in one process or several sharing one socket."""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors import Multiprocess

from app.main import SETTINGS_ENV, create_app
from app.settings import Settings, settings_to_json


def log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging, with the relay's own logger on the same handler."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["token_relay"] = {"handlers": ["default"], "level": settings.log_level.upper(), "propagate": False}
    return config


def uvicorn_config(settings: Settings, app: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=log_config(settings),
        log_level=settings.log_level,
        access_log=settings.access_log,
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
    os.environ[SETTINGS_ENV] = settings_to_json(settings)
    config = uvicorn_config(settings, "app.main:create_app_from_environment")
    config.factory = True
    config.workers = settings.workers
    Multiprocess(config, sockets=[config.bind_socket()]).run()
