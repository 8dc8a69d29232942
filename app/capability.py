"""Capabilities: short-lived, signed grants to one action on one resumable stream.

``EventSource`` cannot send headers, so a browser reads a stream through a URL that carries
its own proof of access: ``{expiry}.{signature}``, where the signature is an HMAC-SHA256 of
the action, the stream id and the expiry under the relay's secret. A token for reading one
stream can neither read another nor cancel it. Nothing is stored: any process holding the
secret can check a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

READ = "read"
CANCEL = "cancel"


class Capabilities:
    def __init__(self, secret: bytes, ttl: float) -> None:
        self._secret = secret
        self.ttl = ttl

    def issue(self, stream_id: str, action: str, now: float | None = None) -> tuple[str, int]:
        """A token for ``action`` on ``stream_id``, and the Unix time at which it expires."""
        expires = int((time.time() if now is None else now) + self.ttl)
        return f"{expires}.{self._sign(stream_id, action, expires)}", expires

    def check(self, token: str, stream_id: str, action: str, now: float | None = None) -> bool:
        expires, _, signature = token.partition(".")
        if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
            return False
        if int(expires) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(signature.encode(), self._sign(stream_id, action, int(expires)).encode())

    def _sign(self, stream_id: str, action: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"{action}\n{stream_id}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
