"""``POST /v1/responses`` through the official OpenAI SDK (``responses.stream()``, ``responses.create()``) and raw:
text, function calls and their results, reasoning, a length cut, failures before and after the head, and what
the relay refuses (state, hosted tools) with a 400 before anything reaches a model server."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai import OpenAI

from app.mock import mock_text
from tests.hostile import Conn, HostileUpstream
from tests.responses_sdk import checked, final, output_text, view
from tests.sdk import replaying_fixtures
from tests.servers import mock_server, relay_server
from tests.sse import post_stream
from tests.streaming.test_garbage import relay_objects, saved_garbage  # noqa: F401 (a fixture)

WEATHER: Any = {"type": "function", "name": "get_weather", "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
MODELS = ("mock", "mock-reasoning", "mock-tools-text-then-call", "mock-fault-error-midstream", "mock-fault-http-500", "mock-fault-nope",
          "mock-refusal")


@pytest.fixture(scope="module")
def relay_url() -> Iterator[str]:
    with mock_server(ttft=0.0, interval=0.001, tokens=12) as (_, upstream), \
            relay_server(upstream, models=MODELS, first_token_timeout=5, idle_timeout=5) as url:
        yield url


def sdk(relay_url: str) -> OpenAI:
    return OpenAI(base_url=relay_url + "/v1", api_key="sk-test", max_retries=0, timeout=10)


async def in_thread(fn: Any) -> Any:
    with anyio.fail_after(20):
        return await anyio.to_thread.run_sync(fn)


async def test_the_sdk_streams_text_and_gets_the_final_response(relay_url: str) -> None:
    def ask() -> tuple[list[str], Any]:
        with sdk(relay_url) as client, client.responses.stream(model="mock", input="hello there") as stream:
            deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
            return deltas, stream.get_final_response()

    deltas, response = await in_thread(ask)
    assert "".join(deltas) == "".join(mock_text("hello there", 12)), "a reader that lags gets them merged: all of them"
    assert response.output_text == "".join(deltas) and response.status == "completed"
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens) == (2, 12)
    assert response.usage.input_tokens_details.cached_tokens == 0 and response.usage.output_tokens_details.reasoning_tokens == 0


async def test_the_sdk_creates_a_whole_response(relay_url: str) -> None:
    def ask() -> Any:
        with sdk(relay_url) as client:
            return client.responses.create(model="mock", input="hello there", instructions="Be brief.", max_output_tokens=50)

    response = await in_thread(ask)
    assert response.output_text == "".join(mock_text("hello there", 12))
    assert (response.status, response.store, response.instructions, response.max_output_tokens) == ("completed", False, "Be brief.", 50)
    assert [item.type for item in response.output] == ["message"]


@pytest.mark.parametrize("streamed", [True, False])
async def test_function_calls_reach_the_sdk_with_call_ids_names_and_arguments(relay_url: str, streamed: bool) -> None:
    def ask() -> Any:
        with sdk(relay_url) as client:
            if not streamed:
                return client.responses.create(model="mock", input="weather in Paris and Rome", tools=[WEATHER])
            with client.responses.stream(model="mock", input="weather in Paris and Rome", tools=[WEATHER]) as stream:
                done = [event.arguments for event in stream if event.type == "response.function_call_arguments.done"]
                response = stream.get_final_response()
                assert done == [item.arguments for item in response.output]
                return response

    response = await in_thread(ask)
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 2 == len({call.call_id for call in calls}) and response.output_text == ""
    assert all(call.name == "get_weather" and set(json.loads(call.arguments)) == {"city"} for call in calls)


async def test_text_then_a_call_are_two_items_in_order(relay_url: str) -> None:
    def ask() -> Any:
        with sdk(relay_url) as client, client.responses.stream(model="mock-tools-text-then-call", input="x", tools=[WEATHER]) as stream:
            return stream.get_final_response()

    response = await in_thread(ask)
    assert [item.type for item in response.output] == ["message", "function_call"]
    assert response.output_text and json.loads(response.output[1].arguments)


async def test_a_function_call_output_goes_back_to_the_model_as_a_tool_result(relay_url: str) -> None:
    def ask() -> Any:
        with sdk(relay_url) as client:
            first = client.responses.create(model="mock", input="weather in Paris", tools=[WEATHER], parallel_tool_calls=False)
            call = first.output[0]
            history: Any = [{"role": "user", "content": "weather in Paris"}, *first.output,
                            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}]
            return client.responses.create(model="mock", input=history, tools=[WEATHER])

    response = await in_thread(ask)
    assert response.output_text == "the tool returned: sunny, 21 C"


async def test_reasoning_is_a_reasoning_item_before_the_answer(relay_url: str) -> None:
    def ask(model: str, **extra: Any) -> Any:
        with sdk(relay_url) as client, client.responses.stream(model=model, input="think about it", **extra) as stream:
            kinds = [event.type for event in stream]
            return kinds, stream.get_final_response()

    kinds, response = await in_thread(lambda: ask("mock-reasoning"))
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].summary[0].text and "response.reasoning_summary_text.delta" in kinds
    _, asked = await in_thread(lambda: ask("mock", reasoning={"effort": "low"}))
    assert [item.type for item in asked.output] == ["reasoning", "message"], "reasoning.effort reaches the model server"


async def test_a_refusal_is_a_refusal_part_of_the_message(relay_url: str) -> None:
    def ask() -> Any:
        with sdk(relay_url) as client:
            return client.responses.create(model="mock-refusal", input="x")

    response = await in_thread(ask)
    assert response.output[0].content[0].type == "refusal" and response.output[0].content[0].refusal.startswith("I'm sorry")


async def test_a_length_cut_is_response_incomplete(relay_url: str, client: httpx.AsyncClient) -> None:
    _, events = await post_stream(client, relay_url + "/v1/responses", {"model": "mock", "input": "x", "max_output_tokens": 3, "stream": True})
    bodies = checked(events)
    assert bodies[-1]["type"] == "response.incomplete"
    assert final(bodies)["incomplete_details"] == {"reason": "max_output_tokens"}
    assert output_text(final(bodies)) == "".join(mock_text("x", 3))
    whole = (await client.post(relay_url + "/v1/responses", json={"model": "mock", "input": "x", "max_output_tokens": 3})).json()
    assert (whole["status"], whole["incomplete_details"], view(whole)) == ("incomplete", {"reason": "max_output_tokens"}, view(final(bodies)))


async def test_a_mid_stream_failure_is_one_response_failed_with_the_relays_code(relay_url: str) -> None:
    def ask() -> tuple[list[Any], list[Any], str]:
        with sdk(relay_url) as client:
            events = list(client.responses.create(model="mock-fault-error-midstream", input="x", stream=True))
            with client.responses.stream(model="mock-fault-error-midstream", input="x") as stream, \
                    pytest.raises(RuntimeError, match=r"response\.completed") as raised:
                helped = list(stream)
                stream.get_final_response()
            return events, helped, str(raised.value)

    events, helped, raised = await in_thread(ask)
    assert "Didn't receive" in raised, "the helper's final response is not a completed one"
    for seen in (events, helped):
        assert [event.type for event in seen].count("response.failed") == 1 and seen[-1].type == "response.failed"
        error = seen[-1].response.error
        assert (error.code, error.type, error.model_extra["phase"]) == ("mock_fault", "upstream_error", "stream")
    partial = helped[-1].response.output[0]
    assert partial.type == "message" and partial.content[0].text == "".join(e.delta for e in helped if e.type == "response.output_text.delta")


async def test_failures_before_the_head_are_openai_errors(relay_url: str) -> None:
    def ask(model: str, stream: bool) -> Exception:
        with sdk(relay_url) as client, pytest.raises(openai.APIStatusError) as raised:
            if stream:
                with client.responses.stream(model=model, input="x") as events:
                    list(events)
            else:
                client.responses.create(model=model, input="x")
        return raised.value

    refused = await in_thread(lambda: ask("mock-fault-nope", True))
    assert isinstance(refused, openai.NotFoundError), "the model server's refusal keeps its status"
    failed = await in_thread(lambda: ask("mock-fault-http-500", False))
    assert failed.status_code == 502 and failed.body["code"] == "upstream_status_500"  # type: ignore[index]


async def test_heartbeats_are_comments_the_sdk_passes_over() -> None:
    with mock_server(ttft=0.3, interval=0.001, tokens=3) as (_, upstream), relay_server(upstream, heartbeat_interval=0.05) as url:
        async with httpx.AsyncClient(timeout=10) as http:
            with anyio.fail_after(10):
                raw = (await http.post(url + "/v1/responses", json={"model": "mock", "input": "x", "stream": True})).content

        def ask() -> list[str]:
            with sdk(url) as openai_client:
                return [e.delta for e in openai_client.responses.create(model="mock", input="x", stream=True) if e.type == "response.output_text.delta"]

        deltas = await in_thread(ask)
    assert b": ping\n\n" in raw
    assert "".join(deltas) == "".join(mock_text("x", 3))


async def test_the_request_reaches_the_model_server_as_a_chat(client: httpx.AsyncClient) -> None:
    upstream = HostileUpstream(replaying_fixtures)
    body = {
        "model": "openai-logprobs", "instructions": "Be brief.", "max_output_tokens": 40, "temperature": 0.5, "top_p": 0.9,
        "reasoning": {"effort": "low"}, "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
        "top_logprobs": 2, "store": False, "parallel_tool_calls": False, "text": {"format": {"type": "json_object"}},
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}, {"type": "input_image", "image_url": "https://x/y.png"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
    }
    with upstream.serving() as base, relay_server(base) as url:
        response = await client.post(url + "/v1/responses", json=body)
    sent = json.loads(upstream.conns[0].requests[0].partition(b"\r\n\r\n")[2])
    assert response.status_code == 200, response.text
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert {key: sent[key] for key in sent if key not in ("messages", "stream", "stream_options")} == {
        "model": "openai-logprobs", "max_tokens": 40, "temperature": 0.5, "top_p": 0.9, "reasoning_effort": "low",
        "tools": [{"type": "function", "function": {key: WEATHER[key] for key in ("name", "description", "parameters")}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "logprobs": True, "top_logprobs": 2,
        "parallel_tool_calls": False, "response_format": {"type": "json_object"},
    }
    tokens = response.json()["output"][0]["content"][0]["logprobs"]
    assert tokens and all({"token", "logprob", "top_logprobs"} <= set(token) for token in tokens), "logprobs are carried"


REFUSED = [
    ({"store": True}, "$.store", "stateless"),
    ({"previous_response_id": "resp_1"}, "$.previous_response_id", "stateless"),
    ({"background": True}, "$.background", "background"),
    ({"conversation": "conv_1"}, "$.conversation", "stateless"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "$.input[0]", "store = false"),
    ({"tools": [{"type": "web_search"}]}, "$.tools[0].type", "hosted tools"),
    ({"tool_choice": {"type": "web_search"}}, "$.tool_choice.type", "name a function"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "$.input[0].content[0].type", "input_file"),
    ({"input": [{"type": "computer_call_output"}]}, "$.input[0].type", "computer_call_output"),
    ({"text": {"format": {"type": "grammar"}}}, "$.text.format.type", "grammar"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "$.input[0].output", "text only"),
]


@pytest.mark.parametrize(("fields", "param", "said"), REFUSED)
async def test_what_needs_state_or_hosted_tools_is_refused_before_the_model_server(
    fields: dict[str, Any], param: str, said: str, client: httpx.AsyncClient,
) -> None:
    async def never(conn: Conn) -> None:
        raise AssertionError("nothing may reach the model server")

    upstream = HostileUpstream(never)
    with upstream.serving() as base, relay_server(base) as url:
        response = await client.post(url + "/v1/responses", json={"model": "m", "input": "x", "stream": True, **fields})
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (400, "unsupported_parameter", param)
    assert said in error["message"] and upstream.conns == []


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "instructions": "x"}, "$.input"), ({"model": "m", "input": []}, "$.input"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "$.max_output_tokens"),
    ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "$.input[0].role"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "$.input[0].call_id"),
])
async def test_bad_requests_name_the_field(body: dict[str, Any], param: str, relay_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(relay_url + "/v1/responses", json=body)
    assert response.status_code == 422 and response.json()["error"]["param"] == param


async def test_a_length_over_the_relays_limit_is_refused(relay_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(relay_url + "/v1/responses", json={"model": "mock", "input": "x", "max_output_tokens": 10**9})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "max_tokens_too_large")


@pytest.mark.usefixtures("saved_garbage")
async def test_responses_leave_no_cycles(relay_url: str, client: httpx.AsyncClient) -> None:
    """Freed by reference counting, streamed and whole (tests/streaming/test_garbage.py says why it matters)."""
    with anyio.fail_after(10):
        for _ in range(3):
            body = {"model": "mock", "input": "x", "tools": [WEATHER]}
            _, events = await post_stream(client, relay_url + "/v1/responses", body | {"stream": True})
            assert checked(events)[-1]["type"] == "response.completed"
            assert (await client.post(relay_url + "/v1/responses", json=body)).json()["status"] == "completed"
    gc.collect()
    assert relay_objects(gc.garbage) == []
