"""What the routes need at request time, built by the lifespan: the upstreams, the routes and the limits."""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from app.catalog import ModelCatalog
from app.errors import RequestError
from app.ops.keys import Keys, key_of
from app.ops.limits import NO_LIMITS, Admission, Limiter, MemoryLimits, estimate
from app.settings import Settings, UpstreamSettings
from app.streaming.request import GenerationRequest
from app.streaming.respond import LiveRequests
from app.streaming.routing import Circuit, Route, Target, Timeouts, Upstream
from app.streaming.upstreams.egress import TLSContexts, proxy_for
from app.streaming.upstreams.http1 import Client, Origin
from app.streaming.upstreams.httpx_transport import HttpxTransport
from app.streaming.upstreams.transport import Transport
from app.types import Scope

logger = logging.getLogger("token_relay")

# Sockets a stream holds (the client's and the upstream's), and files for everything else (the
# connections answered past the cap of app/connections.py among them).
FILES_PER_STREAM = 2
FILES_SPARE = 256


class Transports(NamedTuple):
    """The HTTP clients upstreams are reached with (``transport`` in their settings), owned by the lifespan."""

    http1: Client
    httpx: HttpxTransport


def build_upstreams(
    settings: Settings, transports: Transports, environ: Mapping[str, str], mock_url: str | None = None,
    network: Mapping[str, str] = os.environ,
) -> dict[str, Upstream]:
    """The configured upstreams by name; with ``mock_url``, the shorthand upstream is the embedded mock there.

    ``environ`` holds the keys that ``api_key_env`` names; ``network`` the proxy variables and
    ``SSL_CERT_FILE`` (app/streaming/upstreams/egress.py). A proxy or TLS file that cannot be used
    raises ``ValueError`` naming the upstream: the relay does not start.
    """
    upstreams: dict[str, Upstream] = {}
    contexts = TLSContexts(network)
    for config in settings.upstream_list():
        timeouts = Timeouts(
            config.connect_timeout or settings.connect_timeout, config.first_token_timeout or settings.first_token_timeout,
            config.idle_timeout or settings.idle_timeout, settings.total_timeout,
        )
        if config.api_key_env is not None:
            api_key = environ.get(config.api_key_env)
        else:
            api_key = None if settings.upstreams else settings.upstream_api_key
        circuit = Circuit(failures=settings.circuit_failures, cooldown=settings.circuit_cooldown, max_concurrency=config.max_concurrency)
        embedded = mock_url is not None and not settings.upstreams
        try:
            origin = Origin(mock_url) if embedded and mock_url is not None else _origin(config, network, contexts)
        except ValueError as exc:
            raise ValueError(f"upstream {config.name}: {exc}") from exc
        client: Transport = transports.httpx.for_http2(config.http2) if config.transport == "httpx" else transports.http1
        upstreams[config.name] = Upstream(config.name, origin, client, timeouts, api_key, config.protocol, circuit)
    return upstreams


def _origin(config: UpstreamSettings, network: Mapping[str, str], contexts: TLSContexts) -> Origin:
    """Where ``config``'s model server is, and how it is reached: its proxy, if any, and its TLS context (for https)."""
    where = Origin(config.base_url)
    proxy = proxy_for(where.scheme, where.host, where.port, network)
    if where.scheme != "https":
        return Origin(config.base_url, proxy)
    # HTTP/2 is chosen by ALPN; the fast client offers HTTP/1.1 alone, so that no server answers it in HTTP/2.
    alpn = ("h2", "http/1.1") if config.http2 else ("http/1.1",)
    return Origin(config.base_url, proxy, contexts.get(config.ca_file, config.client_cert, config.client_key, alpn))


