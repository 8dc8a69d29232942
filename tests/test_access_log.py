"""The relay's access formatter writes uvicorn's access line, character for character; its access log the same line without a record."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest
from uvicorn.logging import AccessFormatter as UvicornAccessFormatter
from uvicorn.logging import DefaultFormatter as UvicornDefaultFormatter

from app.access_log import DEFAULT_FORMAT, DEFAULT_MESSAGE_FORMAT, AccessFormatter, DefaultFormatter, access_log_of, request_lines_of
from app.capability import SIGNATURE_LENGTH
from app.log_stream import BatchedStreamHandler
from app.ops.record import RequestRecord
from app.ops.requestlog import JsonFormatter, RequestLog
from app.redaction import RedactTokens
from app.server import log_config
from app.settings import Settings
from app.streaming.events import Usage


def _record(*args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", level, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)


@pytest.mark.parametrize(
    "args",
    [
        ("127.0.0.1:54321", "POST", "/v1/chat/completions", "1.1", 200),
        ("[::1]:8000", "GET", "/v1/streams/st_a/events?last_event_id=3", "1.1", 404),
        ("10.0.0.5:1", "DELETE", "/v1/streams/st_a", "1.0", 503),
        ("-", "GET", "/healthz", "2", 599),  # no phrase for it
        ("127.0.0.1:1", "GET", "/", "1.1", 101),
    ],
)
@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_the_line_is_uvicorns(args: tuple[object, ...], level: int) -> None:
    ours, uvicorns = AccessFormatter(DEFAULT_FORMAT, use_colors=False), UvicornAccessFormatter(DEFAULT_FORMAT, use_colors=False)
    assert ours.format(_record(*args, level=level)) == uvicorns.format(_record(*args, level=level))


@pytest.mark.parametrize(
    ("fmt", "colours"),
    [(DEFAULT_FORMAT, True), ('%(asctime)s %(client_addr)s - "%(request_line)s" %(status_code)s', False), ("%(request_line)s", False)],
)
def test_other_formats_and_colours_are_uvicorns_own(fmt: str, colours: bool) -> None:
    record = _record("127.0.0.1:5000", "GET", "/v1/models", "1.1", 200)
    record.created = 0.0  # the same asctime for both
    ours, uvicorns = AccessFormatter(fmt, use_colors=colours), UvicornAccessFormatter(fmt, use_colors=colours)
    assert ours.format(record) == uvicorns.format(record)
    assert ours._direct is False


def test_a_record_it_does_not_expect_is_formatted_by_uvicorn() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s %s", ("a", "b"), None)
    with pytest.raises(ValueError):  # uvicorn's formatter needs its five arguments: the direct path does not hide that
        AccessFormatter(DEFAULT_FORMAT, use_colors=False).format(record)


def test_the_relays_log_config_uses_it() -> None:
    formatter = log_config(Settings())["formatters"]["access"]
    assert formatter["()"] is AccessFormatter and formatter["fmt"] == DEFAULT_FORMAT


def _access_logger(formatter: logging.Formatter, stream: io.StringIO) -> logging.Logger:
    """A ``uvicorn.access`` logger as the relay's log config makes it (a logger of its own, not the process's)."""
    logger = logging.Logger("uvicorn.access", logging.INFO)
    logger.propagate = False
    handler = BatchedStreamHandler(stream, batched=["uvicorn.access"], delay=60)
    handler.setFormatter(formatter)
    handler.addFilter(RedactTokens())
    logger.addHandler(handler)
    return logger


def _written(logger: logging.Logger, stream: io.StringIO) -> list[str]:
    logger.handlers[0].flush()
    lines = stream.getvalue().splitlines()
    stream.truncate(0)
    stream.seek(0)
    return lines


UVICORNS_CALL = '%s - "%s %s HTTP/%s" %d'
TOKEN = "1700000000." + "A" * SIGNATURE_LENGTH


@pytest.mark.parametrize(
    "args",
    [
        ("127.0.0.1:54321", "POST", "/v1/chat/completions", "1.1", 200),
        ("[::1]:8000", "GET", f"/v1/streams/st_a/events?token={TOKEN}&last_event_id=3", "1.1", 404),
        ("10.0.0.5:1", "GET", f"/v1/streams/{TOKEN}/events", "1.0", 401),
        ("-", "GET", "/healthz", "2", 599),  # no phrase: uvicorn's formatter
    ],
)
@pytest.mark.parametrize("json_format", [False, True])
def test_the_access_log_writes_the_line_logging_would(args: tuple[object, ...], json_format: bool) -> None:
    """The same line, redacted the same, as the logger through its handler, its filter and its formatter."""
    stream = io.StringIO()
    logger = _access_logger(JsonFormatter() if json_format else AccessFormatter(DEFAULT_FORMAT, use_colors=False), stream)
    direct = access_log_of(logger)
    assert direct is not None
    logger.info(UVICORNS_CALL, *args)
    direct.info(UVICORNS_CALL, *args)
    through_logging, without_a_record = _written(logger, stream)
    if json_format:
        through_logging, without_a_record = (json.loads(line) | {"time": None} for line in (through_logging, without_a_record))
    assert without_a_record == through_logging
    assert TOKEN not in str(without_a_record)


@pytest.fixture
def uvicorns_access_logger() -> Iterator[logging.Logger]:
    """The process's ``uvicorn.access`` logger, put back as it was afterwards (its level is cached by the logging manager)."""
    logger = logging.getLogger("uvicorn.access")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:], logger.propagate = handlers, propagate
    logger.setLevel(level)


