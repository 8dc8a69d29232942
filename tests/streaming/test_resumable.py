"""Resumable streams: a reader that reconnects at any point receives every event exactly once, on the memory log and on Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.mock import mock_text
from app.streaming.sse import SSEEvent, SSEParser
from tests.servers import mock_server, relay_server, under_every_server
from tests.streams import create, text_of

TOKENS = 30


@pytest.fixture(scope="module")
def paced_relay_url(asgi_server: str, log_settings: dict[str, Any]) -> Iterator[str]:
    """The generation takes about 0.1 s, so cuts fall before, during and after it."""
    with mock_server(ttft=0.0, interval=0.003, tokens=TOKENS) as (_, upstream):
        with relay_server(upstream, server=asgi_server, models=("mock",), **({"stream_secret": "p" * 32} | log_settings)) as url:
            yield url


async def _read_until_cut(client: httpx.AsyncClient, url: str, last_event_id: str | None, cut: int | None) -> tuple[list[SSEEvent], bool]:
    """Read the events of one connection, hanging up after ``cut`` bytes (wherever that falls, even inside an event)."""
    headers = {"last-event-id": last_event_id} if last_event_id is not None else {}
    parser = SSEParser()
    events: list[SSEEvent] = []
    received = 0
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 204:
            return events, True
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            if cut is not None and received + len(chunk) >= cut:
                events.extend(parser.feed(chunk[: cut - received]))
                return events, False
            received += len(chunk)
            events.extend(parser.feed(chunk))
    return events, True


@under_every_server
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=600), max_size=6), first_by_query=st.booleans())
async def test_a_reader_that_reconnects_anywhere_gets_every_event_exactly_once(paced_relay_url: str, cuts: list[int], first_by_query: bool) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        created = await create(client, paced_relay_url, {"prompt": "resume", "max_tokens": TOKENS})
        received: list[SSEEvent] = []
        pending = list(cuts)
        with anyio.fail_after(15):
            while True:
                last = received[-1].id if received else None
                url = created["events_url"]
                if first_by_query and last is not None:
                    url, last = url + f"&last_event_id={last}", None  # a first connection that resumes
                events, ended = await _read_until_cut(client, url, last, pending.pop(0) if pending else None)
                received += events
                if ended:
                    break
    assert received[-1].event == "done"
    assert [int(e.id) for e in received] == list(range(1, len(received) + 1))
    assert text_of(received) == "".join(mock_text("resume", TOKENS))


@under_every_server
async def test_a_cut_reader_of_a_finished_stream_ends_with_204(paced_relay_url: str, client: httpx.AsyncClient) -> None:
    created = await create(client, paced_relay_url, {"prompt": "x", "max_tokens": 3})
    events, ended = await _read_until_cut(client, created["events_url"], None, None)
    assert ended and events[-1].event == "done"
    again, ended = await _read_until_cut(client, created["events_url"], events[-1].id, None)
    assert ended and again == []

