"""A Responses reader slower than the model gets coalesced events with every item and part where it belongs;
one that stops reading is ended with one ``response.failed`` (``slow_consumer``), and its upstream is closed."""

from __future__ import annotations

from typing import Any

import anyio
import httpx

from tests.rawhttp import Response, open_post, read_until
from tests.responses_sdk import checked, checked_bytes, final, view
from tests.servers import mock_server, relay_server
from tests.sse import post_stream

TOKENS = 20_000
ENDLESS = 10_000_000
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
# Reasoning, then text, then a call: each kind an item, so that coalescing has boundaries to keep.
BODY: dict[str, Any] = {"model": "mock-reasoning", "input": "lag", "stream": True, "max_output_tokens": 3 * TOKENS, "tools": [WEATHER]}


def without_call_ids(response: dict[str, Any]) -> list[Any]:
    return [(kind, content[1:] if kind == "function_call" else content) for kind, content in view(response)]


async def test_a_lagging_reader_gets_fewer_larger_events_with_every_item_whole() -> None:
    with mock_server(ttft=0.0, interval=0.0, tokens=TOKENS) as (_, upstream), \
            relay_server(upstream + "/mock-tools-text-then-call", slow_consumer_lag_bytes=50_000_000, max_tokens_limit=ENDLESS) as url:
        with anyio.fail_after(60):
            async with httpx.AsyncClient(timeout=30) as client:
                _, events = await post_stream(client, url + "/v1/responses", BODY, seconds=30)
            stream = await open_post(url, "/v1/responses", BODY, receive_buffer=262_144)
            response = Response()
            await read_until(stream, response, body_contains=b"response.reasoning_summary_text.delta")
            await anyio.sleep(1.0)  # the reader falls behind while the model keeps writing
            await read_until(stream, response)
            await stream.aclose()
    lagging = checked_bytes(bytes(response.body))
    deltas = [body for body in lagging if body["type"].endswith(".delta")]
    assert len(deltas) < TOKENS / 2, "deltas were not coalesced"
    assert [kind for kind, _ in view(final(lagging))] == ["reasoning", "message", "function_call"]
    assert without_call_ids(final(lagging)) == without_call_ids(final(checked(events))), "the same answer as read at full speed"


async def test_a_reader_that_stops_is_ended_with_one_response_failed_and_the_upstream_closed() -> None:
    with mock_server(ttft=0.0, interval=0.0, tokens=ENDLESS) as (model, upstream), \
            relay_server(upstream, slow_consumer_lag_bytes=20_000, slow_consumer_grace=10, max_tokens_limit=ENDLESS) as url:
        with anyio.fail_after(30):
            body = {"model": "mock", "input": "stop", "stream": True, "max_output_tokens": ENDLESS}
            stream = await open_post(url, "/v1/responses", body, receive_buffer=262_144, request_id="stops-reading")
            response = Response()
            await read_until(stream, response, body_contains=b"response.output_text.delta")
            record = await anyio.to_thread.run_sync(model.wait_for_disconnect, "stops-reading", 20)
            await read_until(stream, response)
            await stream.aclose()
    assert record["tokens_sent"] < ENDLESS
    bodies = checked_bytes(bytes(response.body), sdk=False)
    assert bodies[-1]["type"] == "response.failed" and final(bodies)["error"]["code"] == "slow_consumer"


async def test_an_answer_longer_than_the_relay_keeps_ends_with_one_response_failed_and_the_upstream_closed() -> None:
    """The final events repeat the answer, so the stream keeps it, up to RELAY_MAX_COLLECTED_BYTES: past it, response_too_large."""
    with mock_server(ttft=0.0, interval=0.0005, tokens=ENDLESS) as (model, upstream), \
            relay_server(upstream, max_collected_bytes=5_000, max_tokens_limit=ENDLESS) as url:
        with anyio.fail_after(30):
            async with httpx.AsyncClient(timeout=30) as client:
                body = {"model": "mock", "input": "long", "stream": True, "max_output_tokens": ENDLESS}
                _, events = await post_stream(client, url + "/v1/responses", body, headers={"x-request-id": "too-long"}, seconds=30)
            record = await anyio.to_thread.run_sync(model.wait_for_disconnect, "too-long", 20)
    assert record["tokens_sent"] < ENDLESS
    bodies = checked(events, sdk=False)
    assert [body["type"] for body in bodies].count("response.failed") == 1
    assert bodies[-1]["type"] == "response.failed" and final(bodies)["error"]["code"] == "response_too_large"
    streamed = "".join(body["delta"] for body in bodies if body["type"] == "response.output_text.delta")
    assert 0 < len(streamed) <= 5_000
