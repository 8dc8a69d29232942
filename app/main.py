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
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from app import contract, mock
from app.access_log import request_lines_of
from app.capability import Capabilities
from app.hosts import AllowedHosts
from app.middleware import ApiKeyAuth
from app.ops.keys import Keys
from app.ops.limits import Debits
from app.ops.metrics import Metrics, State, mark_dead, multiprocess_dir, serve_gauges
from app.ops.record import Operations
from app.ops.requestlog import REQUESTS_LOGGER, RequestLog
from app.routes.completions import chat_completions
from app.routes.generate import generate
from app.routes.messages import messages, send_anthropic_error
from app.routes.models import list_models, retrieve_model
from app.routes.openapi import contract_routes
from app.routes.ops import healthz, metrics, readyz
from app.routes.responses import responses
from app.routes.router import ASGIRoute, Files, RelayRouter
from app.routes.streams import cancel_stream, create_stream, stream_events
from app.routes.ui import STATIC_DIR, chat_page
from app.runtime import Runtime, Transports, build_upstreams
from app.settings import WILDCARD_ADDRESSES, Settings
from app.streaming.logs import event_log
from app.streaming.respond import LiveRequests
from app.streaming.resumable import ResumableStreams, StreamLimits
from app.streaming.upstreams.http1 import Client
from app.streaming.upstreams.httpx_transport import HttpxTransport
from app.types import ASGIApp

logger = logging.getLogger("token_relay")


def create_app(settings: Settings, environ: Mapping[str, str] | None = None) -> ASGIApp:
    """The relay; ``environ`` is where upstreams' ``api_key_env`` keys are read (default: ``os.environ``)."""
    live = LiveRequests()
    keys = Keys(settings, os.environ if environ is None else environ)

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            models, mock_url = settings.models, None
            if settings.upstream is None and not settings.upstreams:
                mock_url = await stack.enter_async_context(embedded_mock(settings))
                models = models or mock.MODELS
            client = Client()
            stack.push_async_callback(client.aclose)
            # The httpx transport reads bodies in tasks of its own group: cancelled, then awaited, then its clients close.
            reading = anyio.create_task_group()
            httpx_transport = HttpxTransport(reading)
            stack.push_async_callback(httpx_transport.aclose)
            await stack.enter_async_context(reading)
            stack.callback(reading.cancel_scope.cancel)
            upstreams = build_upstreams(settings, Transports(client, httpx_transport), os.environ if environ is None else environ, mock_url)
            if not keys:
                logger.warning("RELAY_API_KEYS is not set: the /v1 routes are open to anyone who can reach %s:%d", settings.host, settings.port)
            if settings.host in WILDCARD_ADDRESSES and settings.allowed_hosts is None and settings.public_url is None:
                logger.warning("bound to %s, but only requests for %s are answered (others get 400): set RELAY_PUBLIC_URL or RELAY_ALLOWED_HOSTS",
                               settings.host or "every address", ", ".join(settings.trusted_hosts()))
            for upstream in upstreams.values():
                proxy = upstream.origin.proxy
                logger.info("upstream %s: relaying to %s (%s)%s", upstream.name, upstream.origin.url, upstream.protocol,
                            f" through the proxy at {proxy.url}" if proxy is not None else "")
            # The memory log, or with RELAY_REDIS_URL the Redis one and its pool (closed after the generations below).
            log, peers, key_limits = await stack.enter_async_context(event_log(settings))
            runtime = Runtime(settings, upstreams, models, live, client, keys, key_limits)
            # Resumable streams' generations belong to the app, not to a request: they run here.
            detached = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(detached.cancel_scope.cancel)
            limits = StreamLimits(settings.stream_grace, settings.stream_retention, settings.stream_log_max_bytes)
            # Operations observe every request's end through one seam (app/ops/): key limits' debits, the metrics and the request log.
            # The request log's lines made without a record when the relay's log configuration is in place (app/access_log.py).
            operations = Operations([Debits(), RequestLog(request_lines_of(logging.getLogger(REQUESTS_LOGGER)))])
            streams = ResumableStreams(log, limits, live, detached, peers, operations)
            metrics_ = None
            if settings.metrics:
                metrics_ = Metrics(runtime.models | runtime.routes.keys(), upstreams, multiprocess_dir=multiprocess_dir())
                operations.observers.append(metrics_)
                shared = serve_gauges(metrics_, State(operations, upstreams.values(), lambda: (streams.running, streams.readers)))
                if shared is not None:  # several workers: each copies its gauges into the shared files
                    detached.start_soon(shared.run)
                    stack.callback(mark_dead, os.getpid())
            secret = settings.stream_secret.encode() if settings.stream_secret else secrets.token_bytes(32)
            capabilities = Capabilities(secret, settings.stream_token_ttl)
            # ``shut_down`` is the runner's: it ends every stream when the server shuts down (app/connections.py).
            yield {
                "runtime": runtime, "streams": streams, "capabilities": capabilities, "shut_down": live.shut_down,
                "operations": operations, "metrics": metrics_,
            }

    routes = [
        ASGIRoute("/v1/chat/completions", chat_completions, "POST", contract.CHAT),
        ASGIRoute("/v1/generate", generate, "POST", contract.GENERATE),
        ASGIRoute("/v1/messages", messages, "POST", contract.MESSAGES),
        ASGIRoute("/v1/responses", responses, "POST", contract.RESPONSES),
        ASGIRoute("/v1/models", list_models, "GET", contract.MODELS),
        ASGIRoute("/v1/models/{model:path}", retrieve_model, "GET", contract.MODEL),
        ASGIRoute("/v1/streams", create_stream, "POST", contract.CREATE_STREAM),
        ASGIRoute("/v1/streams/{stream_id}/events", stream_events, "GET", contract.STREAM_EVENTS),
        ASGIRoute("/v1/streams/{stream_id}", cancel_stream, "DELETE", contract.CANCEL_STREAM),
        ASGIRoute("/", chat_page, "GET", contract.CHAT_PAGE),
        ASGIRoute("/healthz", healthz, "GET", contract.HEALTH),
        ASGIRoute("/readyz", readyz, "GET", contract.READY),
        ASGIRoute("/metrics", metrics, "GET", contract.METRICS),
    ]
    routes += contract_routes(routes)
    static = Mount("/static", Files(StaticFiles(directory=STATIC_DIR)), name="static")
    # One stack, outermost first: hosts, CORS, keys, the router. Every route is behind all of it, and none
    # of it wraps ``send`` (but CORS, for a cross-origin request): each event of a stream is one call into the server.
    app: ASGIApp = ApiKeyAuth(RelayRouter([*routes, static], lifespan), keys, {"/v1/messages": send_anthropic_error})
    app = with_cors(app, settings.cors_origins)
    hosts = settings.trusted_hosts()
    return app if "*" in hosts else AllowedHosts(app, hosts)


def with_cors(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp:
    """``app`` answering the browser pages of ``origins`` (the relay's, and the server's refusals past its connection cap)."""
    if not origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["authorization", "content-type", "x-api-key", "x-request-id", "last-event-id", "anthropic-version", "anthropic-beta"],
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
