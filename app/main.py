"""``create_app(settings)``: routes, middleware and the lifespan that owns every resource."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app.capability import Capabilities
from app.hosts import AllowedHosts
from app.middleware import ApiKeyAuth
from app.routes.completions import chat_completions
from app.routes.generate import generate
from app.routes.ops import healthz, readyz
from app.routes.streams import cancel_stream, create_stream, stream_events
from app.routes.ui import STATIC_DIR, chat_page
from app.runtime import Runtime, build_upstreams
from app.settings import WILDCARD_ADDRESSES, Settings
from app.shutdown import on_shutdown_signal
from app.streaming.logs import event_log
from app.streaming.respond import LiveRequests
from app.streaming.resumable import ResumableStreams, StreamLimits
from app.streaming.upstreams import mock
from app.streaming.upstreams.http1 import Client
from app.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("token_relay")



class _Endpoint:
    """Marks a plain ASGI function as an ASGI app for Starlette's ``Route``."""

    def __init__(self, handler: ASGIApp) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {"error": {"message": exc.detail, "type": "invalid_request_error", "code": code, "param": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


class RelayApp:
    """The ASGI app: Starlette for everything, with the two streaming routes dispatched first.

    A stream calls ``send()`` once per event; dispatched here, those calls go straight to
    uvicorn instead of through Starlette's two error-handling wrappers (a measurable share
    of the relay's CPU per event, bench/RESULTS.md). Starlette still answers the same paths
    for other methods (405), and runs the lifespan.
    """

    def __init__(self, starlette: Starlette, direct: dict[str, ASGIApp]) -> None:
        self.starlette = starlette
        self.direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.direct.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self.starlette(scope, receive, send)


def create_app(settings: Settings, environ: Mapping[str, str] | None = None) -> ASGIApp:
    """The relay; ``environ`` is where upstreams' ``api_key_env`` keys are read (default: ``os.environ``)."""
    live = LiveRequests()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            models, mock_url = settings.models, None
            if settings.upstream is None and not settings.upstreams:
                mock_url = await stack.enter_async_context(embedded_mock(settings))
                models = models or mock.MODELS
            client = Client()
            stack.push_async_callback(client.aclose)
            upstreams = build_upstreams(settings, client, os.environ if environ is None else environ, mock_url)
            if not settings.api_keys:
                logger.warning("RELAY_API_KEYS is not set: the /v1 routes are open to anyone who can reach %s:%d", settings.host, settings.port)
            if settings.host in WILDCARD_ADDRESSES and settings.allowed_hosts is None and settings.public_url is None:
                logger.warning("bound to %s, but only requests for %s are answered (others get 400): set RELAY_PUBLIC_URL or RELAY_ALLOWED_HOSTS",
                               settings.host or "every address", ", ".join(settings.trusted_hosts()))
            for upstream in upstreams.values():
                logger.info("upstream %s: relaying to %s://%s%s (%s)", upstream.name, upstream.origin.scheme, upstream.origin.host_header,
                            upstream.origin.base_path, upstream.protocol)
            stack.enter_context(on_shutdown_signal(live.shut_down))
            runtime = Runtime(settings, upstreams, models, live, client)
            # The memory log, or with RELAY_REDIS_URL the Redis one and its pool (closed after the generations below).
            log, peers = await stack.enter_async_context(event_log(settings))
            # Resumable streams' generations belong to the app, not to a request: they run here.
            detached = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(detached.cancel_scope.cancel)
            limits = StreamLimits(settings.stream_grace, settings.stream_retention, settings.stream_log_max_bytes)
            streams = ResumableStreams(log, limits, live, detached, peers)
            secret = settings.stream_secret.encode() if settings.stream_secret else secrets.token_bytes(32)
            capabilities = Capabilities(secret, settings.stream_token_ttl)
            yield {"runtime": runtime, "streams": streams, "capabilities": capabilities}

    routes = [
        Route("/v1/chat/completions", _Endpoint(chat_completions), methods=["POST"]),
        Route("/v1/generate", _Endpoint(generate), methods=["POST"]),
        Route("/v1/streams", _Endpoint(create_stream), methods=["POST"]),
        Route("/v1/streams/{stream_id}/events", _Endpoint(stream_events), methods=["GET"]),
        Route("/v1/streams/{stream_id}", _Endpoint(cancel_stream), methods=["DELETE"]),
        Route("/", _Endpoint(chat_page), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Route("/healthz", _Endpoint(healthz), methods=["GET"]),
        Route("/readyz", _Endpoint(readyz), methods=["GET"]),
    ]
    starlette = Starlette(
        routes=routes,
        middleware=[Middleware(ApiKeyAuth, keys=settings.api_keys)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    direct: dict[str, ASGIApp] = {
        "/v1/chat/completions": ApiKeyAuth(chat_completions, settings.api_keys),
        "/v1/generate": ApiKeyAuth(generate, settings.api_keys),
    }
    app = with_cors(RelayApp(starlette, direct), settings.cors_origins)
    hosts = settings.trusted_hosts()
    if "*" in hosts:
        return app
    # Outermost, so that no route (not even those RelayApp dispatches itself) answers a Host it was not configured for.
    return AllowedHosts(app, hosts)


def with_cors(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp:
    """``app`` answering the browser pages of ``origins`` (the relay's, and the server's refusals past its connection cap)."""
    if not origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["authorization", "content-type", "x-api-key", "x-request-id", "last-event-id"],
        # Credentials (cookies, HTTP auth) only for origins named one by one, never for "*".
        allow_credentials="*" not in origins,
        expose_headers=["x-request-id", "retry-after"],
        max_age=600,
    )


class _EmbeddedConfig(uvicorn.Config):
    """A second server in the process: it must leave the process's logging as the relay's set it
    (uvicorn's own would, with ``access_log=False``, remove the relay's access log handler)."""

    def configure_logging(self) -> None:
        pass


@contextlib.asynccontextmanager
async def embedded_mock(settings: Settings) -> AsyncIterator[str]:
    """Serve the mock model server on a free loopback port for as long as the context lasts."""
    model = mock.MockModel(ttft=settings.mock_ttft, interval=settings.mock_interval, tokens=settings.mock_tokens)
    config = _EmbeddedConfig(model, lifespan="off", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await server.shutdown()
        sock.close()
