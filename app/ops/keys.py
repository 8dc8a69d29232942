"""The client keys: named, each known by its SHA-256 only, with optional limits and models.

Keys come from ``[[keys]]`` (or ``RELAY_KEYS`` as JSON), each with a ``name`` and either the
key's ``key_sha256`` or ``key_env``, the environment variable holding it: no secret needs to sit
in a config file, and the relay keeps only digests. ``RELAY_API_KEYS`` still works: each of
its keys is an unnamed key without limits, named ``key_`` and 16 hex digits of its digest
(stable across processes and restarts, and never the key).

A request's key is found by the digest of what it sent, compared with every key's in constant
time each and picked without a branch, so the time taken says neither whether nor which key
nearly matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping

import msgspec

from app.routes.http import header
from app.settings import Settings
from app.types import Scope

# Where the key checked by the middleware (app/middleware.py) waits for the route.
SCOPE_KEY = "relay.key"


class Key(msgspec.Struct, frozen=True):
    """A client key: its name (in logs, metrics and what it owns), and its limits (``None``: none)."""

    name: str
    digest: bytes
    max_concurrent_streams: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    models: frozenset[str] | None = None

    @property
    def limited(self) -> bool:
        return self.max_concurrent_streams is not None or self.requests_per_minute is not None or self.tokens_per_minute is not None


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class Keys:
    """The relay's keys; empty: the ``/v1`` routes are open to anyone."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        keys = [Key("key_" + _digest(secret).hex()[:16], _digest(secret)) for secret in dict.fromkeys(settings.api_keys)]
        for config in settings.keys:
            digest = bytes.fromhex(config.key_sha256) if config.key_sha256 is not None else _digest(environ[config.key_env or ""])
            keys.append(Key(
                config.name, digest, config.max_concurrent_streams, config.requests_per_minute, config.tokens_per_minute,
                frozenset(config.models) if config.models is not None else None,
            ))
        self._keys = keys

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys)

    def identify(self, scope: Scope) -> Key | None:
        """The key the request carries (``Authorization: Bearer`` or ``X-API-Key``), or ``None``."""
        given = header(scope, b"x-api-key")
        if given is None:
            authorization = header(scope, b"authorization") or ""
            scheme, _, token = authorization.partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if not given:
            return None
        candidate = _digest(given.encode("latin-1"))
        matched = 0  # the digests are distinct: at most one matches
        for number, key in enumerate(self._keys, 1):
            matched |= number * hmac.compare_digest(candidate, key.digest)
        return self._keys[matched - 1] if matched else None


def key_of(scope: Scope) -> Key | None:
    """The key the middleware found on this request (``None`` when the relay has no keys)."""
    key: Key | None = scope.get(SCOPE_KEY)
    return key
