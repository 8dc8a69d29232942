"""Every protocol end to end: the relay in front of the mock speaking it, with either client API.

For each protocol one relay is configured with upstreams on two mocks (a fast one and a slow
one) and one upstream per fault (the mock takes the fault from the base URL's path), each
reached through a route named after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from app.mock import FAULTS, MockModel, mock_text
from app.settings import PROTOCOLS
from tests.servers import mock_server, relay_server
from tests.sse import chat, data, post_stream
from tests.streaming.test_faults import FAULT_CODES as ALL_FAULT_CODES
from tests.usage import mock_usage

# Each protocol's own in-band error, as the relay reports it.
IN_BAND_CODE = {"openai": "mock_fault", "tgi": "generation", "ollama": "upstream_error", "anthropic": "overloaded_error"}
# The in-band error's code is each protocol's own (above); every other fault ends the same way whatever the protocol.
FAULT_CODES = {fault: expected for fault, expected in ALL_FAULT_CODES.items() if fault != "error-midstream"}


class Relay:
    def __init__(self, protocol: str, url: str, slow: MockModel) -> None:
        self.protocol = protocol
        self.url = url
        self.slow = slow


@pytest.fixture(scope="module")
def mocks() -> Iterator[tuple[str, str, MockModel]]:
    with mock_server(ttft=0.0, interval=0.001, tokens=16) as (_, fast), mock_server(ttft=0.0, interval=0.02, tokens=1000) as (slow, slow_url):
        yield fast.removesuffix("/v1"), slow_url.removesuffix("/v1"), slow


@pytest.fixture(scope="module", params=PROTOCOLS)
def relay(request: pytest.FixtureRequest, mocks: tuple[str, str, MockModel], transport: str) -> Iterator[Relay]:
    """Each protocol, over each transport."""
    protocol: str = request.param
    fast, slow_url, slow = mocks
    suffix = "/v1" if protocol == "openai" else ""
    upstreams: list[dict[str, Any]] = [
        {"name": "fast", "protocol": protocol, "base_url": fast + suffix},
        {"name": "slow", "protocol": protocol, "base_url": slow_url + suffix},
        *({"name": fault, "protocol": protocol, "base_url": f"{fast}/mock-fault-{fault}{suffix}", "first_token_timeout": 0.3, "idle_timeout": 0.3}
          for fault in FAULTS),
    ]
    routes = {"mock": ["fast"], "slow": ["slow"], **{f"mock-fault-{fault}": [fault] for fault in FAULTS}}
    with relay_server(None, upstreams=upstreams, routes=routes, circuit_failures=1000, max_tokens_limit=1000, transport=transport) as url:
        yield Relay(protocol, url, slow)


def _usage(relay: Relay, prompt: int, completion: int) -> dict[str, object]:
    """Anthropic's details are its cache counts (read and written); the other protocols' adapters carry their counts alone."""
    usage = mock_usage(prompt, completion, details=relay.protocol in ("openai", "anthropic"))
    if relay.protocol == "anthropic":
        usage["prompt_tokens_details"]["cache_write_tokens"] = 0
        usage["completion_tokens_details"] = None
    return usage


async def test_native_stream_with_usage_and_finish_reason(relay: Relay, client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, relay.url + "/v1/generate", {"prompt": "tell me", "max_tokens": 5, "stream": True})
    assert [e.event for e in events] == ["token"] * (len(events) - 1) + ["done"]
    assert "".join(data(e)["text"] for e in events[:-1]) == "".join(mock_text("tell me", 5))
    assert data(events[-1]) == {"finish_reason": "length", "usage": _usage(relay, 2, 5)}


async def test_natural_end_is_stop(relay: Relay, client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, relay.url + "/v1/generate", {"prompt": "short", "stream": True})
    assert "".join(data(e)["text"] for e in events[:-1]) == "".join(mock_text("short", 16))
    assert data(events[-1])["finish_reason"] == "stop"
    assert data(events[-1])["usage"]["completion_tokens"] == 16


async def test_chat_stream_with_and_without_usage(relay: Relay, client: httpx.AsyncClient) -> None:
    url = relay.url + "/v1/chat/completions"
    _, asked = await post_stream(client, url, chat(content="hi there", max_tokens=4, stream=True, stream_options={"include_usage": True}))
    _, plain = await post_stream(client, url, chat(content="hi there", max_tokens=4, stream=True))
    assert asked[-1].data == plain[-1].data == "[DONE]"
    assert data(asked[-2]) | {"created": 0, "id": ""} == {
        "id": "", "object": "chat.completion.chunk", "created": 0, "model": "mock", "choices": [],
        "usage": _usage(relay, 2, 4),
    }
    chunks = [data(e) for e in plain[:-1]]
    assert not any("usage" in chunk for chunk in chunks), "the usage the relay asked for is not the client's unless it asked"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "".join(mock_text("hi there", 4))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_non_streaming_answers(relay: Relay, client: httpx.AsyncClient) -> None:
    native = await client.post(relay.url + "/v1/generate", json={"prompt": "tell me", "max_tokens": 3})
    completion = await client.post(relay.url + "/v1/chat/completions", json=chat(content="tell me"))
    assert native.json() == {
        "output": "".join(mock_text("tell me", 3)), "tokens_used": 5, "finish_reason": "length",
        "usage": _usage(relay, 2, 3),
        "reasoning": None, "refusal": None, "tool_calls": [], "logprobs": None,
    }
    body = completion.json()
    assert body["choices"][0]["message"]["content"] == "".join(mock_text("tell me", 16))
    assert (body["choices"][0]["finish_reason"], body["usage"]["completion_tokens"]) == ("stop", 16)


async def test_in_band_error_is_the_one_terminal_event(relay: Relay, client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, relay.url + "/v1/generate", {"prompt": "x", "stream": True, "model": "mock-fault-error-midstream"})
    kinds = [e.event for e in events]
    assert kinds == ["token"] * (len(kinds) - 1) + ["error"] and len(kinds) > 1
    error = data(events[-1])
    assert (error["type"], error["code"], error["phase"]) == ("upstream_error", IN_BAND_CODE[relay.protocol], "stream")
    assert error["message"] == "mock fault: the model failed mid-stream"


@pytest.mark.parametrize("fault", sorted(FAULT_CODES))
async def test_every_fault_ends_with_exactly_one_error(fault: str, relay: Relay, client: httpx.AsyncClient) -> None:
    _, native = await post_stream(client, relay.url + "/v1/generate", {"prompt": "x", "stream": True, "model": f"mock-fault-{fault}"})
    _, chunks = await post_stream(client, relay.url + "/v1/chat/completions", chat(f"mock-fault-{fault}", stream=True))
    kinds = [e.event for e in native]
    assert kinds.count("error") == 1 and kinds[-1] == "error" and "done" not in kinds
    error = data(native[-1])
    assert (error["code"], error["phase"]) == FAULT_CODES[fault]
    assert chunks[-1].data == "[DONE]" and [("error" in data(e)) for e in chunks[:-1]].count(True) == 1
    assert data(chunks[-2])["error"]["code"] == FAULT_CODES[fault][0]


@pytest.mark.parametrize("status", [500, 429])
async def test_an_error_status_quotes_the_model_server(status: int, relay: Relay, client: httpx.AsyncClient) -> None:
    response = await client.post(relay.url + "/v1/generate", json={"prompt": "x", "model": f"mock-fault-http-{status}"})
    assert response.status_code == (429 if status == 429 else 502)
    message = response.json()["error"]["message"]
    assert message == f"the model server answered {status}: mock fault: " + ("rate limited" if status == 429 else "internal error")


async def test_leaving_mid_stream_closes_the_upstream(relay: Relay, client: httpx.AsyncClient) -> None:
    request_id = f"leave-{relay.protocol}"
    with anyio.fail_after(5):
        async with client.stream("POST", relay.url + "/v1/generate", json={"prompt": "x", "stream": True, "max_tokens": 1000, "model": "slow"},
                                 headers={"x-request-id": request_id}) as response:
            seen = 0
            async for chunk in response.aiter_raw():
                seen += chunk.count(b"event: token")
                if seen >= 3:
                    break
    with anyio.fail_after(5):
        record = await anyio.to_thread.run_sync(relay.slow.wait_for_disconnect, request_id, 5)
    assert 3 <= record["tokens_sent"] < 1000


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_api_key_comes_from_the_named_environment_variable(
    protocol: str, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKEN_RELAY_TEST_KEY", "sk-test")
    """And never from the client: the client's own Authorization header does not reach the model server."""
    with mock_server(ttft=0.0, interval=0.0, tokens=2, api_key="sk-test") as (_, base):
        base = base if protocol == "openai" else base.removesuffix("/v1")
        upstreams = [
            {"name": "keyed", "protocol": protocol, "base_url": base, "api_key_env": "TOKEN_RELAY_TEST_KEY"},
            {"name": "keyless", "protocol": protocol, "base_url": base},
        ]
        routes = {"keyed": ["keyed"], "keyless": ["keyless"]}
        with relay_server(None, upstreams=upstreams, routes=routes, environ={"TOKEN_RELAY_TEST_KEY": "set"}) as url:
            keyed = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "keyed"})
            keyless = await client.post(url + "/v1/generate", json={"prompt": "x", "model": "keyless", "stream": True},
                                        headers={"authorization": "Bearer sk-test"})
    assert keyed.status_code == 200, keyed.text
    assert keyless.text.endswith('"code":"upstream_status_401","phase":"first_token","message":"the model server answered 401: mock: invalid API key"}\n\n')


@pytest.mark.parametrize("protocol", ["tgi", "ollama", "anthropic"])
async def test_the_single_upstream_shorthand_takes_a_protocol(protocol: str, mocks: tuple[str, str, MockModel], client: httpx.AsyncClient) -> None:
    fast, _, _ = mocks
    with relay_server(fast, protocol=protocol, default_model="mock") as url:
        _, events = await post_stream(client, url + "/v1/generate", {"prompt": "tell me", "max_tokens": 2, "stream": True})
        ready = (await client.get(url + "/readyz")).json()
    assert "".join(data(e)["text"] for e in events[:-1]) == "".join(mock_text("tell me", 2))
    assert ready["upstreams"]["default"]["protocol"] == protocol
