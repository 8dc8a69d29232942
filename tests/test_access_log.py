"""The relay's access formatter writes uvicorn's access line, character for character."""

from __future__ import annotations

import logging

import pytest
from uvicorn.logging import AccessFormatter as UvicornAccessFormatter

from app.access_log import DEFAULT_FORMAT, AccessFormatter
from app.server import log_config
from app.settings import Settings


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
