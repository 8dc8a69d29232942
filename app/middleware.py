"""Pure ASGI middleware (``BaseHTTPMiddleware`` would break disconnect detection on streams)."""

from __future__ import annotations

import hmac

from app.errors import RequestError
from app.routes.http import header, send_error
from app.types import ASGIApp, Receive, Scope, Send


class ApiKeyAuth:
    """Requires ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` on every ``/v1`` route.

    Except reading and cancelling a resumable stream (``GET``/``DELETE`` under ``/v1/streams/``):
    a browser's ``EventSource`` cannot send headers, so those routes also take the signed token
    of their URL, and check the key themselves (``has_api_key``).
    """

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys and scope["type"] == "http" and scope["path"].startswith("/v1/") and not _own_auth(scope) and not has_api_key(scope, self.keys):
            await send_error(send, RequestError(
                401, "invalid_api_key", "a valid API key is required: send Authorization: Bearer KEY or X-API-Key: KEY",
                headers={"WWW-Authenticate": "Bearer"},
            ))
            return
        await self.app(scope, receive, send)


def _own_auth(scope: Scope) -> bool:
    return scope["method"] in ("GET", "DELETE") and scope["path"].startswith("/v1/streams/")


def has_api_key(scope: Scope, keys: list[bytes]) -> bool:
    """Whether the request carries one of ``keys``, compared in constant time."""
    given = header(scope, b"x-api-key")
    if given is None:
        authorization = header(scope, b"authorization") or ""
        scheme, _, token = authorization.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if not given:
        return False
    candidate = given.encode("latin-1")
    # Compare with every key, so the time taken does not say which one nearly matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched
