"""The mock model server as an ASGI app: routes, pacing, faults, and what it records of each request (package docstring)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from app.mock.answer import Call, compose
from app.mock.anthropic import AnthropicWire
from app.mock.ollama import OllamaWire
from app.mock.openai import OpenAIWire
from app.mock.options import MODELS, UnknownOption, options_of
from app.mock.tgi import TGIMessagesWire, TGIWire
from app.mock.wire import Wire
from app.types import Receive, Scope, Send

__all__ = ["MockModel", "wire_for"]

_encode = msgspec.json.Encoder().encode


def wire_for(path: str) -> type[Wire] | None:
    """The protocol a request path speaks, if any."""
    if path.endswith("/chat/completions"):
        return OpenAIWire
    if path.endswith("/api/chat"):
        return OllamaWire
    if path.endswith("/messages"):
        return AnthropicWire
    if path.endswith(("/generate_stream", "/generate")):
        return TGIWire
    return None


class MockModel:
    def __init__(
        self, *, ttft: float = 0.2, interval: float = 0.02, tokens: int = 64, max_records: int = 10_000, api_key: str | None = None,
    ) -> None:
        self.ttft = ttft
        self.api_key = api_key  # when set, required as "Authorization: Bearer KEY" or "x-api-key: KEY"
        self.interval = interval
        self.tokens = tokens
        self.requests = 0
        self.completed = 0
        self.disconnects: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.peers: deque[str] = deque(maxlen=max_records)  # each request's client address, to see connection reuse
        self.paths: deque[str] = deque(maxlen=max_records)  # each generation request's path, to see which upstream was asked
        self.request_ids: deque[str] = deque(maxlen=max_records)  # each generation request's x-request-id, once its body is read
        # The last generation requests' (x-request-id, body): what the upstream received, for tests. Few, as bodies can be large.
        self.bodies: deque[tuple[str, bytes]] = deque(maxlen=256)
        self._recorded = threading.Condition()

    def wait_for_disconnect(self, request_id: str, timeout: float) -> dict[str, Any]:
        """Block until the disconnect of ``request_id`` is recorded (for tests, from another thread)."""
        with self._recorded:
            found = self._recorded.wait_for(lambda: self.disconnect_of(request_id), timeout)
        if not found:
            raise TimeoutError(f"no disconnect recorded for {request_id!r} within {timeout} s")
        return found

    def wait_for_completed(self, count: int, timeout: float) -> None:
        """Block until ``count`` responses have been sent to their end (for tests, from another thread)."""
        with self._recorded:
            if not self._recorded.wait_for(lambda: self.completed >= count, timeout):
                raise TimeoutError(f"{self.completed} of {count} responses completed within {timeout} s")

    def wait_for_disconnects(self, count: int, timeout: float) -> None:
        """Block until ``count`` client disconnects have been recorded (for tests, from another thread)."""
        with self._recorded:
            if not self._recorded.wait_for(lambda: len(self.disconnects) >= count, timeout):
                raise TimeoutError(f"{len(self.disconnects)} of {count} disconnects recorded within {timeout} s")

    def wait_for_requests(self, count: int, timeout: float) -> None:
        """Block until ``count`` requests have arrived (for tests, from another thread)."""
        with self._recorded:
            if not self._recorded.wait_for(lambda: self.requests >= count, timeout):
                raise TimeoutError(f"{self.requests} of {count} requests arrived within {timeout} s")

    def body_of(self, request_id: str) -> bytes | None:
        """The body of the last generation request sent with ``request_id``, if it is among the recorded ones."""
        return next((body for rid, body in reversed(self.bodies) if rid == request_id), None)

    def disconnect_of(self, request_id: str) -> dict[str, Any] | None:
        return next((record for record in self.disconnects if record["request_id"] == request_id), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        wire = wire_for(path) if method == "POST" else None
        if wire is not None:
            await self._generate(wire, scope, receive, send)
        elif path == "/mock/stats" and method == "GET":
            stats = {"requests": self.requests, "connections": len(set(self.peers)), "disconnects": list(self.disconnects)}
            await _json(send, 200, stats)
        elif path.endswith("/models") and method == "GET":
            await _json(send, 200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "mock"} for m in MODELS]})
        elif path.endswith("/api/tags") and method == "GET":  # Ollama's list
            await _json(send, 200, {"models": [{"name": m, "model": m} for m in MODELS]})
        elif path.endswith("/info") and method == "GET":  # TGI's one model
            await _json(send, 200, {"model_id": MODELS[0], "max_total_tokens": 4096})
        else:
            await _json(send, 404, {"error": {"message": "not found", "type": "invalid_request_error", "code": "not_found"}})

    async def _generate(self, wire: type[Wire], scope: Scope, receive: Receive, send: Send) -> None:
        with self._recorded:
            self.requests += 1
            self._recorded.notify_all()
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else ""
        self.peers.append(peer)
        self.paths.append(scope["path"])
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            call = wire.parse(body)
        except msgspec.DecodeError as exc:
            await _json(send, 400, {"error": {"message": str(exc), "type": "invalid_request_error", "code": "invalid_json"}})
            return
        if scope["path"].endswith("/generate"):  # TGI's whole answer
            call.stream = False
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.request_ids.append(headers.get("x-request-id", ""))
        self.bodies.append((headers.get("x-request-id", ""), body))
        if self.api_key is not None and self.api_key not in (headers.get("authorization", "").removeprefix("Bearer "), headers.get("x-api-key")):
            await _json(send, 401, wire.error_status(401, "mock: invalid API key"))
            return
        try:
            options = options_of(scope["path"], headers, call.model)
        except UnknownOption as exc:
            await _json(send, 404, {"error": {"message": str(exc), "type": "invalid_request_error", "code": "model_not_found"}})
            return
        if options.server == "tgi" and wire is OpenAIWire:
            wire = TGIMessagesWire
        call, options = wire.narrow(call, options)
        fault = options.fault
        if fault == "http-500":
            await _json(send, 500, wire.error_status(500, "mock fault: internal error"))
            return
        if fault == "http-429":
            await _json(send, 429, wire.error_status(429, "mock fault: rate limited"), [(b"retry-after", b"1")])
            return
        ttft = float(headers.get("x-mock-ttft", self.ttft))
        interval = float(headers.get("x-mock-interval", self.interval))
        record = {"request_id": headers.get("x-request-id", ""), "model": call.model, "tokens_sent": 0, "peer": peer}
        framed = wire(compose(call, options, int(headers.get("x-mock-tokens", self.tokens)), record["request_id"]))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, receive, record, tg.cancel_scope)
            if call.stream:
                await self._stream(send, record, framed, call, ttft, interval, fault)
            else:
                await anyio.sleep(ttft + interval * max(framed.count - 1, 0))
                record["tokens_sent"] = framed.count
                await _json(send, 200, framed.whole())
            record["finished"] = True
            with self._recorded:
                self.completed += 1
                self._recorded.notify_all()
            tg.cancel_scope.cancel()

    async def _watch(self, receive: Receive, record: dict[str, Any], scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not record.get("finished"):
            record["at"] = time.monotonic()
            record["wall"] = time.time()
            with self._recorded:
                self.disconnects.append(record)
                self._recorded.notify_all()
            scope.cancel()

    async def _stream(self, send: Send, record: dict[str, Any], wire: Wire, call: Call, ttft: float, interval: float, fault: str | None) -> None:
        if fault == "stall-head":
            await anyio.sleep_forever()
        headers = [(b"content-type", wire.content_type), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        count, frame = wire.count, wire.framer()
        halfway = count // 2
        start = anyio.current_time()
        if fault == "stall-first":
            await anyio.sleep_forever()
        await anyio.sleep(ttft)
        opening = wire.head()
        if opening:
            await send({"type": "http.response.body", "body": opening, "more_body": True})
        batch: list[bytes] = []
        for i in range(count):
            if i == halfway and fault is not None:
                if fault == "stall-midstream":
                    await anyio.sleep_forever()
                if fault == "reset":
                    return  # ends the response unfinished: uvicorn drops the connection
                if fault == "no-done":
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if fault == "malformed":
                    await send({"type": "http.response.body", "body": wire.malformed, "more_body": True})
                if fault == "error-midstream":
                    await send({"type": "http.response.body", "body": wire.error_event(), "more_body": False})
                    return
            chunk = frame(i)
            if interval == 0:
                # Unpaced: write in batches, as a fast model server's socket would deliver them.
                batch.append(chunk)
                if len(batch) < 64 and i + 1 < count and i + 1 != halfway:
                    continue
                chunk = b"".join(batch)
                batch.clear()
                await anyio.lowlevel.checkpoint()
            elif i:
                # Pace from the start, so that slow wake-ups do not add up.
                delay = start + ttft + i * interval - anyio.current_time()
                await anyio.sleep(max(delay, 0))
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            record["tokens_sent"] = i + 1
        # Like Starlette's StreamingResponse (vLLM, TGI…): the last event, then the end of the body on its own.
        await send({"type": "http.response.body", "body": wire.tail(call.include_usage), "more_body": True})
        await anyio.sleep(0.002)  # the generator's own end comes a moment later, as its own packet
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = _encode(body)
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": data})
