"""How the load tester judges each stream, against the real mock and the real relay."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from app.loadtest.stream import CLOSED, CONNECT_ERROR, ERROR, HTTP_STATUS, MALFORMED, MAX_EVENT_BYTES, NO_TERMINAL, OK, TIMEOUT
from app.mock import MockModel
from tests.hostile import LAST_CHUNK, Conn, HostileUpstream, chunk, chunked_head, chunked_response, sse
from tests.loadtest.conftest import load
from tests.servers import relay_server
from tests.streams import create, read


def outcomes(runner: object) -> set[str]:
    return {record["outcome"] for record in runner.records}  # type: ignore[attr-defined]


async def test_whole_streams_from_the_mock_are_ok_with_every_gap_and_token(mock: tuple[MockModel, str]) -> None:
    runner = await load(mock[1] + "/chat/completions", streams=4)
    assert outcomes(runner) == {OK}
    assert runner.failed == 0
    assert runner.outcomes[OK] == 4
    assert runner.tokens == 4 * 16  # from the usage chunk (the default body asks for it)
    assert runner.content_events == 4 * 16
    assert runner.ttft.count == 4
    assert runner.gaps.count == 4 * 15
    assert all(record["status"] == 200 and record["ttft_s"] is not None for record in runner.records)


async def test_an_in_band_error_chunk_is_a_failure_although_the_status_is_200(mock: tuple[MockModel, str]) -> None:
    runner = await load(mock[1] + "/chat/completions", model="mock-fault-error-midstream")
    assert outcomes(runner) == {ERROR}
    assert runner.failed == 3
    assert runner.statuses == {200: 3}
    assert "mock_fault" in runner.details[0]["detail"]


async def test_a_stream_without_a_terminal_event_is_a_failure(mock: tuple[MockModel, str]) -> None:
    runner = await load(mock[1] + "/chat/completions", model="mock-fault-no-done")
    assert outcomes(runner) == {NO_TERMINAL}
    assert runner.failed == 3
    assert runner.content_events == 3 * 8  # it did stream half its tokens


async def test_a_status_other_than_2xx_is_a_failure_with_its_body(mock: tuple[MockModel, str]) -> None:
    runner = await load(mock[1] + "/chat/completions", model="mock-fault-http-500")
    assert outcomes(runner) == {HTTP_STATUS}
    assert runner.statuses == {500: 3}
    assert runner.details[0]["detail"].startswith("HTTP 500: {")


async def test_a_connection_reset_mid_stream_is_a_failure(mock: tuple[MockModel, str]) -> None:
    runner = await load(mock[1] + "/chat/completions", model="mock-fault-reset")
    assert outcomes(runner) == {NO_TERMINAL}


async def test_a_chunk_that_is_not_json_is_a_failure(mock: tuple[MockModel, str]) -> None:
    runner = await load(mock[1] + "/chat/completions", model="mock-fault-malformed")
    assert outcomes(runner) == {MALFORMED}


async def test_an_sse_line_past_the_parsers_bound_is_malformed() -> None:
    async def long_line(conn: Conn) -> None:
        while await conn.read_request():
            await conn.write(chunked_response(sse("x" * (MAX_EVENT_BYTES + 1))))  # a valid chunk, on one line too long

    with HostileUpstream(long_line).serving() as url:
        runner = await load(url + "/chat/completions", streams=1)
    assert outcomes(runner) == {MALFORMED}
    assert runner.details[0]["detail"] == f"an SSE line of more than {MAX_EVENT_BYTES} bytes"


async def test_a_stream_that_never_sends_its_first_token_times_out(mock: tuple[MockModel, str]) -> None:
    runner = await load(mock[1] + "/chat/completions", model="mock-fault-stall-first", streams=2, first_timeout=0.3)
    assert outcomes(runner) == {TIMEOUT}
    assert "first token" in runner.details[0]["detail"]


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        runner = await load(f"http://127.0.0.1:{port}/v1/chat/completions", streams=2)
    assert outcomes(runner) == {CONNECT_ERROR}
    assert runner.failed == 2


async def test_the_relay_in_band_errors_are_failures_in_both_formats(relay: str) -> None:
    chat = await load(relay + "/v1/chat/completions", model="mock-fault-reset")
    native = await load(relay + "/v1/generate", model="mock-fault-error-midstream")
    assert outcomes(chat) == {ERROR}
    assert outcomes(native) == {ERROR}
    assert '"code"' in native.details[0]["detail"]


async def test_the_relay_native_and_openai_streams_are_ok(relay: str) -> None:
    native = await load(relay + "/v1/generate", max_tokens=10)
    chat = await load(relay + "/v1/chat/completions", max_tokens=10)
    for runner in (native, chat):
        assert outcomes(runner) == {OK}
        assert runner.tokens == 3 * 10


async def test_the_relay_errors_before_the_stream_are_http_failures(relay: str) -> None:
    runner = await load(relay + "/v1/chat/completions", model="no-such-model")
    assert outcomes(runner) == {HTTP_STATUS}
    assert runner.statuses == {404: 3}


async def test_closing_after_k_events_is_neither_success_nor_failure_and_reaches_the_upstream(mock: tuple[MockModel, str]) -> None:
    model, url = mock
    runner = await load(url + "/chat/completions", streams=2, close_after=3, max_tokens=10_000, id_prefix="k3",
                        headers=[("x-mock-tokens", "10000"), ("x-mock-interval", "0.01")])
    assert outcomes(runner) == {CLOSED}
    assert runner.failed == 0
    assert all(record["content_events"] == 3 for record in runner.records)
    record = model.wait_for_disconnect("k3-0", timeout=5)
    assert record["tokens_sent"] < 10_000


async def test_a_resumable_streams_event_past_an_upstream_line_bound_is_read_whole(client: httpx.AsyncClient) -> None:
    """The relay bounds a model server's SSE line at 1 MiB, not its own events: a resumable stream logs
    what one upstream event brought of a field as one event, here the logprobs of three tokens of
    nearly a megabyte each, on lines of their own. The tester reads the relay's events whole, as a
    browser's EventSource does."""
    tokens = [b'{"token":"%b","logprob":-0.1,"bytes":null,"top_logprobs":[]}' % (b"x" * 900_000) for _ in range(3)]
    event = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"logprobs":{"content":[' + b",\ndata: ".join(tokens) + b"]}}]}\n\n"

    async def wide(conn: Conn) -> None:
        while await conn.read_request():
            await conn.write(chunked_response(event + sse()))

    with HostileUpstream(wide).serving() as upstream, relay_server(upstream, models=("mock",)) as relay_url:
        created = await create(client, relay_url, {"model": "mock", "messages": [{"role": "user", "content": "x"}]})
        _, events = await read(client, created["events_url"], seconds=10)
        assert [event.event for event in events] == ["token", "logprobs", "done"] and len(events[1].data) > 2_700_000
        runner = await load(created["events_url"], streams=1)
    assert outcomes(runner) == {OK}, runner.details


async def test_anthropic_messages_streams_are_read_as_their_api_ends_them(mock: tuple[MockModel, str]) -> None:
    """The mock speaks Anthropic's Messages API at /v1/messages: text deltas are content, message_stop the end, ``error`` a failure."""
    url = mock[1] + "/messages"
    whole = await load(url, max_tokens=10)
    assert outcomes(whole) == {OK}
    assert whole.content_events == 3 * 10
    assert whole.tokens == 3 * 10  # message_delta's usage.output_tokens
    failed = await load(url, model="mock-fault-error-midstream")
    assert outcomes(failed) == {ERROR}
    assert "overloaded_error" in failed.details[0]["detail"]
    cut = await load(url, model="mock-fault-no-done")
    assert outcomes(cut) == {NO_TERMINAL}
    thinking = await load(url, model="mock-reasoning", max_tokens=10)  # of 10 tokens, the thinking's are not content
    assert outcomes(thinking) == {OK}
    assert 0 < thinking.content_events < 3 * 10


async def _thinks_then_calls(conn: Conn) -> None:
    """A model that reasons for 0.8 s before its first word of content, then writes a tool call's arguments for 0.8 s more."""
    while await conn.read_request():
        await conn.write(chunked_head() + chunk(b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'))
        for _ in range(8):
            await asyncio.sleep(0.1)  # the model's pace, not a wait for the test
            await conn.write(chunk(b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm "}}]}\n\n'))
        await conn.write(chunk(b'data: {"choices":[{"index":0,"delta":{"content":"Let me look."}}]}\n\n'))
        call = b'{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}'
        await conn.write(chunk(b'data: {"choices":[{"index":0,"delta":{"tool_calls":[%b]}}]}\n\n' % call))
        for piece in (b'{\\"a\\"', b":", b"1", b"}", b"", b"", b"", b""):
            await asyncio.sleep(0.1)
            fragment = b'{"index":0,"function":{"arguments":"%b"}}' % piece
            await conn.write(chunk(b'data: {"choices":[{"index":0,"delta":{"tool_calls":[%b]}}]}\n\n' % fragment))
        await conn.write(chunk(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n') + LAST_CHUNK)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/generate", "/v1/messages", "/v1/responses"])
async def test_a_model_that_reasons_or_writes_a_call_past_the_timeouts_is_not_cut_off(path: str) -> None:
    """Reasoning and a tool call's fragments are output: the first-token and idle timeouts watch them, as the relay's own do.
    The time to first token and the gaps stay the content's."""
    with HostileUpstream(_thinks_then_calls).serving() as upstream, relay_server(upstream) as relay:
        runner = await load(relay + path, streams=2, first_timeout=0.4, idle_timeout=0.4)
    assert outcomes(runner) == {OK}, runner.details
    assert all(record["ttft_s"] is not None and record["ttft_s"] > 0.7 for record in runner.records)  # the content's: after the reasoning


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/generate", "/v1/messages", "/v1/responses"])
async def test_a_stream_of_heartbeats_and_preamble_alone_still_times_out(mock: tuple[MockModel, str], path: str) -> None:
    """What a dialect sends before the model says anything (Anthropic's ``message_start`` and ``ping``, the Responses API's
    ``response.created``) is not output: a model that never answers is still a timeout."""
    with relay_server(mock[1], models=["mock-fault-stall-first"], heartbeat_interval=0.1, first_token_timeout=30) as relay:
        runner = await load(relay + path, model="mock-fault-stall-first", streams=1, first_timeout=0.6)
    assert outcomes(runner) == {TIMEOUT}, runner.details
    assert "first token" in runner.details[0]["detail"]
