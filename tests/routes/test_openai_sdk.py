"""The official OpenAI SDK sees through the relay exactly what it sees direct against the same model server.

Each fixture (tests/streaming/upstreams/fixtures/) is replayed by a ``HostileUpstream``
(tests/sdk.py ``replaying_fixtures``). The SDK then asks it directly, and through a real relay, three ways:
streamed (its chunks accumulated), with the ``.stream()`` helper (``get_final_completion``), and
not streamed. What it reassembles (tests/sdk.py ``view``: content, reasoning, refusal, tool calls
with ids, names and arguments, logprobs, finish reasons, usage) must be the same both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from tests.hostile import HostileUpstream
from tests.sdk import FIXTURES, SDK_FIXTURES, completion_asked, replaying_fixtures, view
from tests.servers import relay_server

TOOLS: Any = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
    for name in ("get_weather", "get_time", "roll_dice", "write_file", "get_current_weather", "get_current_time")
]
MODES = ("stream", "helper", "whole")


@pytest.fixture(scope="module")
def upstream_and_relay() -> Iterator[tuple[str, str]]:
    with HostileUpstream(replaying_fixtures).serving() as base, relay_server(base, first_token_timeout=5, idle_timeout=5) as url:
        yield base, url + "/v1"


def ask(base_url: str, model: str, mode: str) -> dict[str, Any]:
    """What the SDK makes of ``model``'s answer, asked ``mode``; ``raised`` names what the helper raised, if anything."""
    kwargs: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "What is the weather?"}], "tools": TOOLS}
    if model == "openai-n2":
        kwargs["n"] = 2
    completion, raised = completion_asked(base_url, mode, **kwargs)
    return view(completion) | {"raised": raised}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SDK_FIXTURES)
async def test_the_sdk_sees_through_the_relay_what_it_sees_direct(upstream_and_relay: tuple[str, str], name: str, mode: str) -> None:
    direct_url, relay_url = upstream_and_relay
    model = name.removesuffix(".sse")
    with anyio.fail_after(20):
        direct = await anyio.to_thread.run_sync(ask, direct_url, model, mode)
        relayed = await anyio.to_thread.run_sync(ask, relay_url, model, mode)
    assert relayed == direct
    if b"tool_calls" in (FIXTURES / name).read_bytes():
        assert relayed["choices"][0]["tool_calls"], "the calls reached the client"


@pytest.mark.parametrize("mode", MODES)
async def test_calls_without_index_and_with_object_arguments_reach_the_sdk_as_openai_sends_them(
    upstream_and_relay: tuple[str, str], mode: str,
) -> None:
    """Ollama's ``/v1`` way: the SDK cannot read it direct (it needs an ``index``); through the relay it can."""
    with anyio.fail_after(20):
        relayed = await anyio.to_thread.run_sync(ask, upstream_and_relay[1], "ollama-v1-tools", mode)
    assert relayed["choices"][0]["tool_calls"] == [
        {"id": "call_ltz1ub3d", "type": "function", "name": "get_current_weather", "arguments": '{"location":"Paris","unit":"celsius"}'},
        {"id": "call_x9ka2m0q", "type": "function", "name": "get_current_time", "arguments": "{}"},
    ]
    assert (relayed["choices"][0]["content"], relayed["choices"][0]["finish_reason"]) == (None, "tool_calls")
    assert relayed["usage"]["total_tokens"] == 221
