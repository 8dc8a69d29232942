"""``GET /``: the chat page, plain HTML, CSS and JavaScript from ``app/static/`` (no build step)."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import FileResponse

from app.types import Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The page talks to this relay only: the browser refuses anything else it might try to load.
_HEADERS = {"cache-control": "no-cache", "content-security-policy": "default-src 'self'", "x-content-type-options": "nosniff"}


async def chat_page(scope: Scope, receive: Receive, send: Send) -> None:
    response = FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)
    await response(scope, receive, send)
