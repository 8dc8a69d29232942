"""A relay written the usual way, to measure token-relay against.

Starlette, an HTTP client opened in the lifespan, the upstream streamed line by line and
each ``data:`` line re-emitted through sse-starlette's ``EventSourceResponse``: what most
tutorials and many production relays look like. Same endpoint and request body as
token-relay (``POST /v1/chat/completions``, the body is forwarded as sent, with the
client's ``X-Request-Id``), so the load generator can hit either.

The upstream HTTP client is chosen by ``USUAL_CLIENT`` (or ``--client``):

- ``httpx``   ``httpx.AsyncClient`` + ``client.stream()`` + ``aiter_lines()``
- ``httpx2``  the same code on ``httpx2`` (same API)
- ``aiohttp`` ``aiohttp.ClientSession`` + ``session.post()`` + ``async for line in resp.content``

Limits are raised so that 1,000+ streams can be open (the httpx default is a pool of 100
and a 5 s timeout, both wrong for long streams) and every timeout is off.

    USUAL_CLIENT=httpx python bench/usual_relay.py --port 8002 --upstream http://127.0.0.1:8001/v1
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CLIENTS = ("httpx", "httpx2", "aiohttp")
MAX_CONNECTIONS = 4096


class HttpxUpstream:
    """httpx or httpx2: the same API, one module or the other."""

    def __init__(self, module_name: str, base_url: str) -> None:
        module: Any = importlib.import_module(module_name)
        limits = module.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
        self.client = module.AsyncClient(base_url=base_url, limits=limits, timeout=module.Timeout(None))

    async def lines(self, body: bytes, headers: dict[str, str]) -> AsyncIterator[str]:
        async with self.client.stream("POST", "/chat/completions", content=body, headers=headers) as response:
            async for line in response.aiter_lines():
                yield line

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpUpstream:
    def __init__(self, base_url: str) -> None:
        import aiohttp

        self.url = base_url.rstrip("/") + "/chat/completions"
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=MAX_CONNECTIONS)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=None))

    async def lines(self, body: bytes, headers: dict[str, str]) -> AsyncIterator[str]:
        async with self.session.post(self.url, data=body, headers=headers) as response:
            async for raw in response.content:
                yield raw.decode().rstrip("\r\n")

    async def aclose(self) -> None:
        await self.session.close()


def make_upstream(client: str, base_url: str) -> HttpxUpstream | AiohttpUpstream:
    if client == "aiohttp":
        return AiohttpUpstream(base_url)
    if client in ("httpx", "httpx2"):
        return HttpxUpstream(client, base_url)
    raise ValueError(f"unknown client {client!r}: choose one of {', '.join(CLIENTS)}")


def create_app(client: str, base_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        upstream = make_upstream(client, base_url)
        try:
            yield {"upstream": upstream}
        finally:
            await upstream.aclose()

    async def chat_completions(request: Request) -> Response:
        upstream = request.state.upstream
        body = await request.body()
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "X-Request-Id": request.headers.get("x-request-id") or uuid.uuid4().hex,
        }

        async def events() -> AsyncIterator[dict[str, str]]:
            async for line in upstream.lines(body, headers):
                if line.startswith("data:"):
                    yield {"data": line[5:].lstrip(" ")}

        return EventSourceResponse(events())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "client": client})

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--upstream", default=os.environ.get("USUAL_UPSTREAM", "http://127.0.0.1:8001/v1"))
    p.add_argument("--client", choices=CLIENTS, default=os.environ.get("USUAL_CLIENT", "httpx"))
    args = p.parse_args(argv)
    app = create_app(args.client, args.upstream)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, loop="uvloop", http="httptools", backlog=4096)
    return 0


if __name__ == "__main__":
    sys.exit(main())
