"""Capabilities: short-lived, signed grants to one action on one resumable stream.

``EventSource`` cannot send headers, so a browser reads a stream through a URL that carries
its own proof of access: ``{expiry}.{signature}``, where the signature is an HMAC-SHA256 of
the action, the stream id and the expiry under the relay's secret. A token for reading one
stream can neither read another nor cancel it. Nothing is stored: any process holding the
secret can check a token.

A token has exactly one spelling, the one ``issue`` writes: the expiry in decimal without a
leading zero, a dot, and the 43 unpadded base64url characters of the signature. Anything
else (``0`` before the expiry, ``+``, spaces, ``=`` padding, percent-escapes) is refused, so
that what a proxy, a log filter or a cache sees as the token is the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

READ = "read"
CANCEL = "cancel"
EXPIRY_DIGITS = 12
SIGNATURE_LENGTH = 43  # base64url of 32 bytes, unpadded
_TOKEN = re.compile(rf"([1-9][0-9]{{0,{EXPIRY_DIGITS - 1}}})\.([A-Za-z0-9_-]{{{SIGNATURE_LENGTH}}})")


class Capabilities:
    def __init__(self, secret: bytes, ttl: float) -> None:
        self._secret = secret
        self.ttl = ttl

    def issue(self, stream_id: str, action: str, now: float | None = None) -> tuple[str, int]:
        """A token for ``action`` on ``stream_id``, and the Unix time at which it expires."""
        expires = int((time.time() if now is None else now) + self.ttl)
        return f"{expires}.{self._sign(stream_id, action, expires)}", expires

    def check(self, token: str, stream_id: str, action: str, now: float | None = None) -> bool:
        match = _TOKEN.fullmatch(token)
        if match is None:
            return False
        expires = int(match[1])
        if expires < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(match[2].encode(), self._sign(stream_id, action, expires).encode())

    def _sign(self, stream_id: str, action: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"{action}\n{stream_id}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
