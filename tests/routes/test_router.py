"""The router: an endpoint runs as the frame right below whoever called the router, with nothing of the router's kept on its stack."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from types import CodeType

import pytest

from app import contract
from app.routes.router import ASGIRoute, RelayRouter
from app.types import Message, Receive, Scope, Send


@contextlib.asynccontextmanager
async def _lifespan(app: object) -> AsyncIterator[None]:
    yield


class _Calls:
    """An endpoint that records the code of the frame awaiting it, and what it was given."""

    def __init__(self) -> None:
        self.callers: list[CodeType] = []
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.callers.append(sys._getframe(1).f_code)
        self.scopes.append(scope)


async def _receive() -> Message:
    return {"type": "http.disconnect"}


async def _call(router: RelayRouter, method: str, path: str, sent: list[Message]) -> None:
    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}
    await router(scope, _receive, send)


@pytest.mark.parametrize(("method", "path", "params"), [
    ("POST", "/v1/chat/completions", {}),
    ("GET", "/v1/streams/st_1/events", {"stream_id": "st_1"}),
    ("HEAD", "/v1/streams/st_1/events", {"stream_id": "st_1"}),
])
async def test_an_endpoint_is_awaited_by_the_routers_caller_itself(method: str, path: str, params: dict[str, str]) -> None:
    """A stream waits minutes for its first token: every frame between the server and the endpoint is memory it holds meanwhile."""
    calls = _Calls()
    router = RelayRouter([
        ASGIRoute("/v1/chat/completions", calls, "POST", contract.CHAT),
        ASGIRoute("/v1/streams/{stream_id}/events", calls, "GET", contract.STREAM_EVENTS),
    ], _lifespan)
    sent: list[Message] = []
    await _call(router, method, path, sent)
    assert calls.callers == [_call.__code__]
    assert calls.scopes[0].get("path_params", {}) == params
    assert sent == []


async def test_a_route_refuses_other_methods_with_405_and_an_unknown_path_gets_404() -> None:
    calls = _Calls()
    router = RelayRouter([
        ASGIRoute("/v1/generate", calls, "POST", contract.GENERATE), ASGIRoute("/v1/streams/{stream_id}", calls, "DELETE", contract.CANCEL_STREAM),
    ], _lifespan)
    for method, path, status in [("GET", "/v1/generate", 405), ("PUT", "/v1/streams/st_1", 405), ("POST", "/v1/elsewhere", 404)]:
        sent: list[Message] = []
        await _call(router, method, path, sent)
        assert sent[0]["status"] == status, (method, path)
    assert calls.callers == []
