"""ASGI callable types, re-exported from Starlette for the modules that speak raw ASGI."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]
