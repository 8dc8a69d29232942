"""What to send: the request for one URL, built once and reused for every stream.

The API is told by the path, and decides the default body:

    …/generate           native: {"model", "prompt", "max_tokens", "stream": true}
    …/chat/completions   OpenAI chat: {"model", "messages", "stream": true, "stream_options": {"include_usage": true}}
    …/completions        OpenAI legacy completions: {"model", "prompt", "stream": true, …}
    …/messages           Anthropic Messages: {"model", "max_tokens", "messages", "stream": true}
    …/responses          OpenAI Responses: {"model", "input", "max_output_tokens", "stream": true}
    anything else        an EventSource URL: GET, no body

``--body`` replaces the default body (the method then defaults to POST), ``--method`` and
``-H`` override the rest. The request bytes are built once; per stream only an optional
``X-Request-Id`` differs.
"""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import urlsplit

import msgspec

USER_AGENT = "token-relay-loadtest/0.1"
APIS = ("native", "openai-chat", "openai-completions", "anthropic-messages", "openai-responses", "eventsource")


class TargetError(ValueError):
    """The URL, a header or the body cannot make a request."""


class Target(msgspec.Struct, frozen=True):
    url: str
    api: str
    method: str
    host: str
    port: int
    tls: bool
    head: bytes  # the request line and headers, without the final blank line
    body: bytes

    def request(self, request_id: str | None = None) -> bytes:
        """The bytes of one request, with ``X-Request-Id`` when given."""
        if request_id is None:
            return self.head + b"\r\n\r\n" + self.body
        return self.head + b"\r\nX-Request-Id: " + request_id.encode() + b"\r\n\r\n" + self.body

    def ssl_context(self, verify: bool = True) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def api_of(path: str) -> str:
    path = path.rstrip("/")
    if path.endswith("/generate"):
        return "native"
    if path.endswith("/chat/completions"):
        return "openai-chat"
    if path.endswith("/completions"):
        return "openai-completions"
    if path.endswith("/messages"):
        return "anthropic-messages"
    if path.endswith("/responses"):
        return "openai-responses"
    return "eventsource"


def default_body(api: str, *, model: str, prompt: str, max_tokens: int) -> bytes:
    body: dict[str, Any]
    if api == "native":
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    elif api == "openai-chat":
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}
    elif api == "openai-completions":
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    elif api == "anthropic-messages":
        body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}], "stream": True}
    elif api == "openai-responses":
        body = {"model": model, "input": prompt, "max_output_tokens": max_tokens, "stream": True}
    else:
        return b""
    return json.dumps(body, separators=(",", ":")).encode()


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` to a pair; raises ``TargetError`` for anything else."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name or any(c in name for c in " \t\r\n") or "\r" in value or "\n" in value:
        raise TargetError(f"not a header 'Name: value': {text!r}")
    return name, value


def build_target(
    url: str, *, method: str | None = None, headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
    api: str | None = None, model: str = "mock", prompt: str = "Tell me a story about token relays.", max_tokens: int = 64,
) -> Target:
    """The request for ``url``; ``api`` is inferred from the path unless given."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"not an http(s) URL: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise TargetError(f"bad port in {url!r}") from exc
    api = api or api_of(parts.path)
    if api not in APIS:
        raise TargetError(f"unknown API {api!r}: one of {', '.join(APIS)}")
    if body is None:
        body = default_body(api, model=model, prompt=prompt, max_tokens=max_tokens)
    method = (method or ("POST" if body else "GET")).upper()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default_port = 443 if parts.scheme == "https" else 80
    fields: dict[str, tuple[str, str]] = {}  # lower-cased name -> (name as given, value)
    for name, value in [
        ("Host", host if port == default_port else f"{host}:{port}"),
        ("User-Agent", USER_AGENT),
        ("Accept", "text/event-stream"),
        ("Cache-Control", "no-cache"),
        *([("Content-Type", "application/json")] if body else []),
        *(headers or []),
    ]:
        fields[name.lower()] = (name, value)
    if body or method in ("POST", "PUT", "PATCH"):
        fields["content-length"] = ("Content-Length", str(len(body)))
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.values())]
    try:
        head = "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise TargetError(f"a header or the path is not Latin-1: {exc}") from exc
    return Target(url=url, api=api, method=method, host=parts.hostname, port=port, tls=parts.scheme == "https", head=head, body=body)
