"""The embedded mock model server: OpenAI-compatible chat completions with fault injection.

``POST /v1/chat/completions`` streams (or not) a deterministic text for the last user
message, paced by ``ttft`` (time to first token), ``interval`` (between tokens) and
``tokens`` (length when ``max_tokens`` does not cut it short). Per request, headers
``x-mock-ttft``/``x-mock-interval`` (seconds) and ``x-mock-tokens`` override them.

Faults, chosen by model name ``mock-fault-<kind>`` or header ``x-mock-fault: <kind>``:

    http-500         500 with a JSON error, before the stream
    http-429         429 with Retry-After, before the stream
    error-midstream  an in-band {"error": ...} chunk halfway, then [DONE]
    reset            the connection is dropped halfway
    no-done          the body ends halfway, without finish_reason or [DONE]
    stall-head       no response head at all
    stall-first      head sent, no token ever
    stall-midstream  tokens stop halfway, the connection stays open
    malformed        a chunk that is not JSON, halfway

Every client disconnect before the response ends is recorded (monotonic and wall time,
request id, tokens sent); ``GET /mock/stats`` returns the records and the request count.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from app.types import Receive, Scope, Send

FAULTS = ("http-500", "http-429", "error-midstream", "reset", "no-done", "stall-head", "stall-first", "stall-midstream", "malformed")
MODELS = ("mock", *(f"mock-fault-{fault}" for fault in FAULTS))

_WORDS = (
    "the quick brown fox jumps over a lazy dog while streams of tokens flow from model to "
    "relay to reader and every event arrives in order with nothing lost nothing doubled "
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u6f22\u5b57 \U0001f680"
).split()


class _Message(msgspec.Struct):
    role: str = "user"
    content: str | list[dict[str, Any]] | None = None


class _Options(msgspec.Struct):
    include_usage: bool = False


class MockRequest(msgspec.Struct):
    """The part of a chat completions request the mock reads."""

    model: str = "mock"
    messages: list[_Message] = []
    stream: bool = False
    stream_options: _Options | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


decode_request = msgspec.json.Decoder(MockRequest).decode
_encode = msgspec.json.Encoder().encode


def mock_text(prompt: str, count: int) -> list[str]:
    """The tokens the mock answers ``prompt`` with: deterministic, a word each."""
    seed = hashlib.sha256(prompt.encode()).digest()
    return [(" " if i else "") + _WORDS[(seed[i % 32] + i * 7) % len(_WORDS)] for i in range(count)]


def prompt_of(request: MockRequest) -> str:
    """The last user message's text: what the mock's answer is derived from."""
    for message in reversed(request.messages):
        if message.role == "user":
            content = message.content
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(part.get("text", "")) for part in content)
    return ""


class MockModel:
    def __init__(self, *, ttft: float = 0.2, interval: float = 0.02, tokens: int = 64, max_records: int = 10_000) -> None:
        self.ttft = ttft
        self.interval = interval
        self.tokens = tokens
        self.requests = 0
        self.completed = 0
        self.disconnects: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.peers: deque[str] = deque(maxlen=max_records)  # each request's client address, to see connection reuse
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

    def disconnect_of(self, request_id: str) -> dict[str, Any] | None:
        return next((record for record in self.disconnects if record["request_id"] == request_id), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        if path.endswith("/chat/completions") and method == "POST":
            await self._chat(scope, receive, send)
        elif path == "/mock/stats" and method == "GET":
            stats = {"requests": self.requests, "connections": len(set(self.peers)), "disconnects": list(self.disconnects)}
            await _json(send, 200, stats)
        elif path.endswith("/models") and method == "GET":
            await _json(send, 200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "mock"} for m in MODELS]})
        else:
            await _json(send, 404, {"error": {"message": "not found", "type": "invalid_request_error", "code": "not_found"}})

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._recorded:
            self.requests += 1
            self._recorded.notify_all()
        client = scope.get("client")
        self.peers.append(f"{client[0]}:{client[1]}" if client else "")
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            request = decode_request(body)
        except msgspec.DecodeError as exc:
            await _json(send, 400, {"error": {"message": str(exc), "type": "invalid_request_error", "code": "invalid_json"}})
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        fault = headers.get("x-mock-fault") or (request.model[len("mock-fault-"):] if request.model.startswith("mock-fault-") else None)
        if fault is not None and fault not in FAULTS:
            await _json(send, 404, {"error": {"message": f"no such fault {fault!r}", "type": "invalid_request_error", "code": "model_not_found"}})
            return
        if fault == "http-500":
            await _json(send, 500, {"error": {"message": "mock fault: internal error", "type": "server_error", "code": "mock_fault"}})
            return
        if fault == "http-429":
            error = {"error": {"message": "mock fault: rate limited", "type": "rate_limit_error", "code": "rate_limited"}}
            await _json(send, 429, error, [(b"retry-after", b"1")])
            return
        ttft = float(headers.get("x-mock-ttft", self.ttft))
        interval = float(headers.get("x-mock-interval", self.interval))
        natural = int(headers.get("x-mock-tokens", self.tokens))
        limit = request.max_completion_tokens or request.max_tokens or natural
        prompt = prompt_of(request)
        tokens = mock_text(prompt, min(limit, natural))
        reason = "length" if limit < natural else "stop"
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(tokens), "total_tokens": len(prompt.split()) + len(tokens)}
        record = {"request_id": headers.get("x-request-id", ""), "model": request.model, "tokens_sent": 0}
        completion_id = "chatcmpl-mock-" + (record["request_id"] or "0")
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, receive, record, tg.cancel_scope)
            if request.stream:
                include_usage = request.stream_options is not None and request.stream_options.include_usage
                await self._stream(send, record, request.model, completion_id, tokens, reason, usage, include_usage, ttft, interval, fault)
            else:
                await anyio.sleep(ttft + interval * max(len(tokens) - 1, 0))
                record["tokens_sent"] = len(tokens)
                await _json(send, 200, {
                    "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": request.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": reason}],
                    "usage": usage,
                })
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

    async def _stream(
        self, send: Send, record: dict[str, Any], model: str, completion_id: str, tokens: list[str], reason: str,
        usage: dict[str, int], include_usage: bool, ttft: float, interval: float, fault: str | None,
    ) -> None:
        if fault == "stall-head":
            await anyio.sleep_forever()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        created = str(int(time.time())).encode()
        head = b'data: {"id":"%b","object":"chat.completion.chunk","created":%b,"model":%b,"choices":[' % (completion_id.encode(), created, _encode(model))
        tail = b"}\n\n"
        halfway = len(tokens) // 2
        start = anyio.current_time()
        if fault == "stall-first":
            await anyio.sleep_forever()
        await anyio.sleep(ttft)
        role = head + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]' + tail
        await send({"type": "http.response.body", "body": role, "more_body": True})
        batch: list[bytes] = []
        for i, token in enumerate(tokens):
            if i == halfway and fault is not None:
                if fault == "stall-midstream":
                    await anyio.sleep_forever()
                if fault == "reset":
                    return  # ends the response unfinished: uvicorn drops the connection
                if fault == "no-done":
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if fault == "malformed":
                    await send({"type": "http.response.body", "body": b"data: {\"choices\": [\n\n", "more_body": True})
                if fault == "error-midstream":
                    error = {"error": {"message": "mock fault: the model failed mid-stream", "type": "server_error", "code": "mock_fault"}}
                    await send({"type": "http.response.body", "body": b"data: " + _encode(error) + b"\n\ndata: [DONE]\n\n", "more_body": False})
                    return
            chunk = head + b'{"index":0,"delta":{"content":' + _encode(token) + b'},"finish_reason":null}]' + tail
            if interval == 0:
                # Unpaced: write in batches, as a fast model server's socket would deliver them.
                batch.append(chunk)
                if len(batch) < 64 and i + 1 < len(tokens) and i + 1 != halfway:
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
        end = head + b'{"index":0,"delta":{},"finish_reason":' + _encode(reason) + b"}]" + tail
        if include_usage:
            end += head + b"]," + b'"usage":' + _encode(usage) + tail
        # Like Starlette's StreamingResponse (vLLM, TGI…): the last event, then the end of the body on its own.
        await send({"type": "http.response.body", "body": end + b"data: [DONE]\n\n", "more_body": True})
        await anyio.sleep(0.002)  # the generator's own end comes a moment later, as its own packet
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = _encode(body)
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": data})
