"""``/v1/responses`` over every upstream protocol, against the mock speaking it: text, tools, reasoning, and every fault,
each stream held to the API (tests/responses_sdk.py) and ending with exactly one terminal event of this dialect.

Anthropic's thinking blocks (their signatures, a redacted block) come from recorded streams replayed as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.mock import FAULTS, mock_text
from app.settings import PROTOCOLS
from tests.hostile import HostileUpstream
from tests.responses_sdk import checked, final, output_text, view
from tests.sdk import replaying_fixtures
from tests.servers import mock_server, relay_server
from tests.sse import post_stream
from tests.streaming.test_faults import FAULT_CODES
from tests.streaming.upstreams.test_protocols import IN_BAND_CODE

WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
# TGI's native API has text only: no tools, no reasoning.
TOOLS = {"openai", "anthropic", "ollama"}


class Relay:
    def __init__(self, protocol: str, url: str) -> None:
        self.protocol = protocol
        self.url = url


@pytest.fixture(scope="module")
def mock_base() -> Iterator[str]:
    with mock_server(ttft=0.0, interval=0.001, tokens=16) as (_, base):
        yield base.removesuffix("/v1")


@pytest.fixture(scope="module", params=PROTOCOLS)
def relay(request: pytest.FixtureRequest, mock_base: str) -> Iterator[Relay]:
    """One relay per protocol: the mock as ``mock``, and one upstream per fault (the mock takes it from the base URL's path)."""
    protocol: str = request.param
    suffix = "/v1" if protocol == "openai" else ""
    upstreams: list[dict[str, Any]] = [
        {"name": "mock", "protocol": protocol, "base_url": mock_base + suffix},
        *({"name": fault, "protocol": protocol, "base_url": f"{mock_base}/mock-fault-{fault}{suffix}", "first_token_timeout": 0.3,
           "idle_timeout": 0.3} for fault in FAULTS),
    ]
    routes = {"mock": ["mock"], **{f"mock-fault-{fault}": [fault] for fault in FAULTS}}
    with relay_server(None, upstreams=upstreams, routes=routes, circuit_failures=1000) as url:
        yield Relay(protocol, url)


async def stream(client: httpx.AsyncClient, relay: Relay, **body: Any) -> list[dict[str, Any]]:
    response, events = await post_stream(client, relay.url + "/v1/responses", {"model": "mock", "input": "tell me", "stream": True, **body})
    assert response.status_code == 200
    return checked(events)


async def test_text(relay: Relay, client: httpx.AsyncClient) -> None:
    bodies = await stream(client, relay, max_output_tokens=5)
    response = final(bodies)
    assert output_text(response) == "".join(mock_text("tell me", 5))
    assert bodies[-1]["type"] == "response.incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert (response["usage"]["input_tokens"], response["usage"]["output_tokens"], response["usage"]["total_tokens"]) == (2, 5, 7)
    whole = (await client.post(relay.url + "/v1/responses", json={"model": "mock", "input": "tell me"})).json()
    assert whole["status"] == "completed" and output_text(whole) == "".join(mock_text("tell me", 16))


async def test_tools(relay: Relay, client: httpx.AsyncClient) -> None:
    bodies = await stream(client, relay, input="weather in Paris", tools=[WEATHER])
    response = final(bodies)
    assert bodies[-1]["type"] == "response.completed"
    if relay.protocol not in TOOLS:
        assert [item["type"] for item in response["output"]] == ["message"]
        return
    calls = [item for item in response["output"] if item["type"] == "function_call"]
    assert len(calls) == 2 == len({call["call_id"] for call in calls})
    assert all(call["name"] == "get_weather" and set(json.loads(call["arguments"])) == {"city"} for call in calls)
    done = {body["output_index"]: body["arguments"] for body in bodies if body["type"] == "response.function_call_arguments.done"}
    assert sorted(done.values()) == sorted(call["arguments"] for call in calls)


async def test_reasoning(relay: Relay, client: httpx.AsyncClient) -> None:
    bodies = await stream(client, relay, reasoning={"effort": "low"})
    kinds = [item["type"] for item in final(bodies)["output"]]
    assert kinds == (["reasoning", "message"] if relay.protocol in TOOLS else ["message"])
    if relay.protocol in TOOLS:
        assert final(bodies)["output"][0]["summary"][0]["text"]


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_every_fault_ends_with_exactly_one_response_failed(fault: str, relay: Relay, client: httpx.AsyncClient) -> None:
    bodies = await stream(client, relay, model=f"mock-fault-{fault}")
    assert bodies[-1]["type"] == "response.failed"
    error = final(bodies)["error"]
    code, phase = (IN_BAND_CODE[relay.protocol], "stream") if fault == "error-midstream" else FAULT_CODES[fault]
    assert (error["code"], error["phase"]) == (code, phase) and set(error) == {"type", "code", "phase", "message"}


@pytest.fixture(scope="module")
def anthropic_replay() -> Iterator[str]:
    with HostileUpstream(replaying_fixtures).serving() as base, relay_server(base.removesuffix("/v1"), protocol="anthropic") as url:
        yield url


@pytest.mark.parametrize(("fixture", "expected"), [
    ("anthropic-thinking", ["reasoning", "message"]),
    ("anthropic-redacted-thinking", ["reasoning", "reasoning", "message"]),
])
async def test_thinking_blocks_keep_their_signatures(fixture: str, expected: list[str], anthropic_replay: str, client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, anthropic_replay + "/v1/responses", {"model": fixture, "input": "x", "stream": True})
    streamed = final(checked(events))
    whole = (await client.post(anthropic_replay + "/v1/responses", json={"model": fixture, "input": "x"})).json()
    assert [item["type"] for item in streamed["output"]] == expected
    assert all(item["encrypted_content"] for item in streamed["output"] if item["type"] == "reasoning"), "signature or redacted data"
    assert view(whole) == view(streamed)
