"""Keeping stream tokens out of the logs, whatever their spelling.

The relay reads a token only from a literal ``token=`` parameter, but a log shows whatever a
client sent: ``%74oken=…``, ``x=1;token=…``, ``TOKEN=…``, a token percent-escaped, or one in
the path or in an ``X-Request-Id``. So two rules, each enough alone for the common cases:

- the value of every parameter whose name, percent-decoded (up to four times) and in any case,
  contains ``token``;
- anything shaped like a token (``digits.43 base64url characters``, each character possibly
  percent-escaped), anywhere in the line.

Both patterns are linear in the line: a request line is the client's, and a logger that
backtracks quadratically on it would stall the event loop.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

from app.capability import EXPIRY_DIGITS, SIGNATURE_LENGTH

REDACTED = "[redacted]"
# A record with this attribute true was made of texts redacted already (the request log's line: app/ops/requestlog.py).
PRE_REDACTED = "redacted"

# One character, literal or percent-escaped, the "%" itself escaped up to three more times (%2574).
_ESCAPE = "%(?:25){0,3}"
_DIGIT = f"(?:[0-9]|{_ESCAPE}3[0-9])"
_DOT = rf"(?:\.|{_ESCAPE}2e)"
_BASE64URL = f"(?:[a-z0-9_-]|{_ESCAPE}[0-9a-f]{{2}})"
_SHAPE = re.compile(f"{_DIGIT}{{1,{EXPIRY_DIGITS}}}{_DOT}{_BASE64URL}{{{SIGNATURE_LENGTH}}}", re.IGNORECASE)


# A parameter starts after a separator (or a space or a quote, in a message), and its name is
# taken whole, never backtracked into: each character of the line is scanned once.
_PARAMETER = re.compile(r"""(?:(?<=[?&;\s"'])|^)([^=&;#?\s"']++)=[^&;#\s"']*+""")


def _parameter(match: re.Match[str]) -> str:
    name = match[1]
    if "%" in name:  # without one, decoding leaves the name as it is (a request line's fifteen names are decoded in none)
        for _ in range(4):
            name = unquote(name)
    return f"{match[1]}={REDACTED}" if "token" in name.lower() else match[0]


# The shortest text the shape matches: one digit, the dot and the signature. A text shorter than
# this and without "=" (which every parameter has) is left as it is without a scan: the usual
# access line's client address, method and path.
_SHORTEST_SHAPE = 2 + SIGNATURE_LENGTH


def redact(text: str) -> str:
    """``text`` with every token, and every value of a token parameter, replaced by ``[redacted]``."""
    if len(text) < _SHORTEST_SHAPE and "=" not in text:
        return text
    return _SHAPE.sub(REDACTED, _PARAMETER.sub(_parameter, text))


class RedactTokens(logging.Filter):
    """Redacts tokens in every record of the handler it is on: message, arguments and traceback."""

    _traceback = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get(PRE_REDACTED) is True:
            return True
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            # uvicorn's access formatter reads the arguments (client, method, path…) themselves.
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: the formatter reports it as it would anyway
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
            # uvicorn's coloured variant of the message would be formatted with the arguments.
            record.__dict__.pop("color_message", None)
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self._traceback.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
