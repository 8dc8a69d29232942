"""The API contract (app/contract.py) is what the relay answers: real answers and stream events decode, strictly, into its types.

The answer types forbid unknown fields, so a field an encoder adds without the contract fails here too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from app import contract
from app.main import create_app
from app.routes.router import ASGIRoute, RelayRouter
from app.settings import load_settings
from tests.servers import relay_server
from tests.sse import chat, data, post_stream
from tests.streams import create, read

KEY = "contract-key"
AUTH = {"authorization": f"Bearer {KEY}"}
# Answers of every kind the mock gives: text, reasoning, parallel and cut-off tool calls, a refusal, logprobs.
MODELS = ["mock", "mock-reasoning", "mock-tools-parallel", "mock-tools-length", "mock-tools-no-args", "mock-refusal"]


@pytest.fixture(scope="module")
def relay_url() -> Iterator[str]:
    with relay_server(None, api_keys=[KEY], mock_ttft=0, mock_interval=0, mock_tokens=6) as url:
        yield url


@pytest.fixture
async def client(relay_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=relay_url, headers=AUTH, timeout=10) as client:
        yield client


def conforms(value: Any, kind: Any) -> Any:
    return msgspec.convert(value, kind)


@pytest.mark.parametrize("model", MODELS)
async def test_a_chat_completion_and_its_chunks_are_the_contract_s(client: httpx.AsyncClient, model: str) -> None:
    body = chat(model, tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
                logprobs=True, top_logprobs=2)
    whole = await client.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    conforms(whole.json(), contract.ChatCompletion)
    response, events = await post_stream(client, "/v1/chat/completions", body | {"stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert events[-1].data == "[DONE]"
    chunks = [conforms(data(event), contract.ChatCompletionChunk) for event in events[:-1]]
    assert chunks[-1].usage is not None


@pytest.mark.parametrize("model", MODELS)
async def test_a_native_generation_and_its_events_are_the_contract_s(client: httpx.AsyncClient, model: str) -> None:
    body = {"prompt": "hello", "model": model, "max_tokens": 8}
    whole = await client.post("/v1/generate", json=body)
    assert whole.status_code == 200, whole.text
    conforms(whole.json(), contract.GenerateAnswer)
    response, events = await post_stream(client, "/v1/generate", body | {"stream": True})
    assert response.status_code == 200
    for event in events:
        conforms(data(event), contract.NATIVE_EVENTS[event.event])
    assert events[-1].event == "done"


async def test_a_failure_after_the_head_is_the_contract_s(client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, "/v1/chat/completions", chat("mock-fault-error-midstream", stream=True))
    assert events[-1].data == "[DONE]"
    conforms(data(events[-2]), contract.ChunkError)
    _, events = await post_stream(client, "/v1/generate", {"prompt": "hello", "model": "mock-fault-error-midstream", "stream": True})
    assert events[-1].event == "error"
    conforms(data(events[-1]), contract.ErrorEvent)


async def test_a_resumable_stream_s_answers_are_the_contract_s(client: httpx.AsyncClient, relay_url: str) -> None:
    created = await create(client, relay_url, chat("mock-reasoning"))
    stream = conforms(created, contract.StreamCreated)
    response, events = await read(client, stream.events_url)
    assert response.status_code == 200
    for event in events:
        conforms(data(event), contract.NATIVE_EVENTS[event.event])
    cancelled = await client.delete(stream.cancel_url)
    assert cancelled.status_code == 200
    conforms(cancelled.json(), contract.StreamCancelled)


async def test_refusals_and_the_probes_are_the_contract_s(client: httpx.AsyncClient) -> None:
    for response in [
        await client.post("/v1/chat/completions", json={"model": "mock"}),
        await client.post("/v1/chat/completions", json=chat("mock"), headers={"authorization": "Bearer wrong"}),
        await client.post("/v1/generate", content=b"{"),
        await client.get("/v1/nowhere"),
        await client.post("/v1/chat/completions", json=chat("mock-fault-http-500")),
    ]:
        assert response.status_code >= 400
        conforms(response.json(), contract.ErrorAnswer)
    conforms((await client.get("/healthz")).json(), contract.Health)
    ready = conforms((await client.get("/readyz")).json(), contract.Readiness)
    assert ready.status == "ready"


async def test_the_served_document_lists_every_route_and_resolves(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json", headers={})).json()
    assert document["openapi"] == "3.1.0"
    operations = {(path, method) for path, methods in document["paths"].items() for method in methods}
    router = _router(create_app(load_settings({"access_log": False}, environ={})))
    assert operations == {(route.path.replace(":path}", "}"), route.method.lower()) for route in router.routes if isinstance(route, ASGIRoute)}
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def _router(app: Any) -> RelayRouter:
    while not isinstance(app, RelayRouter):
        app = app.app
    return app


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


@pytest.mark.parametrize("model", MODELS)
async def test_a_response_and_its_events_are_the_contract_s(client: httpx.AsyncClient, model: str) -> None:
    body = {"model": model, "input": "hello", "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]}
    whole = await client.post("/v1/responses", json=body)
    assert whole.status_code == 200, whole.text
    conforms(whole.json(), contract.ResponseAnswer)
    response, events = await post_stream(client, "/v1/responses", body | {"stream": True})
    assert response.status_code == 200
    numbers = []
    for event in events:
        item = conforms(data(event), contract.RESPONSES_EVENTS[event.event])
        assert item.type == event.event
        numbers.append(item.sequence_number)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert events[-1].event in ("response.completed", "response.incomplete")


@pytest.mark.parametrize("model", MODELS)
async def test_a_message_and_its_events_are_the_contract_s(client: httpx.AsyncClient, model: str) -> None:
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}
    whole = await client.post("/v1/messages", json=body)
    assert whole.status_code == 200, whole.text
    conforms(whole.json(), contract.MessageAnswer)
    response, events = await post_stream(client, "/v1/messages", body | {"stream": True})
    assert response.status_code == 200
    for event in events:
        item = conforms(data(event), contract.MESSAGES_EVENTS[event.event])
        assert item.type == event.event
    assert events[-1].event == "message_stop"
    refused = await client.post("/v1/messages", json={"model": model, "messages": []})
    assert refused.status_code == 400
    conforms(refused.json(), contract.AnthropicError)