class Runtime:
    def __init__(
        self, settings: Settings, upstreams: dict[str, Upstream] | Upstream, models: tuple[str, ...], live: LiveRequests, client: Transport,
        keys: Keys | None = None, limits: Limiter | None = None,
    ) -> None:
        if isinstance(upstreams, Upstream):
            upstreams = {upstreams.name: upstreams}
        self.settings = settings
        self.keys = keys if keys is not None else Keys(settings, {})
        self.limits = limits if limits is not None else MemoryLimits()
        self.upstreams = upstreams
        # A model named in routes goes to its upstreams; any other (if allowed) to every upstream, in order.
        self.routes = {model: Route(tuple(_target(upstreams, name) for name in targets)) for model, targets in settings.routes.items()}
        self.default_route = Route(tuple(Target(upstream) for upstream in upstreams.values()))
        self.models = frozenset(models)
        self.default_model = settings.default_model or (models[0] if models else next(iter(settings.routes), None))
        # The names clients may use: the configured ones, else the upstreams' own lists.
        self.catalog = ModelCatalog((*settings.routes, *models), self.default_model, upstreams.values())
        self.live = live
        self.client = client

    def upstream_for(self, model: str) -> Route:
        """The route of ``model``; refused when unknown (404) or when none of its upstreams can take a request (429, 503)."""
        route = self.routes.get(model)
        if route is None:
            if (self.models and model not in self.models) or (not self.models and self.routes):
                raise RequestError(404, "model_not_found", f"the model {model!r} does not exist", param="$.model")
            route = self.default_route
        refusal = route.unusable()
        if refusal is not None:
            status, code, message, wait = refusal
            raise RequestError(status, code, message, headers={"Retry-After": str(wait)})
        return route

    async def admit_key(self, scope: Scope, request: GenerationRequest) -> Admission:
        """The request's hold on its key's limits; refused (nothing sent upstream) when its key may not use its model, or is over a limit."""
        key = key_of(scope)
        if key is None:
            return NO_LIMITS
        if key.models is not None and request.model not in key.models:
            raise RequestError(403, "model_not_allowed", f"the key {key.name!r} may not use the model {request.model!r}", param="$.model")
        if not key.limited:
            return NO_LIMITS
        return await self.limits.admit(key, *estimate(request))

    def admit(self, lengths: Iterable[tuple[str, int]] = ()) -> None:
        """Refuse what is over a limit before anything starts; ``lengths`` are the request's token limits, by path."""
        limit = self.settings.max_tokens_limit
        for param, length in lengths:
            if length > limit:
                raise RequestError(422, "max_tokens_too_large", f"{param.removeprefix('$.')} may be at most {limit}", param=param)
        if self.live.closing:
            raise RequestError(503, "shutting_down", "the relay is shutting down; retry on another instance", headers={"Retry-After": "1"})
        if len(self.live) >= self.settings.max_concurrent_requests:
            raise RequestError(429, "too_many_requests", "the relay is at its limit of concurrent requests; retry shortly", headers={"Retry-After": "1"})


def _target(upstreams: dict[str, Upstream], spec: str) -> Target:
    """``"name"`` (the client's model name is passed on) or ``"name:model"`` (that model is asked for)."""
    name, colon, model = spec.partition(":")
    return Target(upstreams[name], model if colon else None)


def raise_open_files_limit(settings: Settings) -> int:
    """Raise the soft limit on open files to the hard one, and warn when it is still too low.

    A relay out of file descriptors cannot even accept a connection to refuse it: new clients
    wait in the backlog. Many systems start services with a soft limit of 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
    if settings.max_connections is None:
        needed = FILES_PER_STREAM * settings.max_concurrent_requests + FILES_SPARE
        need = f"RELAY_MAX_CONCURRENT_REQUESTS={settings.max_concurrent_requests} needs"
    else:  # a socket per client connection, and one per request in flight (its upstream's)
        needed = settings.max_connections + settings.max_concurrent_requests + FILES_SPARE
        need = f"RELAY_MAX_CONNECTIONS={settings.max_connections} and RELAY_MAX_CONCURRENT_REQUESTS={settings.max_concurrent_requests} need"
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "the open-files limit (%d) is below the %d that %s: past about %d streams, new connections cannot be served; "
            "raise the limit (ulimit -n) or lower the setting",
            soft, needed, need, (soft - FILES_SPARE) // FILES_PER_STREAM,
        )
    return soft


def connection_limit(settings: Settings, open_files: int) -> int:
    """``max_connections``, or by default as many client connections as ``open_files`` leaves room for.

    That is, after a socket for each request in flight (its upstream's) and the spare files; when
    the limit is too low even for that, half of what the spare files leave.
    """
    if settings.max_connections is not None:
        return settings.max_connections
    if open_files == resource.RLIM_INFINITY:
        return settings.max_concurrent_requests + settings.max_stream_readers
    return max(open_files - settings.max_concurrent_requests - FILES_SPARE, (open_files - FILES_SPARE) // FILES_PER_STREAM, 1)
