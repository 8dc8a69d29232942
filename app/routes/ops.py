"""``GET /healthz`` (the process is alive) and ``GET /readyz`` (it can relay)."""

from __future__ import annotations

from app.routes.http import json_body, send_json
from app.runtime import Runtime
from app.types import Receive, Scope, Send


async def healthz(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, b'{"status":"ok"}')


async def readyz(scope: Scope, receive: Receive, send: Send) -> None:
    runtime: Runtime | None = scope.get("state", {}).get("runtime")
    ready = runtime is not None and not runtime.client.closed
    body = {"status": "ready" if ready else "not_ready"}
    if runtime is not None:
        body["upstream"] = runtime.upstream.name
        body["in_flight"] = str(len(runtime.live))
    await send_json(send, 200 if ready else 503, json_body(body))
