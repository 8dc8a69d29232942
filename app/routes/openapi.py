"""``GET /openapi.json``, the API contract (app/contract.py), and ``GET /docs``, a page that renders it (no external fetch)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from app import contract
from app.routes.http import json_body, send_json
from app.routes.router import ASGIRoute
from app.routes.ui import send_page
from app.types import Receive, Scope, Send


class _Document:
    """Answers the document, built once the routes it describes (itself among them) are all known."""

    body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.body)


def contract_routes(routes: list[ASGIRoute]) -> list[ASGIRoute]:
    """``/openapi.json``, describing ``routes`` and itself, and ``/docs``."""
    document = _Document()
    own = [ASGIRoute("/openapi.json", document, "GET", contract.OPENAPI), ASGIRoute("/docs", docs_page, "GET", contract.DOCS)]
    described = [(route.path, route.method, route.operation) for route in [*routes, *own]]
    document.body = json_body(contract.document(described, version=_version()))
    return own


async def docs_page(scope: Scope, receive: Receive, send: Send) -> None:
    await send_page(scope, receive, send, "docs.html")


def _version() -> str:
    try:
        return version("token-relay")
    except PackageNotFoundError:
        return "0"
