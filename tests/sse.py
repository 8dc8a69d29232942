"""Reading SSE responses in tests, with the relay's own parser (itself tested in tests/streaming/test_sse.py)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx

from app.streaming.sse import SSEEvent, SSEParser


async def read_events(response: httpx.Response) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    async for chunk in response.aiter_raw():
        events.extend(parser.feed(chunk))
    return events


async def post_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                      seconds: float = 10) -> tuple[httpx.Response, list[SSEEvent]]:
    with anyio.fail_after(seconds):
        async with client.stream("POST", url, json=body, headers=headers) as response:
            events = await read_events(response)
    return response, events


def data(event: SSEEvent) -> Any:
    return json.loads(event.data)


def chat(model: str = "mock", content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}
