"""How a request chooses what the mock answers: model names, path segments and x-mock-* headers."""

from __future__ import annotations

import httpx
import pytest

from app.mock import MODELS
from tests.mock.chats import TOOLS, chat, chunks, deltas
from tests.sse import data, post_stream


def test_every_option_has_a_model_name() -> None:
    for name in ("mock", "mock-reasoning", "mock-reasoning-vllm", "mock-reasoning-redacted", "mock-refusal", "mock-server-tgi",
                 "mock-tools-parallel", "mock-tools-sequential", "mock-tools-one", "mock-tools-no-args", "mock-tools-text-then-call", "mock-tools-length",
                 "mock-fault-reset"):
        assert name in MODELS


async def test_a_path_segment_chooses_as_a_model_name_does(base: str, client: httpx.AsyncClient) -> None:
    received = await chunks(client, base + "/mock-reasoning/mock-tools-one/v1/chat/completions", chat(tools=TOOLS))
    assert deltas(received, "reasoning_content") and len([c for batch in deltas(received, "tool_calls") for c in batch if "id" in c]) == 1


async def test_a_tools_option_without_tools_answers_text(base: str, client: httpx.AsyncClient) -> None:
    received = await chunks(client, base + "/v1/chat/completions", chat("mock-tools-one"))
    assert deltas(received, "content") and not deltas(received, "tool_calls")


@pytest.mark.parametrize(("model", "headers"), [("mock-tools-many", None), ("mock-reasoning-deep", None), ("mock", {"x-mock-tools": "many"}),
                                                ("mock", {"x-mock-reasoning": "deep"}), ("mock", {"x-mock-server": "vllm2"})])
async def test_an_unknown_option_is_refused(base: str, client: httpx.AsyncClient, model: str, headers: dict[str, str] | None) -> None:
    response = await client.post(base + "/v1/chat/completions", json=chat(model), headers=headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_faults_apply_to_every_kind_of_answer(base: str, client: httpx.AsyncClient) -> None:
    response, events = await post_stream(client, base + "/v1/chat/completions", chat("mock-reasoning", tools=TOOLS, stream=True),
                                         headers={"x-mock-fault": "error-midstream"})
    assert response.status_code == 200 and events[-1].data == "[DONE]"
    assert data(events[-2])["error"]["code"] == "mock_fault"
    received = [data(event) for event in events[1:-2]]
    assert deltas(received, "reasoning_content") and not any(c.get("finish_reason") for chunk in received for c in chunk["choices"])
