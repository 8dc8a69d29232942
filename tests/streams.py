"""Creating and reading resumable streams in tests, the way a browser's EventSource does."""

from __future__ import annotations

import urllib.parse
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
    headers: dict[str, str] | None = None,
) -> tuple[httpx.Response, list[SSEEvent]]:
    """GET an events URL and read events until the body ends, or until ``stop_after`` events, then hang up."""
    headers = dict(headers or {}) | ({"last-event-id": last_event_id} if last_event_id is not None else {})
    events: list[SSEEvent] = []
    # A browser's EventSource has no bound on an event: neither has this reader (a replay can be one large event).
    parser = SSEParser(max_line=1 << 40, max_event=1 << 40)
    with anyio.fail_after(seconds):
        async with client.stream("GET", url, headers=headers) as response:
            async for chunk in response.aiter_raw():
                events.extend(parser.feed(chunk))
                if stop_after is not None and len(events) >= stop_after:
                    break
    return response, events


def text_of(events: list[SSEEvent]) -> str:
    return "".join(data(event)["text"] for event in events if event.event == "token")


def misspelled_token_queries(token: str) -> list[str]:
    """Query strings that carry ``token`` under another spelling: none of them is a token to the relay."""
    expires, signature = token.split(".")
    escaped = "".join(f"%{ord(char):02X}" for char in token)
    return [
        f"%74oken={token}", f"%54oken={token}", f"t%6Fken={token}", f"%2574oken={token}", f"%252574%25256F%25256B%252565%25256E={token}",
        f"TOKEN={token}", f"Token={token}", f"x=1;token={token}", f"x=1;%74oken={token}", f"token={token}&token={token}", f"token=x&token={token}",
        f"token={token}&token=x", f"token%3D{token}", f"token={expires}%2E{signature}", f"token={escaped}", f"x={escaped}", f"token={token}%00",
        f"token={token};x=1", f"token=+{token}", f"token={token}+", f"token+={token}", f"+token={token}", f"token%20={token}",
        f"token=0{token}", f"token={token}=", f"x={token}", f"last_event_id={token}",
    ]


def decodes_to(text: str, secret: str) -> bool:
    """Whether ``secret`` is in ``text``, or in it once percent-decoded up to five times."""
    for _ in range(6):
        if secret in text:
            return True
        text = urllib.parse.unquote(text)
    return False
