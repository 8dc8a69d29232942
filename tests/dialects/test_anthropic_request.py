"""A Messages API request: validated with the path of a bad field, translated to OpenAI's terms, and sent as it was to an Anthropic upstream."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from app.dialects.anthropic import decode_request, generation_request
from app.errors import RequestError
from app.streaming.upstreams import anthropic, openai

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
CONVERSATION: Any = {
    "model": "m", "max_tokens": 300, "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is this? "}, IMAGE,
                                     {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "A cat?", "signature": "sig=="}, {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "toolu_1", "name": "zoom", "input": {"factor": 2}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "blurry"}], "is_error": True},
            {"type": "text", "text": "And now?", "cache_control": {"type": "ephemeral"}},
        ]},
    ],
    "tools": [{"name": "zoom", "description": "Zoom in", "input_schema": {"type": "object", "properties": {"factor": {"type": "number"}}}}],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True}, "stop_sequences": ["END"], "temperature": 0.2, "top_p": 0.9,
    "top_k": 40, "thinking": {"type": "enabled", "budget_tokens": 5000}, "metadata": {"user_id": "u-1"}, "stream": True,
}


def translated(body: dict[str, Any]) -> Any:
    request, raw = decode_request(json.dumps(body).encode())
    return generation_request("rid", request, raw, 1000)


def test_the_conversation_in_openai_terms() -> None:
    request = translated(CONVERSATION)
    assert request.messages == [
        {"role": "system", "content": "Be brief.\n\nBe kind."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this? "}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "zoom", "arguments": '{"factor":2}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "blurry"},
        {"role": "user", "content": "And now?"},
    ]
    assert request.max_tokens == 300
    assert request.extra == {
        "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop": ["END"], "user": "u-1", "reasoning_effort": "medium",
        "tools": [{"type": "function", "function": {"name": "zoom", "parameters": CONVERSATION["tools"][0]["input_schema"], "description": "Zoom in"}}],
        "tool_choice": "required", "parallel_tool_calls": False,
    }


def test_an_anthropic_upstream_gets_the_request_as_the_client_wrote_it() -> None:
    request = translated(CONVERSATION)
    path, headers, body = anthropic.MessageStream.build_request(request, "sk-up")
    sent = msgspec.json.decode(body)
    assert path == "/v1/messages" and ("x-api-key", "sk-up") in headers
    assert sent == {key: value for key, value in CONVERSATION.items()} | {"stream": True}
    assert sent["messages"][1]["content"][0] == {"type": "thinking", "thinking": "A cat?", "signature": "sig=="}


def test_an_openai_upstream_gets_the_translation() -> None:
    sent = msgspec.json.decode(openai.ChatStream.build_request(translated(CONVERSATION), None)[2])
    assert sent["messages"][1]["content"][1]["type"] == "image_url" and "thinking" not in sent and sent["max_tokens"] == 300


def test_a_tool_results_images_join_the_user_content_after_it() -> None:
    result = {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "a chart"}, IMAGE]}
    request = translated(CONVERSATION | {"messages": [{"role": "user", "content": [result, {"type": "text", "text": "explain"}]}]})
    assert request.messages[1:] == [
        {"role": "tool", "tool_call_id": "t", "content": "a chart"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}, {"type": "text", "text": "explain"}]},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}), ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "zoom"}, {"tool_choice": {"type": "function", "function": {"name": "zoom"}}}),
])
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    extra = translated(CONVERSATION | {"tool_choice": choice}).extra
    assert {key: extra[key] for key in ("tool_choice", "parallel_tool_calls") if key in extra} == expected


@pytest.mark.parametrize(("thinking", "effort"), [
    ({"type": "enabled", "budget_tokens": 1024}, "low"), ({"type": "enabled", "budget_tokens": 20000}, "high"),
    ({"type": "adaptive"}, "medium"), ({"type": "disabled"}, None),
])
def test_thinking_is_a_reasoning_effort_for_other_upstreams(thinking: dict[str, Any], effort: str | None) -> None:
    assert translated(CONVERSATION | {"thinking": thinking}).extra.get("reasoning_effort") == effort


@pytest.mark.parametrize(("change", "param"), [
    ({"max_tokens": None}, "$.max_tokens"),
    ({"max_tokens": 0}, "$.max_tokens"),
    ({"messages": []}, "$.messages"),
    ({"temperature": 1.5}, "$.temperature"),
    ({"n": 2}, "$.n"),
    ({"messages": [{"role": "system", "content": "x"}]}, "$.messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "$.messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}, "$.messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]}, "$.messages[0].content[0].source"),
    ({"tools": [{"name": "web_search", "type": "web_search_20250305"}]}, "$.tools[0].type"),
    ({"tool_choice": {"type": "tool"}}, "$.tool_choice.name"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "url"}}]}]}]},
     "$.messages[0].content[0].content[0].source"),
])
def test_a_bad_field_is_refused_with_its_path(change: dict[str, Any], param: str) -> None:
    body = {key: value for key, value in (CONVERSATION | change).items() if value is not None}
    with pytest.raises(RequestError) as raised:
        translated(body)
    assert raised.value.param == param
