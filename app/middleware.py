"""Pure ASGI middleware (``BaseHTTPMiddleware`` would break disconnect detection on streams)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping

from app.errors import RequestError
from app.routes.http import header, send_error
from app.types import ASGIApp, Receive, Scope, Send


class ApiKeys:
    """The client keys, each known by an id derived from it, so that what a key owns can be kept without the key.

    The id is stable across processes and restarts (a digest of the key, never the key);
    keys with names of their own would use their names.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [key.encode() for key in dict.fromkeys(keys)]
        self._ids = ["key_" + hashlib.sha256(key).hexdigest()[:16] for key in self._keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def identify(self, scope: Scope) -> str | None:
        """The id of the key the request carries (``Authorization: Bearer`` or ``X-API-Key``), or ``None``.

        The candidate is compared with every key, in constant time each, and the match picked
        without a branch, so the time taken says neither whether nor which key nearly matched.
        """
        given = header(scope, b"x-api-key")
        if given is None:
            authorization = header(scope, b"authorization") or ""
            scheme, _, token = authorization.partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if not given:
            return None
        candidate = given.encode("latin-1")
        matched = 0  # the keys are distinct: at most one matches
        for number, key in enumerate(self._keys, 1):
            matched |= number * hmac.compare_digest(candidate, key)
        return self._ids[matched - 1] if matched else None


Refusal = Callable[[Send, RequestError], Awaitable[None]]


class ApiKeyAuth:
    """Requires ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` on every ``/v1`` route.

    Except reading and cancelling a resumable stream (``GET``/``DELETE`` under ``/v1/streams/``):
    a browser's ``EventSource`` cannot send headers, so those routes also take the signed token
    of their URL, and check the key themselves (``ApiKeys.identify``).

    The refusal is in the relay's (OpenAI's) error shape, or in the dialect of its path where
    ``refusals`` names one (``/v1/messages``: Anthropic's), so that the client's SDK reads it.
    """

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], refusals: Mapping[str, Refusal] | None = None) -> None:
        self.app = app
        self.keys = ApiKeys(keys)
        self.refusals = dict(refusals or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys and scope["type"] == "http" and scope["path"].startswith("/v1/") and not _own_auth(scope) and self.keys.identify(scope) is None:
            await self.refusals.get(scope["path"], send_error)(send, RequestError(
                401, "invalid_api_key", "a valid API key is required: send Authorization: Bearer KEY or X-API-Key: KEY",
                headers={"WWW-Authenticate": "Bearer"},
            ))
            return
        await self.app(scope, receive, send)


def _own_auth(scope: Scope) -> bool:
    return scope["method"] in ("GET", "DELETE") and scope["path"].startswith("/v1/streams/")
