"""The router: Starlette's ``Router`` over plain-ASGI routes, answering 404 and 405 in the relay's error shape.

It is the innermost layer of the relay's one middleware stack (app/main.py), and adds no
middleware of its own: a ``Starlette`` app would put ``ServerErrorMiddleware`` and
``ExceptionMiddleware`` around it, and both wrap ``send``, a call on every event of every
stream. Here an endpoint's ``send`` is the one the router was given. An exception an endpoint
lets out is the server's to answer (a 500 and a log line, as ``ServerErrorMiddleware`` would);
the routes send their own errors (``app/routes/http.py``).

The router still runs the lifespan: what it yields becomes ``scope["state"]``.

A stream waits minutes for its first token, and every frame between the server and its
endpoint is held for as long: the router finds a relay route itself (an exact path in a dict,
else the few with parameters) and returns the endpoint's coroutine, which its caller awaits,
instead of awaiting it in frames of its own (Starlette's ``Router.__call__``, ``Router.app``,
``Route.handle``: 0.9 KB a stream). Everything else (the lifespan, the static files' mount, 404)
is Starlette's.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Lifespan
from starlette.websockets import WebSocketClose

from app.contract import Operation
from app.errors import RequestError
from app.routes.http import send_error
from app.types import ASGIApp, Receive, Scope, Send

_CONVERTOR = re.compile(r":\w+}")  # ``{model:path}`` is told as ``{model}``


class ASGIRoute(Route):
    """``path`` answered by the plain ASGI function ``endpoint`` for ``method`` (and HEAD with GET); other methods get a 405.

    ``operation`` is what it takes and answers, for the API contract (app/contract.py).
    """

    def __init__(self, path: str, endpoint: ASGIApp, method: str, operation: Operation) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.method = method
        self.operation = operation
        self.app = endpoint  # as it is: Starlette would wrap a function as ``request -> response``
        self.allow = ", ".join(sorted(self.methods or ()))

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.dispatch(scope, receive, send)

    def dispatch(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        """The endpoint's coroutine, or a 405's, for the caller to await."""
        if self.methods is None or scope["method"] in self.methods:
            answer: Coroutine[Any, Any, None] = self.endpoint(scope, receive, send)
            return answer
        return send_error(send, RequestError(
            405, "method_not_allowed", f"{scope['path']} answers {self.allow}, not {scope['method']}", headers={"Allow": self.allow},
        ))


class Files:
    """Starlette's ``StaticFiles``, with its refusals (404, 405) in the relay's error shape."""

    def __init__(self, files: StaticFiles) -> None:
        self.files = files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.files(scope, receive, send)
        except HTTPException as exc:  # raised before anything is sent
            await send_error(send, http_error(exc))


class RelayRouter(Router):
    """The relay's routes; an unknown path under ``/v1`` is told which endpoints there are."""

    def __init__(self, routes: Sequence[BaseRoute], lifespan: Lifespan[Any]) -> None:
        super().__init__(routes, lifespan=lifespan)  # and no middleware: ``self.app`` is the whole of Starlette's router
        relay = [route for route in routes if isinstance(route, ASGIRoute)]
        self._exact = {route.path: route for route in relay if not route.param_convertors}
        self._parametrised = [route for route in relay if route.param_convertors]
        if len(self._exact) + len(self._parametrised) != len(relay):
            raise ValueError("one relay route per path")
        self.served = ", ".join(
            f"{method} {_CONVERTOR.sub('}', route.path)}"
            for route in routes if isinstance(route, Route) and route.path.startswith("/v1/")
            for method in sorted(route.methods or ()) if method != "HEAD"
        )

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        # Not ``async``: the caller awaits the endpoint itself. The router is never the outermost
        # app (``ApiKeyAuth`` always wraps it), whose ``__call__`` servers check to be a coroutine function.
        if scope["type"] == "http":
            route = self._exact.get(scope["path"])
            if route is not None:
                return route.dispatch(scope, receive, send)
            for route in self._parametrised:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    return route.dispatch(scope, receive, send)
        return self.app(scope, receive, send)

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await WebSocketClose()(scope, receive, send)
            return
        path: str = scope["path"]
        under_v1 = path == "/v1" or path.startswith("/v1/")
        message = f"{path} is not an endpoint of this relay, which serves {self.served}" if under_v1 else "Not Found"
        await send_error(send, RequestError(404, "not_found", message))


def http_error(exc: HTTPException) -> RequestError:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return RequestError(exc.status_code, code, exc.detail, headers=dict(exc.headers or {}))
