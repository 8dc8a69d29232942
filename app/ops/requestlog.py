"""The request log: at the end of every request exactly one line, on the ``token_relay.requests`` logger.

In the text format (the default) the line is ``request ID: key=value …``; with
``RELAY_LOG_FORMAT=json`` every log line, the relay's, uvicorn's and the access log's, is one JSON
object (``JsonFormatter``), and a request's line carries its fields at the top level.

Nothing in the line is secret: ``key`` is the key's name (a ``[[keys]]`` entry's; for a key of
``RELAY_API_KEYS``, ``key_`` and 16 hex digits of its SHA-256), and what a client chose
(its request id, its model name) goes through the same redaction as every other log line.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import msgspec

from app.ops.record import RequestRecord
from app.redaction import PRE_REDACTED, redact

REQUESTS_LOGGER = "token_relay.requests"
# The longest model name a line repeats, as a client sent it.
MAX_MODEL_CHARS = 128

_encode = msgspec.json.Encoder().encode


def fields(record: RequestRecord) -> dict[str, Any]:
    """The line's fields, in their order."""
    return {
        "request_id": redact(record.request_id),
        "key": record.key,
        "dialect": record.dialect,
        "model": None if record.model is None else redact(record.model[:MAX_MODEL_CHARS]),
        "upstream": record.upstream,
        "attempts": record.attempts,
        "outcome": record.outcome,
        "code": record.code,
        "phase": record.phase,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "tokens_estimated": record.estimated,
        "partial": record.partial,
        "ttft_ms": None if record.ttft is None else round(record.ttft * 1000, 3),
        "duration_ms": round(record.duration * 1000, 3),
        "status": record.status,
    }


class RequestLog:
    """An ``Observer``: the line of every request that ended."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(REQUESTS_LOGGER)

    def request_ended(self, record: RequestRecord) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        line = fields(record)
        text = " ".join(f"{name}={_text(value)}" for name, value in line.items() if name != "request_id")
        # Every text of the line a client chose went through redact() in fields(): the filter need not scan it again.
        self._logger.info("request %s: %s", line["request_id"], text, extra={"request": line, PRE_REDACTED: True})


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def json_head(created: float, levelname: str, name: str) -> dict[str, Any]:
    """What every JSON line begins with: its time (UTC, ISO 8601, to the millisecond), level and logger."""
    when = datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"time": when, "level": levelname.lower(), "logger": name}


def access_fields(args: tuple[Any, ...]) -> dict[str, Any]:
    """An access line's fields, from uvicorn's five arguments."""
    client, method, path, version, status = args
    return {"client": client, "method": method, "path": path, "http_version": version, "status": status}


def json_line(created: float, levelname: str, name: str, fields: dict[str, Any]) -> str:
    """A whole JSON line of ``fields`` (the access log's, without a ``LogRecord``: app/access_log.py)."""
    return _encode(json_head(created, levelname, name) | fields).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the request's fields (or the access log's) at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line = json_head(record.created, record.levelname, record.name)
        request = getattr(record, "request", None)
        if isinstance(request, dict):
            line.update(request)
        elif record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            line.update(access_fields(record.args))
        else:
            line["message"] = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return _encode(line).decode()
