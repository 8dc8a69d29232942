"""Creating and reading resumable streams in tests, the way a browser's EventSource does."""

from __future__ import annotations

from typing import Any

import anyio
import httpx

from app.streaming.sse import SSEEvent, SSEParser
from tests.sse import data

TERMINAL = ("done", "error")


async def create(client: httpx.AsyncClient, relay_url: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = await client.post(relay_url + "/v1/streams", json=body, **kwargs)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def read(
    client: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: str | None = None,
    stop_after: int | None = None,
    seconds: float = 10,
) -> tuple[httpx.Response, list[SSEEvent]]:
    """GET an events URL and read events until the body ends, or until ``stop_after`` events, then hang up."""
    headers = {"last-event-id": last_event_id} if last_event_id is not None else {}
    events: list[SSEEvent] = []
    parser = SSEParser()
    with anyio.fail_after(seconds):
        async with client.stream("GET", url, headers=headers) as response:
            async for chunk in response.aiter_raw():
                events.extend(parser.feed(chunk))
                if stop_after is not None and len(events) >= stop_after:
                    break
    return response, events


def text_of(events: list[SSEEvent]) -> str:
    return "".join(data(event)["text"] for event in events if event.event == "token")
