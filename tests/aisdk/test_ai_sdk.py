"""The Vercel AI SDK's default OpenAI provider (``openai("…")``: the Responses API) against a real relay, run with node.

The SDK is this directory's ``package.json`` (``npm ci`` here, as scripts/test does); ``client.mjs`` runs one case
with ``streamText`` and prints what the SDK made of the stream.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from app.mock import mock_text
from tests.servers import mock_server, relay_server

HERE = Path(__file__).parent
MODELS = ("mock", "mock-reasoning", "mock-fault-error-midstream")


@pytest.fixture(scope="module")
def relay_url() -> Iterator[str]:
    assert (HERE / "node_modules" / "ai").is_dir(), "the AI SDK is not installed: run `npm ci` in tests/aisdk (scripts/test does)"
    with mock_server(ttft=0.0, interval=0.001, tokens=8) as (_, upstream), relay_server(upstream, models=MODELS) as url:
        yield url + "/v1"


async def ai_sdk(relay_url: str, case: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None, "node is not installed (Debian's nodejs: scripts/test installs it)"
    with anyio.fail_after(60):
        done = await anyio.run_process([node, str(HERE / "client.mjs"), relay_url, case], cwd=HERE, check=True)
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


async def test_stream_text(relay_url: str) -> None:
    seen = await ai_sdk(relay_url, "text")
    assert (seen["text"], seen["finishReason"], seen["errors"]) == ("".join(mock_text("hello there", 8)), "stop", [])
    assert (seen["usage"]["inputTokens"], seen["usage"]["outputTokens"], seen["usage"]["totalTokens"]) == (2, 8, 10)


async def test_reasoning_reaches_the_sdk_as_reasoning(relay_url: str) -> None:
    seen = await ai_sdk(relay_url, "reasoning")
    assert seen["reasoning"] and seen["text"] and seen["usage"]["outputTokenDetails"]["reasoningTokens"] == 4


async def test_tool_calls(relay_url: str) -> None:
    seen = await ai_sdk(relay_url, "tools")
    assert seen["finishReason"] == "tool-calls" and len(seen["calls"]) == 2 == len({call["id"] for call in seen["calls"]})
    assert all(call["name"] == "get_weather" and set(call["input"]) == {"city"} for call in seen["calls"])


async def test_a_tool_result_goes_back_and_is_answered(relay_url: str) -> None:
    seen = await ai_sdk(relay_url, "roundtrip")
    city = seen["calls"][0]["input"]["city"]
    assert (seen["requests"], seen["results"], seen["errors"]) == (2, [f"sunny in {city}"], [])
    assert seen["text"] == f"the tool returned: sunny in {city}" and seen["finishReason"] == "stop"


async def test_a_mid_stream_failure_is_the_sdks_error(relay_url: str) -> None:
    seen = await ai_sdk(relay_url, "failure")
    assert (seen["finishReason"], seen["errors"]) == ("error", ["mock fault: the model failed mid-stream"])
    assert seen["text"], "what came before the failure reached the client"


async def test_a_second_turn_works_with_store_false_and_is_refused_clearly_without(relay_url: str) -> None:
    sent = await ai_sdk(relay_url, "second-turn")
    assert (sent["text"], sent["errors"]) == ("".join(mock_text("and then?", 8)), [])
    stored = await ai_sdk(relay_url, "second-turn-stored")
    assert stored["requests"] == 0 and len(stored["errors"]) == 1
    assert "item_reference is not supported" in stored["errors"][0] and "store = false" in stored["errors"][0]
