"""The native API and resumable streams carry every kind of part as an event of its own, with an id, replayed like tokens;
``n > 1`` is refused where a stream carries one choice; usage nobody reported is ``null``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.hostile import HostileUpstream
from tests.sdk import replaying_fixtures
from tests.servers import relay_server
from tests.sse import data, post_stream
from tests.streams import create, read

REASONED_CALL = [
    ("reasoning", {"text": "Okay"}), ("reasoning", {"text": ", the user"}), ("reasoning", {"text": " asks for"}),
    ("reasoning", {"text": " the weather."}), ("token", {"text": "\n\n"}), ("token", {"text": "I'll look it up."}),
    ("tool_call", {"index": 0, "id": "chatcmpl-tool-5d2f1c8e", "name": "get_weather", "arguments": ""}),
    ("tool_call", {"index": 0, "id": None, "name": None, "arguments": '{"city": "'}),
    ("tool_call", {"index": 0, "id": None, "name": None, "arguments": 'Dallas", "state": "TX"}'}),
]


@pytest.fixture(scope="module")
def relay_url() -> Iterator[str]:
    with HostileUpstream(replaying_fixtures).serving() as base, relay_server(base, first_token_timeout=5, idle_timeout=5) as url:
        yield url


def pairs(events: list[Any]) -> list[tuple[str, Any]]:
    return [(event.event, data(event)) for event in events]


def message(events: list[tuple[str, Any]]) -> dict[str, Any]:
    """What a reader makes of the events: the parts that came in one read may have been merged, one event per field."""
    texts: dict[str, Any] = {"reasoning": "", "token": "", "calls": {}}
    for name, body in events:
        if name == "tool_call":
            call = texts["calls"].setdefault(body["index"], {"id": None, "name": None, "arguments": ""})
            call["id"] = call["id"] or body["id"]
            call["name"] = call["name"] or body["name"]
            call["arguments"] += body["arguments"]
        else:
            texts[name] += body["text"]
    return texts


async def test_the_native_stream_carries_reasoning_and_calls_with_ids(relay_url: str, client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, relay_url + "/v1/generate", {"prompt": "x", "stream": True, "model": "vllm-reasoning-call"})
    assert message(pairs(events[:-1])) == message(REASONED_CALL)
    assert events[-1].event == "done" and data(events[-1])["finish_reason"] == "tool_calls"
    assert [event.id for event in events] == [str(n) for n in range(1, len(events) + 1)]


async def test_a_resumable_stream_logs_every_kind_and_replays_it_after_any_id(relay_url: str, client: httpx.AsyncClient) -> None:
    created = await create(client, relay_url, {"model": "vllm-reasoning-content-call", "messages": [{"role": "user", "content": "x"}],
                                               "tools": [{"type": "function", "function": {"name": "get_weather"}}]})
    _, events = await read(client, created["events_url"])
    assert message(pairs(events[:-1])) == message(REASONED_CALL)
    assert {event.event for event in events[:-1]} == {"reasoning", "token", "tool_call"}
    assert events[-1].event == "done" and data(events[-1])["usage"]["total_tokens"] == 268
    for index, event in enumerate(events[:-1]):
        _, after = await read(client, created["events_url"], last_event_id=event.id)
        assert [(e.id, e.event, e.data) for e in after] == [(e.id, e.event, e.data) for e in events[index + 1:]]


async def test_logprobs_and_refusals_are_events_of_their_own(relay_url: str, client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, relay_url + "/v1/generate", {"prompt": "x", "stream": True, "model": "openai-refusal"})
    assert {event.event for event in events} == {"logprobs", "refusal", "done"}
    assert "".join(data(e)["text"] for e in events if e.event == "refusal") == "I'm sorry, I can't help with that."
    assert [token["token"] for e in events if e.event == "logprobs" for token in data(e)["refusal"]] == ["I'm", " sorry,", " I can't help with that."]


async def test_a_whole_native_answer_has_its_calls(relay_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(relay_url + "/v1/generate", json={"prompt": "x", "model": "openai-parallel-tools"})
    body = response.json()
    assert (body["output"], body["finish_reason"], body["tokens_used"]) == ("", "tool_calls", 119)
    assert [(call["index"], call["name"], json.loads(call["arguments"])) for call in body["tool_calls"]] == [
        (0, "get_weather", {"location": "Paris, France"}), (1, "get_weather", {"location": "Bogotá, Colombia"}),
    ]
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0, "cache_write_tokens": None, "image_tokens": None,
                                                      "text_tokens": None}


async def test_usage_nobody_reported_is_null_not_zero(relay_url: str, client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, relay_url + "/v1/generate", {"prompt": "x", "stream": True, "model": "openai-interleaved-tools"})
    assert data(events[-1]) == {"finish_reason": "tool_calls", "usage": None}
    whole = (await client.post(relay_url + "/v1/generate", json={"prompt": "x", "model": "openai-interleaved-tools"})).json()
    assert (whole["usage"], whole["tokens_used"]) == (None, None)
    chat = {"model": "openai-interleaved-tools", "messages": [{"role": "user", "content": "x"}]}
    _, chunks = await post_stream(client, relay_url + "/v1/chat/completions", chat | {"stream": True, "stream_options": {"include_usage": True}})
    assert data(chunks[-2]) | {"created": 0, "id": ""} == {
        "id": "", "object": "chat.completion.chunk", "created": 0, "model": "openai-interleaved-tools", "choices": [], "usage": None,
    }
    assert (await client.post(relay_url + "/v1/chat/completions", json=chat)).json()["usage"] is None


async def test_several_choices_are_refused_for_a_resumable_stream(relay_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(relay_url + "/v1/streams", json={"model": "openai-n2", "messages": [{"role": "user", "content": "x"}], "n": 2})
    assert response.status_code == 422 and response.json()["error"]["param"] == "$.n"
    native = await client.post(relay_url + "/v1/generate", json={"prompt": "x", "n": 2})
    assert native.status_code == 422 and native.json()["error"]["param"] == "$.n"


async def test_several_choices_are_refused_for_a_protocol_that_answers_one(client: httpx.AsyncClient) -> None:
    async def never(conn: object) -> None:
        raise AssertionError("nothing may reach the model server")

    upstream = HostileUpstream(never)
    with upstream.serving() as base, relay_server(base.removesuffix("/v1"), protocol="ollama") as url:
        response = await client.post(url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2})
    assert response.status_code == 422 and response.json()["error"]["param"] == "$.n"
    assert "one choice" in response.json()["error"]["message"] and upstream.conns == []


async def test_several_choices_are_relayed_each_with_its_finish(relay_url: str, client: httpx.AsyncClient) -> None:
    body = {"model": "openai-n2", "messages": [{"role": "user", "content": "x"}], "n": 2}
    whole = (await client.post(relay_url + "/v1/chat/completions", json=body)).json()
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in whole["choices"]] == [(0, "Blue.", "stop"), (1, "The sky is blue", "length")]

