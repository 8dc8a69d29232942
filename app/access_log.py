"""uvicorn's log lines, formatted the same at a fraction of the cost, and the access log written without logging's records.

The access log is on by default, so it is paid by every request. uvicorn's formatters copy
each record to add its level prefix, and ``AccessFormatter`` also looks the status phrase up
in ``http.HTTPStatus`` and formats a message its format does not show. For the formats uvicorn
configures by default, without colours, ``AccessFormatter`` and ``DefaultFormatter`` write the
same line directly, the status phrase taken from a table built once; any other format, colours,
or a record they do not expect go to uvicorn's.

Past the formatter, logging itself costs a line more than the format: a ``LogRecord``, the
caller's frame, the handler's lock, the filter. When the ``uvicorn.access`` logger writes
through the relay's own configuration alone (``access_log_of``), the relay's protocol
(app/connections.py) is given an ``AccessLog`` instead: it makes the same line, text or JSON,
from uvicorn's five arguments, redacted as the filter would, and hands it to the handler. The
request log is given ``RequestLines`` likewise (``request_lines_of``): its line is redacted
where it is made.
"""

from __future__ import annotations

import http
import logging
import time
from collections.abc import Callable
from typing import Any

from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter as UvicornAccessFormatter
from uvicorn.logging import DefaultFormatter as UvicornDefaultFormatter

from app.log_stream import BatchedStreamHandler
from app.ops.requestlog import JsonFormatter, access_fields, json_line
from app.redaction import PRE_REDACTED, RedactTokens, redact

# uvicorn's own default formats: the lines written directly.
DEFAULT_FORMAT: str = LOGGING_CONFIG["formatters"]["access"]["fmt"]
DEFAULT_MESSAGE_FORMAT: str = LOGGING_CONFIG["formatters"]["default"]["fmt"]
_STATUS = {status.value: f"{status.value} {status.phrase}" for status in http.HTTPStatus}
_PADDING = {name: name + ":" + " " * (8 - len(name)) for name in logging.getLevelNamesMapping()}


def _prefix(levelname: str) -> str:
    """uvicorn's ``levelprefix``: the level's name, its colon, and the padding to 9 characters."""
    return _PADDING.get(levelname) or levelname + ":" + " " * (8 - len(levelname))


def access_text(levelname: str, args: tuple[Any, ...]) -> str | None:
    """The access line of uvicorn's default format for its five arguments, or ``None`` for a status without a phrase."""
    client_addr, method, path, version, status = args
    phrase = _STATUS.get(status) if type(status) is int else None
    if phrase is None:
        return None
    return f'{_prefix(levelname)} {client_addr} - "{method} {path} HTTP/{version}" {phrase}'


class AccessFormatter(UvicornAccessFormatter):
    """uvicorn's ``AccessFormatter``, with a direct path for its default format without colours."""

    def __init__(self, fmt: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(fmt, *args, **kwargs)
        self._direct = fmt == DEFAULT_FORMAT and not self.use_colors

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if not self._direct or type(args) is not tuple or len(args) != 5 or record.exc_info or record.stack_info:
            return super().format(record)
        return access_text(record.levelname, args) or super().format(record)


class DefaultFormatter(UvicornDefaultFormatter):
    """uvicorn's ``DefaultFormatter``, without its copy of each record for its default format without colours."""

    def __init__(self, fmt: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(fmt, *args, **kwargs)
        self._direct = fmt == DEFAULT_MESSAGE_FORMAT and not self.use_colors

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not self._direct:
            return super().formatMessage(record)
        return f"{_prefix(record.levelname)} {record.message}"


class _Direct(logging.Logger):
    """A stand-in for ``logger`` whose lines of one known call are made directly and handed to ``handler``; its level is the logger's."""

    def __init__(self, logger: logging.Logger, handler: BatchedStreamHandler) -> None:
        super().__init__(logger.name)
        self._logger, self._handler = logger, handler

    def isEnabledFor(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)


class AccessLog(_Direct):
    """The ``uvicorn.access`` logger as the relay's protocol calls it: each access line made and handed to the handler, no record.

    Only uvicorn's call (``info`` with its five arguments) takes the direct way; anything else,
    and a line ``line`` does not make, goes to the logger itself. The logger's level (and its
    ``disabled``) is read at every line, as logging would.
    """

    def __init__(self, logger: logging.Logger, handler: BatchedStreamHandler, line: Callable[[tuple[Any, ...]], str | None]) -> None:
        super().__init__(logger, handler)
        self._line = line

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        text = self._line(tuple(redact(arg) if isinstance(arg, str) else arg for arg in args)) if len(args) == 5 and not kwargs else None
        if text is None:
            self._logger.info(msg, *args, **kwargs)
            return
        self._handler.write(text)


class RequestLines(_Direct):
    """The request log's logger as ``RequestLog`` calls it (app/ops/requestlog.py): its line, redacted already, made and handed to the handler.

    Only a call whose ``extra`` has the request's fields and ``PRE_REDACTED`` takes the direct way.
    """

    def __init__(self, logger: logging.Logger, handler: BatchedStreamHandler, line: Callable[[str, dict[str, Any]], str]) -> None:
        super().__init__(logger, handler)
        self._line = line

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        extra = kwargs.get("extra")
        if kwargs.keys() != {"extra"} or not isinstance(extra, dict) or extra.get(PRE_REDACTED) is not True or not isinstance(extra.get("request"), dict):
            self._logger.info(msg, *args, **kwargs)
            return
        self._handler.write(self._line(str(msg) % args, extra["request"]))


def _relays_handler(logger: logging.Logger) -> BatchedStreamHandler | None:
    """The one handler every record of ``logger`` reaches, if it is the relay's own (batching ``logger``'s lines, redacting, at INFO).

    And nothing filters on the way.
    """
    current: logging.Logger | None = logger
    while current is not None and not current.filters:
        if current.handlers:
            handler = current.handlers[0]
            if current.propagate or len(current.handlers) != 1 or not isinstance(handler, BatchedStreamHandler):
                return None
            if logger.name not in handler.batched or handler.level > logging.INFO:
                return None
            return handler if len(handler.filters) == 1 and isinstance(handler.filters[0], RedactTokens) else None
        current = current.parent if current.propagate else None
    return None


def access_log_of(logger: logging.Logger) -> AccessLog | None:
    """An ``AccessLog`` for ``logger`` when what it writes goes only through the relay's own handler, filter and formatter; else ``None``."""
    handler = _relays_handler(logger)
    if handler is None:
        return None
    formatter = handler.formatter
    if isinstance(formatter, AccessFormatter) and formatter._direct:
        return AccessLog(logger, handler, lambda args: access_text("INFO", args))
    if type(formatter) is JsonFormatter:
        return AccessLog(logger, handler, lambda args: json_line(time.time(), "INFO", logger.name, access_fields(args)))
    return None


def request_lines_of(logger: logging.Logger) -> RequestLines | None:
    """``RequestLines`` for the request log's ``logger`` when its records go only through the relay's own handler, filter and formatter."""
    handler = _relays_handler(logger)
    if handler is None:
        return None
    formatter = handler.formatter
    if isinstance(formatter, DefaultFormatter) and formatter._direct:
        return RequestLines(logger, handler, lambda message, fields: f"{_prefix('INFO')} {message}")
    if type(formatter) is JsonFormatter:
        return RequestLines(logger, handler, lambda message, fields: json_line(time.time(), "INFO", logger.name, fields))
    return None
