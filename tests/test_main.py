"""The app ``create_app`` builds: one middleware stack in front of one router, for every route."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Router

from app.hosts import AllowedHosts
from app.main import create_app
from app.middleware import ApiKeyAuth
from app.mock import MockModel
from app.types import ASGIApp, Message, Receive, Scope, Send
from tests.servers import relay_settings, serve_in_thread
from tests.sse import chat, post_stream
from tests.streams import create, read

SERVED = {
    ("POST", "/v1/chat/completions"), ("POST", "/v1/generate"), ("POST", "/v1/streams"),
    ("GET", "/v1/streams/{stream_id}/events"), ("DELETE", "/v1/streams/{stream_id}"),
}


def test_every_route_is_behind_the_one_middleware_stack(mock: tuple[MockModel, str]) -> None:
    """Hosts, then CORS, then keys, then the router: a middleware added to the stack is in front of every route."""
    app = create_app(relay_settings(mock[1], allowed_hosts=("relay.example",), cors_origins=("https://chat.example",), api_keys=("k",)))
    layers = []
    while not isinstance(app, Router):
        layers.append(type(app))
        app = app.app  # type: ignore[attr-defined]
    assert layers == [AllowedHosts, CORSMiddleware, ApiKeyAuth]
    paths = {route.path for route in app.routes}  # type: ignore[attr-defined]
    assert {path for _, path in SERVED} | {"/", "/static", "/healthz", "/readyz"} <= paths


class _Callers:
    """The server's side of ``send``: records the module of whoever calls it with a body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.modules: dict[str, set[str]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        callers = self.modules.setdefault(scope["path"], set())

        async def server_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                callers.add(sys._getframe(1).f_globals["__name__"])
            await send(message)

        await self.app(scope, receive, server_send)


@pytest.fixture(scope="module")
def watched(mock: tuple[MockModel, str]) -> Iterator[tuple[_Callers, str]]:
    callers = _Callers(create_app(relay_settings(mock[1], models=("mock",))))
    with serve_in_thread(callers) as url:
        yield callers, url


async def test_the_streams_send_each_event_to_the_server_with_no_wrapper_between(
    watched: tuple[_Callers, str], client: httpx.AsyncClient,
) -> None:
    """Every event costs one call into the server: no middleware wraps the streaming routes' ``send``."""
    callers, url = watched
    for path, body in [("/v1/chat/completions", chat(stream=True, max_tokens=3)), ("/v1/generate", {"prompt": "x", "stream": True, "max_tokens": 3})]:
        response, events = await post_stream(client, url + path, body)
        assert response.status_code == 200 and events
    created = await create(client, url, {"prompt": "x", "max_tokens": 3})
    response, events = await read(client, created["events_url"])
    assert response.status_code == 200 and events
    events_path = httpx.URL(created["events_url"]).path
    for path in ("/v1/chat/completions", "/v1/generate", events_path):
        assert callers.modules[path] and all(module.startswith("app.") for module in callers.modules[path]), (path, callers.modules[path])


async def test_an_unknown_path_under_v1_names_the_endpoints_the_relay_serves(watched: tuple[_Callers, str], client: httpx.AsyncClient) -> None:
    _, url = watched
    response = await client.post(url + "/v1/completions", json={"prompt": "x"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["type"], error["param"]) == ("not_found", "invalid_request_error", None)
    assert "/v1/completions" in error["message"]
    for method, path in SERVED:
        assert f"{method} {path}" in error["message"]


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/nowhere", 404, "not_found"),
    ("GET", "/static/nothing.js", 404, "not_found"),
    ("POST", "/static/chat.js", 405, "method_not_allowed"),
    ("GET", "/v1/generate", 405, "method_not_allowed"),
    ("PUT", "/v1/streams/st_x", 405, "method_not_allowed"),
])
async def test_unknown_paths_and_methods_answer_in_the_relays_error_shape(
    watched: tuple[_Callers, str], client: httpx.AsyncClient, method: str, path: str, status: int, code: str,
) -> None:
    _, url = watched
    response = await client.request(method, url + path)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    if status == 405:
        assert response.headers["allow"]


async def test_the_static_files_and_the_page_are_served(watched: tuple[_Callers, str], client: httpx.AsyncClient) -> None:
    _, url = watched
    assert (await client.get(url + "/static/chat.js")).status_code == 200
    page = await client.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
