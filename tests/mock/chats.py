"""Requests the mock's tests send, in each protocol, and reading its answers back."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.sse import data, post_stream

PROMPT = "what is the weather in paris"  # six words: two of them count as cached
RESULT = "sunny and 22 degrees"

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]},
    }},
    {"type": "function", "function": {
        "name": "search", "description": "Search the web",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "exact": {"type": "boolean"}}},
    }},
]
ANTHROPIC_TOOLS = [{"name": t["function"]["name"], "description": t["function"]["description"], "input_schema": t["function"]["parameters"]}
                   for t in TOOLS]
# The types the mock fills each tool's arguments with, from its schema.
ARGUMENT_TYPES = {"get_weather": {"city": str, "days": int}, "search": {"query": str, "exact": bool}}


def typed(name: str, arguments: dict[str, Any]) -> bool:
    """Whether ``arguments`` has exactly the properties of tool ``name``'s schema, each of its type."""
    types = ARGUMENT_TYPES[name]
    return arguments.keys() == types.keys() and all(type(arguments[key]) is kind for key, kind in types.items())


def chat(model: str = "mock", content: str = PROMPT, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def chunks(client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """An OpenAI-style stream's chunks, ``[DONE]`` checked and left out."""
    response, events = await post_stream(client, url, body | {"stream": True}, headers=headers)
    assert response.status_code == 200, response.text
    assert events[-1].data == "[DONE]"
    return [data(event) for event in events[:-1]]


async def lines(client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """An NDJSON stream's objects."""
    response = await client.post(url, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def deltas(chunks: list[dict[str, Any]], field: str, choice: int = 0) -> list[Any]:
    """Every value of ``delta[field]`` in choice ``choice``'s chunks, in order."""
    return [c["delta"][field] for chunk in chunks for c in chunk["choices"] if c["index"] == choice and field in c["delta"]]
