"""A cheap stand-in for the mock model server, so that the upstream is not the bottleneck.

The embedded mock (``python -m app mock``) costs about 20 µs of CPU per token: at 1,000
streams x 50 tokens/s it needs a whole core, and in the benchmark it shares core 0 with the
load generator. This one speaks the same wire format (OpenAI chat-completion chunks with
the same tokens, ``data: [DONE]``, the usage chunk when ``stream_options.include_usage``),
paces each stream from its own start exactly like the mock (``ttft``, then one token every
``interval``; a stream whose connection is paused by flow control catches up afterwards),
honours ``x-mock-ttft`` / ``x-mock-interval`` / ``x-mock-tokens`` and ``max_tokens``, keeps
connections alive, and records disconnects for ``GET /mock/stats`` in the same shape.
It is an asyncio Protocol on uvloop with httptools, one timer per stream, and no ASGI.
Faults are not implemented: this is for throughput, not for correctness tests.

A request with ``tools`` is answered with two parallel tool calls instead (the bench's
``tool-calls`` scenario), paced the same, one chunk per token: the first half of the tokens
are the argument fragments of call 0, the rest those of call 1, OpenAI's chunk shape
(``delta.tool_calls[{index, id, type, function: {name, arguments}}]`` on a call's first
fragment, ``{index, function: {arguments}}`` after), the arguments of each call a JSON object
``{"text": "…"}``, ``finish_reason`` ``tool_calls`` (or ``length``). With ``--pad N``, each text
token ends with N underscores: at 42, a content chunk is as long as an argument fragment's,
both as the mock sends it and as the relay re-encodes it (the bench's "text, as long").

    python bench/fastmock.py --port 8001 --ttft 0 --interval 0.02 --tokens 100
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from collections import deque
from typing import Any

import httptools
import msgspec
import uvloop

from app.mock import decode_request, mock_text, prompt_of

_encode = msgspec.json.Encoder().encode


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"


class Model:
    def __init__(self, ttft: float, interval: float, tokens: int, pad: int = 0) -> None:
        self.ttft = ttft
        self.pad = "_" * pad
        self.interval = interval
        self.tokens = tokens
        self.requests = 0
        self.connections = 0
        self.disconnects: deque[dict[str, Any]] = deque(maxlen=100_000)


class Stream:
    """One streaming answer on a connection, driven by its own timer."""

    __slots__ = ("chunks", "conn", "done", "head", "i", "interval", "record", "start", "timer", "tokens", "usage")

    def __init__(self, conn: Connection, record: dict[str, Any], head: bytes, tokens: list[str], ttft: float, interval: float, usage: bytes) -> None:
        self.conn = conn
        self.record = record
        self.head = head
        self.tokens = tokens
        self.interval = interval
        self.usage = usage
        self.i = 0
        self.done = False
        loop = conn.loop
        self.start = loop.time() + ttft
        self.timer: asyncio.TimerHandle | None = loop.call_at(self.start, self.tick)

    def tick(self) -> None:
        self.timer = None
        conn = self.conn
        if self.done or conn.closed:
            return
        if conn.paused:
            conn.waiting = self
            return
        loop = conn.loop
        now = loop.time()
        head = self.head
        out = []
        if self.i == 0:
            out.append(head + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n')
        tokens = self.tokens
        # Every token that is due (one, unless we were paused or woke up late).
        while self.i < len(tokens) and self.start + self.i * self.interval <= now + 0.0005:
            out.append(head + self.delta(self.i) + b',"finish_reason":null}]}\n\n')
            self.i += 1
        self.record["tokens_sent"] = self.i
        if self.i >= len(tokens):
            out.append(self.usage + b"data: [DONE]\n\n")
            self.done = True
            self.record["finished"] = True
        data = b"".join(out)
        conn.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        if self.done:
            conn.end_response()
        else:
            self.timer = loop.call_at(self.start + self.i * self.interval, self.tick)

    def delta(self, i: int) -> bytes:
        """The choice's ``index`` and ``delta`` that carry token ``i``."""
        return b'{"index":0,"delta":{"content":' + _encode(self.tokens[i]) + b"}"

    def cancel(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class CallStream(Stream):
    """The same tokens, as the argument fragments of two parallel tool calls (the first half call 0's, the rest call 1's)."""

    __slots__ = ("names", "rid")

    def __init__(self, conn: Connection, record: dict[str, Any], head: bytes, tokens: list[str], ttft: float, interval: float, usage: bytes,
                 names: list[bytes], rid: str) -> None:
        super().__init__(conn, record, head, tokens, ttft, interval, usage)
        self.names = names
        self.rid = rid

    def delta(self, i: int) -> bytes:
        count = len(self.tokens)
        half = (count + 1) // 2
        call, first, last = (0, 0, half - 1) if i < half else (1, half, count - 1)
        text = _encode(self.tokens[i])[1:-1].decode()  # the token inside a JSON string
        fragment = _encode(('{"text":"' if i == first else "") + text + ('"}' if i == last else ""))
        if i != first:
            return b'{"index":0,"delta":{"tool_calls":[{"index":%d,"function":{"arguments":%b}}]}' % (call, fragment)
        opened = b'"index":%d,"id":"call_%b_%d","type":"function","function":{"name":%b,"arguments":%b}' % (
            call, self.rid.encode(), call, self.names[call], fragment)
        return b'{"index":0,"delta":{"tool_calls":[{' + opened + b"}]}"


class Connection(asyncio.Protocol):
    def __init__(self, model: Model) -> None:
        self.model = model
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.closed = False
        self.paused = False
        self.waiting: Stream | None = None
        self.stream: Stream | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.model.connections += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        stream = self.stream
        if stream is not None and not stream.done:
            stream.cancel()
            record = stream.record
            record["at"] = time.monotonic()
            record["wall"] = time.time()
            self.model.disconnects.append(record)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.tick()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            self.chat(b"".join(self.body))
        elif method == b"GET" and path == b"/mock/stats":
            self.json(200, {"requests": self.model.requests, "connections": self.model.connections, "disconnects": list(self.model.disconnects)})
        else:
            self.json(404, {"error": {"message": "not found", "type": "invalid_request_error", "code": "not_found"}})

    # answers

    def json(self, status: int, body: Any) -> None:
        data = _encode(body)
        reason = b"OK" if status == 200 else b"Error"
        self.transport.write(b"HTTP/1.1 %d %b\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (status, reason, len(data), data))
        self.end_response(chunked=False)

    def end_response(self, chunked: bool = True) -> None:
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        self.stream = None
        if not self.parser.should_keep_alive():
            self.transport.close()

    def chat(self, body: bytes) -> None:
        model = self.model
        model.requests += 1
        try:
            request = decode_request(body)
        except msgspec.DecodeError as exc:
            self.json(400, {"error": {"message": str(exc), "type": "invalid_request_error", "code": "invalid_json"}})
            return
        if not request.stream:
            self.json(400, {"error": {"message": "the bench mock only streams", "type": "invalid_request_error", "code": "stream_only"}})
            return
        headers = self.headers
        ttft = float(headers.get(b"x-mock-ttft", model.ttft))
        interval = float(headers.get(b"x-mock-interval", model.interval))
        natural = int(headers.get(b"x-mock-tokens", model.tokens))
        limit = request.max_completion_tokens or request.max_tokens or natural
        prompt = prompt_of(request.messages)
        tokens = mock_text(prompt, min(limit, natural))
        names = [_encode(tool.function.name) for tool in request.tools or () if tool.function is not None and tool.function.name][:2]
        if model.pad and not names:
            tokens = [token + model.pad for token in tokens]
        reason = "length" if limit < natural else ("tool_calls" if names else "stop")
        rid = headers.get(b"x-request-id", b"").decode()
        record: dict[str, Any] = {"request_id": rid, "model": request.model, "tokens_sent": 0}
        head = b'data: {"id":"chatcmpl-mock-%b","object":"chat.completion.chunk","created":%d,"model":%b,"choices":[' % (
            (rid or "0").encode(),
            int(time.time()),
            _encode(request.model),
        )
        end = head + b'{"index":0,"delta":{},"finish_reason":' + _encode(reason) + b"}]}\n\n"
        if request.stream_options is not None and request.stream_options.include_usage:
            words = len(prompt.split())
            usage = {"prompt_tokens": words, "completion_tokens": len(tokens), "total_tokens": words + len(tokens)}
            end += head + b'],"usage":' + _encode(usage) + b"}\n\n"
        self.transport.write(SSE_HEAD)
        if names:
            self.stream = CallStream(self, record, head, tokens, ttft, interval, end, (names * 2)[:2], rid or "0")
        else:
            self.stream = Stream(self, record, head, tokens, ttft, interval, end)


async def serve(host: str, port: int, model: Model) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = await loop.create_server(lambda: Connection(model), sock=sock, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--ttft", type=float, default=0.2)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--pad", type=int, default=0, help="underscores at the end of each text token")
    args = p.parse_args(argv)
    try:
        uvloop.run(serve(args.host, args.port, Model(args.ttft, args.interval, args.tokens, args.pad)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
