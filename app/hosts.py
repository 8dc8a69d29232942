"""Answers only the ``Host`` header values the relay is configured for (``Settings.trusted_hosts``).

Starlette's ``TrustedHostMiddleware`` does the same check; this one answers in the relay's JSON
error shape with a message that names the settings to change, and lets the health routes
through whatever their ``Host``: a platform's probes (a load balancer's, Kubernetes' ``httpGet``)
send the address they reach the process at, which no one lists, and a 400 there would take an
otherwise healthy relay out of service. So does a Prometheus scraper (``/metrics``), which reaches
each process at its address. None of these routes hands out a URL, so an odd Host costs nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.errors import RequestError
from app.routes.http import send_error
from app.types import ASGIApp, Receive, Scope, Send

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class AllowedHosts:
    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app = app
        self._names = frozenset(host for host in hosts if not host.startswith("*."))
        self._suffixes = tuple(host[1:] for host in hosts if host.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The check keeps no local here: this frame lasts as long as the request, a stream's minutes.
        if scope["type"] != "http" or scope["path"] in PROBES or self._allows(_host(scope)):
            await self.app(scope, receive, send)
            return
        await send_error(send, _refusal(_host(scope)))

    def _allows(self, host: str | None) -> bool:
        return host is not None and (host in self._names or host.endswith(self._suffixes))


def _refusal(host: str | None) -> RequestError:
    if host is None:
        message = "the request must have one Host header, a host name or address with an optional port"
    else:
        message = f"this relay does not answer for the host {host!r}: list it in RELAY_ALLOWED_HOSTS, or set RELAY_PUBLIC_URL"
    return RequestError(400, "invalid_host", message, param="Host")


def _host(scope: Scope) -> str | None:
    """The host of the request's one ``Host`` header, lower-cased and without its port; ``None`` if absent, repeated or malformed.

    Two ``Host`` headers are refused (RFC 9112 §3.2): a proxy or a cache in front may read the
    other one than the relay would.
    """
    hosts = [value for name, value in scope["headers"] if name == b"host"]
    if len(hosts) != 1:
        return None
    host: str = hosts[0].decode("latin-1").lower()
    if host.startswith("["):  # [IPv6]:port
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not _port(host[end + 1 :])):
            return None
        return host[: end + 1]
    name, colon, port = host.partition(":")
    if colon and not _digits(port):
        return None
    return name or None


def _port(rest: str) -> bool:
    return rest.startswith(":") and _digits(rest[1:])


def _digits(text: str) -> bool:
    """ASCII digits only: ``"²".isdigit()`` is true, and the Host goes into the stream URLs."""
    return text.isascii() and text.isdigit()
