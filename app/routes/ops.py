"""``GET /healthz`` (the process is alive) and ``GET /readyz`` (it can relay, and each upstream's state)."""

from __future__ import annotations

from app.routes.http import json_body, send_json
from app.runtime import Runtime
from app.streaming.resumable import ResumableStreams
from app.types import Receive, Scope, Send


async def healthz(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, b'{"status":"ok"}')


async def readyz(scope: Scope, receive: Receive, send: Send) -> None:
    """Ready when the client is open and some upstream's circuit is not open; each upstream's state is listed.

    With Redis, ``redis`` says whether it answers. Redis down leaves the process ready: direct
    streams still work, and every process shares the one Redis, so taking them all out of the
    load balancer would turn an outage of resumable streams into one of everything.
    """
    runtime: Runtime | None = scope.get("state", {}).get("runtime")
    streams: ResumableStreams | None = scope.get("state", {}).get("streams")
    upstreams = runtime.upstreams.values() if runtime is not None else ()
    ready = runtime is not None and not runtime.client.closed and any(upstream.circuit.state != "open" for upstream in upstreams)
    body: dict[str, object] = {"status": "ready" if ready else "not_ready"}
    if runtime is not None:
        body["in_flight"] = len(runtime.live)
        body["upstreams"] = {upstream.name: upstream.status() for upstream in upstreams}
    if streams is not None and streams.peers is not None:
        body["redis"] = "up" if await streams.peers.ping() else "down"
    await send_json(send, 200 if ready else 503, json_body(body))
