"""Stream tokens never reach a log line, whatever their spelling and whichever record carries them."""

from __future__ import annotations

import io
import logging
import sys
import time

from uvicorn.logging import AccessFormatter, DefaultFormatter

from app.capability import READ, Capabilities
from app.ops.record import RequestRecord
from app.ops.requestlog import REQUESTS_LOGGER, RequestLog
from app.redaction import RedactTokens, redact
from app.server import log_config
from app.settings import Settings
from app.streaming.events import Usage
from tests.streams import decodes_to, misspelled_token_queries

TOKEN, _ = Capabilities(b"k" * 32, ttl=60).issue("st_a", READ)
SIGNATURE = TOKEN.split(".")[1]


def _formatted(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(formatter)
    handler.addFilter(RedactTokens())
    handler.handle(record)
    return output.getvalue()


def _access(path: str) -> logging.LogRecord:
    args = ("127.0.0.1:5000", "GET", path, "1.1", 401)
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)


def test_the_access_log_shows_no_spelling_of_a_token() -> None:
    paths = [f"/v1/streams/st_a/events?{query}" for query in ["token=" + TOKEN, *misspelled_token_queries(TOKEN)]]
    paths += [f"/v1/streams/{TOKEN}/events", f"/v1/streams/st_a/{TOKEN[:-1]}%{ord(TOKEN[-1]):02x}"]
    for path in paths:
        line = _formatted(_access(path), AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False))
        assert not decodes_to(line, SIGNATURE), line
        assert line.startswith('127.0.0.1:5000 - "GET /v1/streams/') and line.endswith(' HTTP/1.1" 401 Unauthorized\n'), line
    line = _formatted(_access(f"/v1/streams/st_a/events?%74oken={TOKEN}&last_event_id=3"), AccessFormatter("%(request_line)s", use_colors=False))
    assert line == "GET /v1/streams/st_a/events?%74oken=[redacted]&last_event_id=3 HTTP/1.1\n"


def test_the_relays_messages_arguments_and_tracebacks_are_redacted() -> None:
    record = logging.LogRecord("token_relay", logging.WARNING, __file__, 1, "request %s: attempt %d failed", (TOKEN, 1), None)
    assert _formatted(record, DefaultFormatter("%(message)s", use_colors=False)) == "request [redacted]: attempt 1 failed\n"
    try:
        raise ValueError(f"bad URL /v1/streams/st_a?token={TOKEN}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", (), exc_info)
    line = _formatted(record, DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False))
    assert "Exception in ASGI application" in line and "ValueError: bad URL /v1/streams/st_a?token=[redacted]" in line
    assert not decodes_to(line, SIGNATURE)


def test_uvicorns_coloured_messages_keep_their_arguments_and_lose_their_tokens() -> None:
    coloured = DefaultFormatter("%(message)s", use_colors=True)
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Started server process [%d]", (42,), None)
    record.color_message = "Started server process [\x1b[36m%d\x1b[0m]"
    assert _formatted(record, coloured) == "Started server process [\x1b[36m42\x1b[0m]\n"
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Uvicorn running on %s", (f"http://x/?token={TOKEN}",), None)
    record.color_message = "Uvicorn running on \x1b[1m%s\x1b[0m"
    assert _formatted(record, coloured) == "Uvicorn running on http://x/?token=[redacted]\n"


def test_lines_without_a_token_are_left_alone() -> None:
    for line in ['127.0.0.1:5000 - "GET /v1/streams/st_abc/events?last_event_id=12 HTTP/1.1" 200', "GET /healthz", "upstream default: relaying to http://x",
                 "request 4f1c: attempt 1 on upstream a failed (upstream_error: upstream_status_500)", "1.5 2024.01"]:
        assert redact(line) == line


def test_redaction_is_linear_in_the_line() -> None:
    """A client's request line is logged: a pattern that backtracks on it would stall the event loop."""
    for unit in ["%25", "t", "token", "%74", "1", "1.", "1." + "a" * 42 + "%", "a;", "=", "%2574%256f"]:
        line = "/x?" + unit * (65_536 // len(unit))
        started = time.perf_counter()
        redact(line)
        assert time.perf_counter() - started < 0.5, unit


def test_the_log_config_filters_both_handlers() -> None:
    config = log_config(Settings())
    assert config["handlers"]["access"]["filters"] == config["handlers"]["default"]["filters"] == ["redact_tokens"]
    assert config["filters"]["redact_tokens"]["()"] is RedactTokens
    assert config["loggers"]["token_relay"]["handlers"] == ["default"]


def test_the_shortest_token_shape_and_a_short_parameter_are_still_redacted() -> None:
    """Texts too short for a token and without ``=`` skip the scan; the shortest token and a short ``token=`` do not."""
    shortest = "1." + SIGNATURE
    assert redact(shortest) == "[redacted]"
    assert redact("?token=x") == "?token=[redacted]"
    assert redact(shortest[:-1]) == shortest[:-1]


def test_the_request_lines_token_counts_are_shown_and_its_client_texts_redacted() -> None:
    """Its fields are redacted where they are made: the filter must not take ``completion_tokens=`` for a token parameter."""
    record = RequestRecord(TOKEN, "chat.completions", None)
    record.model, record.status, record.outcome = f"mock?token={TOKEN}", 200, "done"
    record.usage = Usage(prompt_tokens=7, completion_tokens=5)
    record.end()
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False))
    handler.addFilter(RedactTokens())
    logger = logging.Logger(REQUESTS_LOGGER, logging.INFO)
    logger.addHandler(handler)
    RequestLog(logger).request_ended(record)
    line = output.getvalue()
    assert "prompt_tokens=7 completion_tokens=5 tokens_estimated=false" in line
    assert line.startswith("INFO:     request [redacted]: ") and "model=mock?token=[redacted] " in line
    assert SIGNATURE not in line
