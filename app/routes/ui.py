"""``GET /``: the chat page (and ``/docs``: app/routes/openapi.py), plain HTML, CSS and JavaScript from ``app/static/`` (no build step)."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import FileResponse

from app.types import Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The page talks to this relay only: the browser refuses anything else it might try to load.
_HEADERS = {"cache-control": "no-cache", "content-security-policy": "default-src 'self'", "x-content-type-options": "nosniff"}


async def chat_page(scope: Scope, receive: Receive, send: Send) -> None:
    await send_page(scope, receive, send, "index.html")


async def send_page(scope: Scope, receive: Receive, send: Send, name: str) -> None:
    """The page ``name`` of ``app/static/``, allowed to load nothing but from this relay."""
    response = FileResponse(STATIC_DIR / name, media_type="text/html; charset=utf-8", headers=_HEADERS)
    await response(scope, receive, send)