def test_the_access_log_follows_the_loggers_level(uvicorns_access_logger: logging.Logger) -> None:
    stream = io.StringIO()
    logger = uvicorns_access_logger
    logger.handlers[:] = _access_logger(AccessFormatter(DEFAULT_FORMAT, use_colors=False), stream).handlers
    logger.propagate = False
    logger.setLevel(logging.INFO)
    direct = access_log_of(logger)
    assert direct is not None
    logger.setLevel(logging.WARNING)  # RELAY_LOG_LEVEL=warning
    direct.info(UVICORNS_CALL, "127.0.0.1:1", "GET", "/", "1.1", 200)
    logger.setLevel(logging.INFO)
    direct.info(UVICORNS_CALL, "127.0.0.1:2", "GET", "/", "1.1", 200)
    assert _written(logger, stream) == ['INFO:     127.0.0.1:2 - "GET / HTTP/1.1" 200 OK']


def _other_handler(logger: logging.Logger) -> None:
    logger.addHandler(logging.StreamHandler(io.StringIO()))


def _not_batched(logger: logging.Logger) -> None:
    handler = logger.handlers[0]
    logger.removeHandler(handler)
    plain = logging.StreamHandler(io.StringIO())
    plain.setFormatter(handler.formatter)
    plain.addFilter(RedactTokens())
    logger.addHandler(plain)


@pytest.mark.parametrize(
    "change",
    [
        _other_handler,
        _not_batched,
        lambda logger: setattr(logger, "propagate", True),
        lambda logger: logger.addFilter(logging.Filter()),
        lambda logger: logger.handlers[0].removeFilter(logger.handlers[0].filters[0]),
        lambda logger: logger.handlers[0].setLevel(logging.WARNING),
        lambda logger: logger.handlers[0].setFormatter(AccessFormatter(DEFAULT_FORMAT, use_colors=True)),
        lambda logger: logger.handlers[0].setFormatter(logging.Formatter("%(message)s")),
    ],
)
def test_any_other_configuration_keeps_the_loggers_own_way(change: Callable[[logging.Logger], None]) -> None:
    logger = _access_logger(AccessFormatter(DEFAULT_FORMAT, use_colors=False), io.StringIO())
    change(logger)
    assert access_log_of(logger) is None


def test_the_relays_messages_keep_uvicorns_level_prefix() -> None:
    record = logging.LogRecord("token_relay", logging.WARNING, __file__, 1, "at the limit of %d connections", (10,), None)
    ours, uvicorns = DefaultFormatter(DEFAULT_MESSAGE_FORMAT, use_colors=False), UvicornDefaultFormatter(DEFAULT_MESSAGE_FORMAT, use_colors=False)
    assert ours.format(record) == uvicorns.format(record) == "WARNING:  at the limit of 10 connections"
    coloured = DefaultFormatter(DEFAULT_MESSAGE_FORMAT, use_colors=True)
    assert coloured.format(record) == UvicornDefaultFormatter(DEFAULT_MESSAGE_FORMAT, use_colors=True).format(record)


def _relay_loggers(formatter: logging.Formatter, stream: io.StringIO) -> logging.Logger:
    """``token_relay`` and its ``token_relay.requests`` as the relay's log config makes them (loggers of their own, not the process's)."""
    parent = logging.Logger("token_relay", logging.INFO)
    parent.propagate = False
    handler = BatchedStreamHandler(stream, batched=["token_relay.requests"], delay=60)
    handler.setFormatter(formatter)
    handler.addFilter(RedactTokens())
    parent.addHandler(handler)
    logger = logging.Logger("token_relay.requests")
    logger.parent = parent
    return logger


@pytest.mark.parametrize("json_format", [False, True])
def test_the_request_log_writes_the_line_logging_would(json_format: bool) -> None:
    record = RequestRecord(f"req?token={TOKEN}", "chat.completions", None)
    record.model, record.status, record.outcome = "mock", 200, "done"
    record.usage = Usage(prompt_tokens=7, completion_tokens=5)
    record.end()
    stream = io.StringIO()
    logger = _relay_loggers(JsonFormatter() if json_format else DefaultFormatter(DEFAULT_MESSAGE_FORMAT, use_colors=False), stream)
    direct = request_lines_of(logger)
    assert direct is not None
    RequestLog(logger).request_ended(record)
    RequestLog(direct).request_ended(record)
    logger.parent.handlers[0].flush()  # type: ignore[union-attr]
    through_logging, without_a_record = stream.getvalue().splitlines()
    if json_format:
        through_logging, without_a_record = (json.loads(line) | {"time": None} for line in (through_logging, without_a_record))
    assert without_a_record == through_logging
    assert TOKEN not in str(without_a_record) and "completion_tokens" in str(without_a_record)


def test_the_request_log_keeps_the_loggers_own_way_elsewhere() -> None:
    logger = _relay_loggers(DefaultFormatter(DEFAULT_MESSAGE_FORMAT, use_colors=False), io.StringIO())
    logger.parent.handlers[0].batched = frozenset()  # type: ignore[union-attr]
    assert request_lines_of(logger) is None  # its lines would not be batched
    assert request_lines_of(_relay_loggers(DefaultFormatter("%(message)s", use_colors=False), io.StringIO())) is None
    assert request_lines_of(logging.Logger("token_relay.requests")) is None  # no handler (a test's caplog: the root's)
