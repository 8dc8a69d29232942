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
from uvicorn's five arguments, redacted as the filter would, and hands it to the handler.
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
from app.redaction import RedactTokens, redact

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


class AccessLog(logging.Logger):
    """The ``uvicorn.access`` logger as the relay's protocol calls it: each access line made and handed to the handler, no record.

    Only uvicorn's call (``info`` with its five arguments) takes the direct way; anything else,
    and a line ``line`` does not make, goes to the logger itself. The logger's level (and its
    ``disabled``) is read at every line, as logging would.
    """

    def __init__(self, logger: logging.Logger, handler: BatchedStreamHandler, line: Callable[[tuple[Any, ...]], str | None]) -> None:
        super().__init__(logger.name)
        self._logger, self._handler, self._line = logger, handler, line

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        text = self._line(tuple(redact(arg) if isinstance(arg, str) else arg for arg in args)) if len(args) == 5 and not kwargs else None
        if text is None:
            self._logger.info(msg, *args, **kwargs)
            return
        self._handler.write(text)


def access_log_of(logger: logging.Logger) -> AccessLog | None:
    """An ``AccessLog`` for ``logger`` when what it writes goes only through the relay's own handler, filter and formatter; else ``None``."""
    if logger.propagate or logger.filters or len(logger.handlers) != 1:
        return None
    handler = logger.handlers[0]
    if not isinstance(handler, BatchedStreamHandler) or handler.level > logging.INFO:
        return None
    if len(handler.filters) != 1 or not isinstance(handler.filters[0], RedactTokens):
        return None
    formatter = handler.formatter
    if isinstance(formatter, AccessFormatter) and formatter._direct:
        return AccessLog(logger, handler, lambda args: access_text("INFO", args))
    if type(formatter) is JsonFormatter:
        return AccessLog(logger, handler, lambda args: json_line(time.time(), "INFO", logger.name, access_fields(args)))
    return None
