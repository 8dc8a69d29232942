"""Running the service under uvicorn, in one process or several sharing one socket.

What is process-wide is the runner's, never ``create_app``'s: the open-files limit, the
collector, and the signals (uvicorn's own handlers; the graceful shutdown they start ends every
stream through ``RelayProtocol``, app/connections.py).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import logging
import os
import tempfile
from collections.abc import Iterator, MutableMapping
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors import Multiprocess

from app.access_log import AccessFormatter, DefaultFormatter, access_log_of
from app.connections import ConnectionGuard, OverCapacity, RelayProtocol
from app.log_stream import BatchedStreamHandler
from app.main import create_app, with_cors
from app.ops.requestlog import REQUESTS_LOGGER, JsonFormatter
from app.redaction import RedactTokens
from app.runtime import connection_limit, raise_open_files_limit
from app.settings import ENV_PREFIX, Settings

logger = logging.getLogger("token_relay")

# The loggers of a line per request, whose lines are written in batches (app/log_stream.py).
BATCHED_LOGGERS = ["uvicorn.access", REQUESTS_LOGGER]


# Container allocations (net of frees) between young collections. CPython's 700 ran 150 to 200 of
# them in a burst of 1,000 clients x 3 short answers, and with them 15 middle ones and a full one.
YOUNG_THRESHOLD = 10_000

# Where prometheus-client's multiprocess mode keeps every worker's metrics (read when it is imported).
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging, with the relay's own logger on the same handler, and no stream token on any handler.

    With ``log_format = "json"`` every handler writes one JSON object a line (app/ops/requestlog.py).
    """
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["token_relay"] = {"handlers": ["default"], "level": settings.log_level.upper(), "propagate": False}
    config["filters"] = {"redact_tokens": {"()": RedactTokens}}
    # The same lines, cheaper (app/access_log.py), written in batches by the event loop (app/log_stream.py).
    config["formatters"]["access"]["()"] = AccessFormatter
    config["formatters"]["default"]["()"] = DefaultFormatter
    if settings.log_format == "json":
        config["formatters"] = {"json": {"()": JsonFormatter}}
    for handler in ("default", "access"):
        config["handlers"][handler]["class"] = f"{BatchedStreamHandler.__module__}.{BatchedStreamHandler.__qualname__}"
        config["handlers"][handler]["filters"] = ["redact_tokens"]
        config["handlers"][handler]["batched"] = BATCHED_LOGGERS
        if settings.log_format == "json":
            config["handlers"][handler]["formatter"] = "json"
    return config


class RelayConfig(uvicorn.Config):
    """uvicorn's Config for the relay: it carries the settings, and builds the app from them.

    With ``--workers N``, uvicorn pickles the Config to each worker through a pipe
    (multiprocessing's spawn context), so the settings, client keys and stream secret among
    them, reach the workers that way and no other: not through the environment or the command
    line, which other processes can read in ``/proc``. ``environ`` holds the upstream keys named
    by ``api_key_env``, for the same reason; ``None`` reads them from this process's environment.

    Connections are served by ``RelayProtocol`` (app/connections.py): deadlines for a request's
    head and body, the cap on connections, and the drain of every stream at shutdown.
    """

    def __init__(self, settings: Settings, environ: dict[str, str] | None = None, **overrides: Any) -> None:
        self.settings = settings
        options: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "log_config": log_config(settings),
            "log_level": settings.log_level,
            "access_log": settings.access_log,
            # None leaves uvicorn's own default: FORWARDED_ALLOW_IPS, else 127.0.0.1 and ::1.
            "forwarded_allow_ips": None if settings.forwarded_allow_ips is None else list(settings.forwarded_allow_ips),
            # Streams are ended by the shutdown drain (app/connections.py); this bounds the wait for them.
            "timeout_graceful_shutdown": max(1, round(settings.drain_timeout)),
            "timeout_keep_alive": 5,
            "backlog": 4096,
        }
        super().__init__(functools.partial(create_app, settings, environ), factory=True, http=RelayProtocol, **(options | overrides))

    def load(self) -> None:
        """Runs in the process that serves (each worker): builds the app, what ``RelayProtocol`` needs, and sets up the collector."""
        super().load()
        limit = connection_limit(self.settings, raise_open_files_limit(self.settings))
        over_capacity = with_cors(OverCapacity(limit, self.settings.stream_busy_retry_ms), self.settings.cors_origins)
        self.guard = ConnectionGuard(self.settings, limit, over_capacity, access_log_of(logging.getLogger("uvicorn.access")))
        logger.info("taking up to %d connections (RELAY_MAX_CONNECTIONS)", limit)
        # What start-up built (modules, routes, the app) lives as long as the process: frozen,
        # it is out of every full collection's walk. Requests leave no cycles
        # (tests/streaming/test_garbage.py), so a collection finds nothing: the young
        # generation's threshold is raised from CPython's 700 allocations to YOUNG_THRESHOLD,
        # and a cycle that slips through is still freed, a little later.
        gc.collect()
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; with ``workers > 1`` in as many processes, on one socket."""
    if settings.workers == 1:
        # After a clean shutdown uvicorn re-raises the signal it caught; for SIGINT that is a
        # KeyboardInterrupt, which would print a traceback (uvicorn.run suppresses it too).
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(RelayConfig(settings)).run()
        return
    # Several workers need Redis, and Redis a stream secret (Settings checks both): every worker signs and checks the same URLs.
    with metrics_directory():
        config = RelayConfig(settings, withdraw_environment(settings), workers=settings.workers)
        Multiprocess(config, sockets=[config.bind_socket()]).run()


@contextlib.contextmanager
def metrics_directory(environ: MutableMapping[str, str] = os.environ) -> Iterator[str]:
    """The directory where the workers' metrics meet, set in the environment they inherit (each worker's
    prometheus-client reads it when it is imported there): a fresh one, removed afterwards, unless the
    operator set ``PROMETHEUS_MULTIPROC_DIR``, which is then theirs to empty before a start."""
    given = environ.get(METRICS_DIR_VARIABLE)
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="token-relay-metrics-") as path:
        environ[METRICS_DIR_VARIABLE] = path
        try:
            yield path
        finally:
            environ.pop(METRICS_DIR_VARIABLE, None)


def withdraw_environment(settings: Settings, environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Remove the settings' variables, and the upstream keys they name, from what worker processes
    inherit; return those keys, for the workers' Config."""
    names = {config.api_key_env for config in settings.upstream_list() if config.api_key_env is not None}
    keys = {name: environ[name] for name in names if name in environ}
    for name in [name for name in environ if name.startswith(ENV_PREFIX)] + list(keys):
        environ.pop(name, None)
    return keys
