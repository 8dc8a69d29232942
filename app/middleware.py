"""Pure ASGI middleware (``BaseHTTPMiddleware`` would break disconnect detection on streams)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from app.errors import RequestError
from app.ops.keys import SCOPE_KEY, Keys
from app.routes.http import send_error
from app.types import ASGIApp, Receive, Scope, Send

Refusal = Callable[[Send, RequestError], Awaitable[None]]


class ApiKeyAuth:
    """Requires ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` on every ``/v1`` route.

    Except reading and cancelling a resumable stream (``GET``/``DELETE`` under ``/v1/streams/``):
    a browser's ``EventSource`` cannot send headers, so those routes also take the signed token
    of their URL, and check the key themselves (``Keys.identify``).

    The key found waits in the scope for the route (``app.ops.keys.key_of``): its name, limits and models.
    The refusal is in the relay's (OpenAI's) error shape, or in the dialect of its path where
    ``refusals`` names one (``/v1/messages``: Anthropic's), so that the client's SDK reads it.
    """

    def __init__(self, app: ASGIApp, keys: Keys, refusals: Mapping[str, Refusal] | None = None) -> None:
        self.app = app
        self.keys = keys
        self.refusals = dict(refusals or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys and scope["type"] == "http" and scope["path"].startswith("/v1/") and not _own_auth(scope):
            key = self.keys.identify(scope)
            if key is None:
                await self.refusals.get(scope["path"], send_error)(send, RequestError(
                    401, "invalid_api_key", "a valid API key is required: send Authorization: Bearer KEY or X-API-Key: KEY",
                    headers={"WWW-Authenticate": "Bearer"},
                ))
                return
            scope[SCOPE_KEY] = key
        await self.app(scope, receive, send)


def _own_auth(scope: Scope) -> bool:
    return scope["method"] in ("GET", "DELETE") and scope["path"].startswith("/v1/streams/")
