"""Resumable streams: POST /v1/streams, GET /v1/streams/{id}/events (EventSource), DELETE /v1/streams/{id}."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from app.capability import CANCEL, READ, Capabilities
from app.mock import MockModel, mock_text
from app.streaming.log_memory import MemoryEventLog
from app.streaming.reader import READ_BATCH, Reader
from app.streaming.sse import SSEParser
from app.types import Message
from tests.hostile import LAST_CHUNK, Conn, HostileUpstream, chunk, chunked_head, chunked_response, probing, sse
from tests.rawhttp import Response, open_get, open_request, read_until
from tests.servers import mock_server, relay_server
from tests.sse import data
from tests.streams import create, misspelled_token_queries, read, text_of

SECRET = "s" * 32
KIB = 1024
MIB = 1024 * KIB


def _relay(upstream: str, **overrides: object) -> contextlib.AbstractContextManager[str]:
    return relay_server(upstream, stream_secret=SECRET, models=("mock", "mock-fault-stall-head", "mock-fault-stall-first"), **overrides)


@pytest.fixture(scope="module")
def slow_mock() -> Iterator[tuple[MockModel, str]]:
    """A mock slow enough that readers can come and go while it generates."""
    with mock_server(ttft=0.0, interval=0.02, tokens=400) as served:
        yield served


@pytest.fixture(scope="module")
def relay_url(mock: tuple[MockModel, str]) -> Iterator[str]:
    with _relay(mock[1], stream_retention=60) as url:
        yield url


@pytest.fixture(scope="module")
def slow_relay_url(slow_mock: tuple[MockModel, str]) -> Iterator[str]:
    with _relay(slow_mock[1], stream_grace=0.3) as url:
        yield url


async def _disconnect_of(model: MockModel, request_id: str) -> dict:  # type: ignore[type-arg]
    return await anyio.to_thread.run_sync(model.wait_for_disconnect, request_id, 5)


async def test_post_answers_201_with_urls_and_the_events_replay_the_whole_generation(relay_url: str, client: httpx.AsyncClient) -> None:
    created = await create(client, relay_url, {"prompt": "tell me", "max_tokens": 10})
    assert set(created) == {"id", "object", "events_url", "cancel_url", "expires_at"}
    assert created["events_url"].startswith(f"{relay_url}/v1/streams/{created['id']}/events?token=")
    assert created["cancel_url"].startswith(f"{relay_url}/v1/streams/{created['id']}?token=")
    assert created["expires_at"].endswith("Z")
    assert (await client.post(relay_url + "/v1/streams", json={"prompt": "x", "max_tokens": 1})).headers["cache-control"] == "no-store"
    response, events = await read(client, created["events_url"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert [e.event for e in events] == ["token"] * (len(events) - 1) + ["done"]
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    assert text_of(events) == "".join(mock_text("tell me", 10))
    assert data(events[-1])["usage"]["completion_tokens"] == 10


async def test_the_first_answer_carries_a_retry_hint(relay_url: str, client: httpx.AsyncClient) -> None:
    created = await create(client, relay_url, {"prompt": "x", "max_tokens": 2})
    async with client.stream("GET", created["events_url"]) as response:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    assert body.startswith(b"retry: 2000\n\n")


async def test_a_chat_body_with_messages_is_accepted(relay_url: str, client: httpx.AsyncClient) -> None:
    body = {"model": "mock", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4}
    created = await create(client, relay_url, body)
    _, events = await read(client, created["events_url"])
    assert text_of(events) == "".join(mock_text("hi there", 4))
    assert events[-1].event == "done"


async def test_last_event_id_replays_exactly_the_events_after_it(relay_url: str, client: httpx.AsyncClient) -> None:
    created = await create(client, relay_url, {"prompt": "resume me", "max_tokens": 12})
    _, whole = await read(client, created["events_url"])
    _, rest = await read(client, created["events_url"], last_event_id=whole[4].id)
    assert rest == whole[5:]
    _, rest = await read(client, created["events_url"] + f"&last_event_id={whole[2].id}")
    assert rest == whole[3:]
    # EventSource keeps its first URL and sends the header on reconnect: the header wins.
    _, rest = await read(client, created["events_url"] + "&last_event_id=1", last_event_id=whole[6].id)
    assert rest == whole[7:]


async def test_a_finished_stream_read_to_its_end_or_an_unknown_one_answers_204(relay_url: str, client: httpx.AsyncClient) -> None:
    created = await create(client, relay_url, {"prompt": "x", "max_tokens": 3})
    _, events = await read(client, created["events_url"])
    response, _ = await read(client, created["events_url"], last_event_id=events[-1].id)
    assert response.status_code == 204
    token, _ = Capabilities(SECRET.encode(), 60).issue("st_nope", READ)
    response = await client.get(f"{relay_url}/v1/streams/st_nope/events?token={token}")
    assert response.status_code == 204


async def test_an_id_the_log_never_issued_is_a_400(relay_url: str, client: httpx.AsyncClient) -> None:
    created = await create(client, relay_url, {"prompt": "x", "max_tokens": 3})
    response, _ = await read(client, created["events_url"], last_event_id="abc")
    assert response.status_code == 400
    assert (await client.get(created["events_url"] + "&last_event_id=-1")).json()["error"]["code"] == "invalid_event_id"


async def test_wrong_expired_or_misused_tokens_get_401(relay_url: str, client: httpx.AsyncClient) -> None:
    created = await create(client, relay_url, {"prompt": "x", "max_tokens": 3})
    stream_id = created["id"]
    events_path = f"{relay_url}/v1/streams/{stream_id}/events"
    capabilities = Capabilities(SECRET.encode(), 60)
    expired, _ = capabilities.issue(stream_id, READ, now=time.time() - 120)
    other, _ = capabilities.issue("st_other", READ)
    cancel_token = urlsplit(created["cancel_url"]).query.removeprefix("token=")
    read_token = urlsplit(created["events_url"]).query.removeprefix("token=")
    for url in [events_path, events_path + "?token=", events_path + "?token=123.abc", events_path + f"?token={expired}",
                events_path + f"?token={other}", events_path + f"?token={cancel_token}"]:
        response = await client.get(url)
        assert response.status_code == 401, url
        assert response.json()["error"]["code"] == "invalid_token"
    # A read token cannot cancel.
    response = await client.delete(f"{relay_url}/v1/streams/{stream_id}?token={read_token}")
    assert response.status_code == 401
    forged, _ = Capabilities(b"x" * 32, 60).issue(stream_id, READ)
    assert (await client.get(events_path + f"?token={forged}")).status_code == 401


async def test_the_token_is_read_only_from_a_literal_token_parameter_given_once(relay_url: str, client: httpx.AsyncClient) -> None:
    """Another spelling of the parameter (percent-escapes, case, another separator) or of the token is no token."""
    created = await create(client, relay_url, {"prompt": "x", "max_tokens": 3})
    stream_id = created["id"]
    token = urlsplit(created["events_url"]).query.removeprefix("token=")
    cancel = urlsplit(created["cancel_url"]).query.removeprefix("token=")
    events, stream = f"/v1/streams/{stream_id}/events", f"/v1/streams/{stream_id}"

    async def status(method: str, path: str) -> int:
        with anyio.fail_after(10):
            response = Response()
            async with await open_request(relay_url, f"{method} {path}") as connection:
                await read_until(connection, response)
            return response.status

    for query in misspelled_token_queries(token):
        assert await status("GET", f"{events}?{query}") == 401, query
    assert await status("GET", f"/v1/streams/{token}/events") == 401
    for query in [f"token={token}", f"x=1&token={token}", f"token={token}&x=1", f"%74oken=x&token={token}"]:
        assert await status("GET", f"{events}?{query}") == 200, query
    for query in misspelled_token_queries(cancel):
        assert await status("DELETE", f"{stream}?{query}") == 401, query
    assert await status("DELETE", f"{stream}?x=1&token={cancel}") == 200


async def test_several_readers_each_get_the_whole_sequence(slow_relay_url: str, client: httpx.AsyncClient) -> None:
    created = await create(client, slow_relay_url, {"prompt": "fan out", "max_tokens": 20})
    results: list[list] = []  # type: ignore[type-arg]

    async def reader(stop_after: int | None) -> None:
        _, events = await read(client, created["events_url"], stop_after=stop_after)
        if stop_after is not None:  # a reader that left and came back
            _, rest = await read(client, created["events_url"], last_event_id=events[-1].id)
            events += rest
        results.append(events)

    async with anyio.create_task_group() as tg:
        for stop_after in (None, None, 3, 7):
            tg.start_soon(reader, stop_after)
    expected = "".join(mock_text("fan out", 20))
    for events in results:
        assert text_of(events) == expected
        assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
        assert events[-1].event == "done"
    assert len({tuple(e.id for e in events) for events in results}) == 1


async def test_a_reader_that_stops_reading_slows_neither_the_generation_nor_the_others(client: httpx.AsyncClient) -> None:
    with mock_server(ttft=0.0, interval=0.0, tokens=3000) as (model, upstream), _relay(upstream) as relay_url:
        created = await create(client, relay_url, {"prompt": "a long answer", "max_tokens": 3000}, headers={"x-request-id": "stuck-reader"})
        url = urlsplit(created["events_url"])
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((url.hostname, url.port))
        stuck.sendall(f"GET {url.path}?{url.query} HTTP/1.1\r\nhost: {url.netloc}\r\n\r\n".encode())
        try:
            _, events = await read(client, created["events_url"])
            assert text_of(events) == "".join(mock_text("a long answer", 3000))
            # The upstream ran to its end while one reader had read (almost) nothing.
            await anyio.to_thread.run_sync(model.wait_for_completed, 1, 5)
            assert model.disconnect_of("stuck-reader") is None
        finally:
            stuck.close()


async def test_when_the_last_reader_leaves_the_generation_is_cancelled_after_the_grace(
    slow_mock: tuple[MockModel, str], slow_relay_url: str, client: httpx.AsyncClient
) -> None:
    created = await create(client, slow_relay_url, {"prompt": "x", "max_tokens": 400}, headers={"x-request-id": "left-for-good"})
    _, first = await read(client, created["events_url"], stop_after=2)
    record = await _disconnect_of(slow_mock[0], "left-for-good")
    assert record["tokens_sent"] < 400
    # A reader coming back later finds what was generated, ended by a terminal error.
    _, rest = await read(client, created["events_url"], last_event_id=first[-1].id)
    assert rest[-1].event == "error"
    assert data(rest[-1])["code"] == "no_readers"
    assert data(rest[-1])["type"] == "cancelled"


async def test_a_stream_nobody_reads_is_cancelled_after_the_grace(slow_mock: tuple[MockModel, str], slow_relay_url: str, client: httpx.AsyncClient) -> None:
    await create(client, slow_relay_url, {"prompt": "x", "max_tokens": 400}, headers={"x-request-id": "never-read"})
    record = await _disconnect_of(slow_mock[0], "never-read")
    assert record["tokens_sent"] < 400


async def test_a_reader_back_within_the_grace_resumes_without_loss(slow_mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with _relay(slow_mock[1], stream_grace=5) as relay_url:
        created = await create(client, relay_url, {"prompt": "come back", "max_tokens": 15}, headers={"x-request-id": "came-back"})
        _, first = await read(client, created["events_url"], stop_after=3)
        _, rest = await read(client, created["events_url"], last_event_id=first[-1].id)
    assert text_of(first + rest) == "".join(mock_text("come back", 15))
    assert rest[-1].event == "done"
    assert slow_mock[0].disconnect_of("came-back") is None


async def test_delete_cancels_at_once_and_readers_get_a_cancelled_error(
    slow_mock: tuple[MockModel, str], slow_relay_url: str, client: httpx.AsyncClient
) -> None:
    created = await create(client, slow_relay_url, {"prompt": "x", "max_tokens": 400}, headers={"x-request-id": "deleted"})

    async def reader() -> None:
        _, events = await read(client, created["events_url"])
        assert events[-1].event == "error"
        assert data(events[-1])["code"] == "cancelled"
        assert [e.event for e in events[:-1]] == ["token"] * (len(events) - 1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await read(client, created["events_url"], stop_after=2)  # the generation is under way
        response = await client.delete(created["cancel_url"])
        assert response.status_code == 200
        assert response.json() == {"id": created["id"], "cancelled": True}
    record = await _disconnect_of(slow_mock[0], "deleted")
    assert record["tokens_sent"] < 400
    again = await client.delete(created["cancel_url"])
    assert again.json() == {"id": created["id"], "cancelled": False}


async def test_delete_while_the_upstream_has_not_answered_closes_it(slow_mock: tuple[MockModel, str], slow_relay_url: str, client: httpx.AsyncClient) -> None:
    model = slow_mock[0]
    before = model.requests
    created = await create(
        client, slow_relay_url, {"prompt": "x", "model": "mock-fault-stall-head"}, headers={"x-request-id": "deleted-early"},
    )
    await anyio.to_thread.run_sync(model.wait_for_requests, before + 1, 5)  # the upstream holds its answer back
    assert (await client.delete(created["cancel_url"])).json()["cancelled"] is True
    await _disconnect_of(slow_mock[0], "deleted-early")
    _, events = await read(client, created["events_url"])
    assert [e.event for e in events] == ["error"]
    assert data(events[0])["code"] == "cancelled"


async def test_delete_of_an_unknown_stream_is_a_404(relay_url: str, client: httpx.AsyncClient) -> None:
    token, _ = Capabilities(SECRET.encode(), 60).issue("st_gone", CANCEL)
    response = await client.delete(f"{relay_url}/v1/streams/st_gone?token={token}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "stream_not_found"


async def test_a_finished_stream_expires_after_its_retention(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with _relay(mock[1], stream_retention=0.2) as relay_url:
        created = await create(client, relay_url, {"prompt": "x", "max_tokens": 2})
        _, events = await read(client, created["events_url"])
        assert events[-1].event == "done"
        with anyio.fail_after(5):
            while (await client.get(created["events_url"])).status_code != 204:  # noqa: ASYNC110 (polled from outside, as a browser would)
                await anyio.sleep(0.05)
        response = await client.delete(created["cancel_url"])
        assert response.status_code == 404


async def test_the_event_log_of_a_stream_is_capped(slow_mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with _relay(slow_mock[1], stream_log_max_bytes=200) as relay_url:
        created = await create(client, relay_url, {"prompt": "x", "max_tokens": 400}, headers={"x-request-id": "too-long"})
        _, events = await read(client, created["events_url"])
        record = await _disconnect_of(slow_mock[0], "too-long")
    assert events[-1].event == "error"
    assert data(events[-1])["code"] == "stream_too_long"
    assert len(text_of(events)) < 400
    assert record["tokens_sent"] < 400


async def test_at_the_reader_limit_a_reader_gets_200_with_a_retry_hint_and_no_events(slow_mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with _relay(slow_mock[1], max_stream_readers=1) as relay_url:
        created = await create(client, relay_url, {"prompt": "x", "max_tokens": 30})
        async with client.stream("GET", created["events_url"]) as first:
            await first.aiter_raw().__anext__()  # the first reader is in
            response = await client.get(created["events_url"])
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.text == "retry: 5000\n: busy\n\n"


async def test_at_the_stream_limit_post_gets_429_with_retry_after(slow_mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with _relay(slow_mock[1], max_streams=1) as relay_url:
        created = await create(client, relay_url, {"prompt": "x", "max_tokens": 400})
        response = await client.post(relay_url + "/v1/streams", json={"prompt": "y"})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "2"
        assert response.json()["error"]["code"] == "too_many_streams"
        await client.delete(created["cancel_url"])


async def test_bad_input_gets_the_usual_errors_and_starts_nothing(mock: tuple[MockModel, str], relay_url: str, client: httpx.AsyncClient) -> None:
    before = mock[0].requests
    cases = [
        (b"{", 400, "invalid_json"),
        (b"[]", 422, "invalid_request"),
        (b'{"prompt": ""}', 422, "invalid_request"),
        (b'{"prompt": "x", "surprise": 1}', 422, "invalid_request"),
        (b'{"prompt": "x", "model": "nope"}', 404, "model_not_found"),
        (b'{"model": "mock", "messages": []}', 422, "invalid_request"),
        (b'{"prompt": "x", "max_tokens": 1000000}', 422, "max_tokens_too_large"),
    ]
    for body, status, code in cases:
        response = await client.post(relay_url + "/v1/streams", content=body, headers={"content-type": "application/json"})
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    assert mock[0].requests == before


async def test_with_api_keys_post_needs_a_key_and_the_urls_work_without_one(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with _relay(mock[1], api_keys=("k1",)) as relay_url:
        assert (await client.post(relay_url + "/v1/streams", json={"prompt": "x"})).status_code == 401
        created = await create(client, relay_url, {"prompt": "x", "max_tokens": 3}, headers={"authorization": "Bearer k1"})
        _, events = await read(client, created["events_url"])
        assert events[-1].event == "done"
        # A backend reader may use its key instead of the token.
        bare = created["events_url"].split("?")[0]
        assert (await client.get(bare)).status_code == 401
        async with client.stream("GET", bare, headers={"x-api-key": "k1"}) as keyed:
            assert keyed.status_code == 200
        assert (await client.delete(created["cancel_url"])).status_code == 200


async def test_a_reader_that_takes_nothing_for_the_grace_is_cut_off() -> None:
    endless = 10_000_000
    with mock_server(ttft=0.0, interval=0.0, tokens=endless) as (model, upstream), \
            _relay(upstream, slow_consumer_grace=0.3, stream_grace=0.2, max_tokens_limit=endless, stream_log_max_bytes=1 << 30,
                   stream_log_budget_bytes=1 << 30) as relay_url:
        async with httpx.AsyncClient(timeout=10) as client:
            created = await create(client, relay_url, {"prompt": "endless", "max_tokens": endless}, headers={"x-request-id": "stuck"})
            url = urlsplit(created["events_url"])
            stuck = await open_get(relay_url, f"{url.path}?{url.query}", receive_buffer=4096)
            try:
                response = Response()
                with anyio.fail_after(10):
                    await read_until(stuck, response, body_contains=b"event: token")
                # It reads nothing more. Once its buffers are full, a send to it waits past the grace and the
                # relay hangs up; with nobody left reading, the generation is then cancelled.
                record = await anyio.to_thread.run_sync(model.wait_for_disconnect, "stuck", 30)
            finally:
                await stuck.aclose()
            # Nobody ended it but the relay itself (replaying its log would mean reading megabytes).
            assert (await client.delete(created["cancel_url"])).json()["cancelled"] is False
    assert record["tokens_sent"] < endless


async def test_readers_get_heartbeats_while_the_generation_waits_for_its_first_token(slow_mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with _relay(slow_mock[1], heartbeat_interval=0.05) as relay_url:
        created = await create(client, relay_url, {"prompt": "x", "model": "mock-fault-stall-first"})
        with anyio.fail_after(5):
            async with client.stream("GET", created["events_url"]) as response:
                body = b""
                async for chunk in response.aiter_raw():
                    body += chunk
                    if body.count(b": ping\n\n") >= 2:
                        break
        assert body.startswith(b"retry: 2000\n\n: ping\n\n")
        await client.delete(created["cancel_url"])


def _prompt_of(request: bytes) -> str:
    body = json.loads(request.partition(b"\r\n\r\n")[2])
    return str(body["messages"][-1]["content"])


def _deltas(size: int, piece: int = 8 * KIB) -> bytes:
    """Content events carrying ``size`` characters of text in all, ``piece`` at a time."""
    return b"".join(
        b'data: {"choices":[{"index":0,"delta":{"content":"%b"}}]}\n\n' % (b"x" * min(piece, size - start)) for start in range(0, size, piece)
    )


def _answering(size: int) -> HostileUpstream:
    """A model server that answers every request with ``size`` characters, in events of 8 KiB."""

    async def script(conn: Conn) -> None:
        while await conn.read_request():
            await conn.write(chunked_response(_deltas(size) + sse()))

    return HostileUpstream(script)


async def test_past_the_log_budget_finished_streams_expire_oldest_first(client: httpx.AsyncClient) -> None:
    upstream = _answering(16 * KIB)
    with upstream.serving() as url, _relay(url, stream_log_max_bytes=32 * KIB, stream_log_budget_bytes=64 * KIB) as relay_url:
        created = []
        for n in range(6):
            stream = await create(client, relay_url, {"prompt": f"answer {n}"})
            _, events = await read(client, stream["events_url"])
            assert text_of(events) == "x" * 16 * KIB
            assert events[-1].event == "done"
            created.append((stream, events))
        statuses = [(await client.get(stream["events_url"], headers={"last-event-id": "0"})).status_code for stream, _ in created]
        # The oldest are gone, the newest are whole: never a stream in between.
        assert statuses[:2] == [204, 204]
        assert statuses[-2:] == [200, 200]
        assert statuses == sorted(statuses, reverse=True)
        for stream, _ in created[:2]:
            response = await client.delete(stream["cancel_url"])
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "stream_not_found"
        for stream, events in created[-2:]:
            _, replayed = await read(client, stream["events_url"])
            assert replayed == events


async def test_many_large_streams_keep_the_memory_within_the_log_budget(client: httpx.AsyncClient) -> None:
    upstream = _answering(MIB)
    with upstream.serving() as url, _relay(url, stream_log_max_bytes=2 * MIB, stream_log_budget_bytes=2 * MIB) as relay_url:
        async with probing(relay_url) as probe:
            for n in range(48):
                stream = await create(client, relay_url, {"prompt": f"a long answer {n}"})
                _, events = await read(client, stream["events_url"])
                assert len(text_of(events)) == MIB
                assert events[-1].event == "done"
                del events
    # Unbounded, the 48 finished streams alone would hold 48 MiB.
    assert probe.peak_growth < 20 * MIB, probe.peak_growth
    assert probe.slowest < 0.5


class _Follower:
    """Reads an events URL to its end in the background; the test looks at what it has so far."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.events: list = []  # type: ignore[type-arg]
        self.ended = False

    async def run(self) -> None:
        parser = SSEParser()
        with anyio.fail_after(20):
            async with self.client.stream("GET", self.url) as response:
                async for chunk in response.aiter_raw():
                    self.events.extend(parser.feed(chunk))
        self.ended = True

    async def until(self, condition: Callable[[_Follower], bool]) -> None:
        with anyio.fail_after(10):
            while not condition(self):  # noqa: ASYNC110 (the reader's progress, polled from outside)
                await anyio.sleep(0.01)


async def test_when_generating_streams_alone_fill_the_budget_new_ones_wait_and_the_largest_is_ended(client: httpx.AsyncClient) -> None:
    gates = {"a": asyncio.Event(), "b1": asyncio.Event(), "b2": asyncio.Event()}

    async def script(conn: Conn) -> None:
        while request := await conn.read_request():
            prompt = _prompt_of(request)
            if prompt == "a":
                await conn.write(chunked_head() + chunk(_deltas(50 * KIB)))
                await gates["a"].wait()
                await conn.write(chunk(_deltas(40 * KIB)))
                assert await conn.closed_by_peer()  # it is never let finish
            elif prompt == "b":
                await conn.write(chunked_head() + chunk(_deltas(30 * KIB)))
                await gates["b1"].wait()
                await conn.write(chunk(_deltas(50 * KIB)))
                await gates["b2"].wait()
                await conn.write(chunk(sse()) + LAST_CHUNK)
            else:
                await conn.write(chunked_response(_deltas(10) + sse()))

    upstream = HostileUpstream(script)

    def release(gate: str) -> None:
        upstream.call(gates[gate].set)

    def text(size: int) -> Callable[[_Follower], bool]:
        return lambda follower: len(text_of(follower.events)) >= size

    with upstream.serving() as url, _relay(url, stream_log_max_bytes=100 * KIB, stream_log_budget_bytes=160 * KIB) as relay_url:
        async with httpx.AsyncClient(timeout=20) as readers, anyio.create_task_group() as tg:
            a = _Follower(readers, (await create(client, relay_url, {"prompt": "a"}))["events_url"])
            tg.start_soon(a.run)
            await a.until(text(50 * KIB))
            b = _Follower(readers, (await create(client, relay_url, {"prompt": "b"}))["events_url"])
            tg.start_soon(b.run)
            await b.until(text(30 * KIB))
            # 50 + 30 KiB generating: a new stream could not grow to its 100 KiB without passing the 160 KiB.
            refused = await client.post(relay_url + "/v1/streams", json={"prompt": "c"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "stream_log_full"
            assert refused.headers["retry-after"]
            release("a")
            await a.until(text(90 * KIB))
            release("b1")  # 90 + 80 KiB: past the budget; a, the largest, is ended
            await a.until(lambda follower: follower.ended)
            assert a.events[-1].event == "error"
            assert data(a.events[-1])["code"] == "stream_log_full"
            assert len(text_of(a.events)) == 90 * KIB
            await b.until(text(80 * KIB))
            release("b2")
            await b.until(lambda follower: follower.ended)
            assert len(text_of(b.events)) == 80 * KIB
            assert b.events[-1].event == "done"
        # Only a's terminal event is kept: a reader coming back learns how it ended.
        _, again = await read(client, a.url, last_event_id="1")
        assert [(e.id, e.event) for e in again] == [(a.events[-1].id, "error")]
        assert (await client.post(relay_url + "/v1/streams", json={"prompt": "c"})).status_code == 201


async def test_an_id_past_the_end_is_a_400_at_once_and_takes_no_reader_slot(slow_mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with _relay(slow_mock[1], max_stream_readers=1) as relay_url:
        created = await create(client, relay_url, {"prompt": "past the end", "max_tokens": 150})  # 3 s of generation
        with anyio.fail_after(2):
            response = await client.get(created["events_url"], headers={"last-event-id": "100000"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_event_id"
        # The one reader slot is free: a real reader gets the whole stream.
        _, events = await read(client, created["events_url"])
        assert text_of(events) == "".join(mock_text("past the end", 150))
        assert events[-1].event == "done"
        # Finished: the last id is read to the end (204), one past it cannot be of this stream (400).
        response, _ = await read(client, created["events_url"], last_event_id=events[-1].id)
        assert response.status_code == 204
        response = await client.get(created["events_url"], headers={"last-event-id": str(int(events[-1].id) + 1)})
        assert response.status_code == 400


async def test_a_stream_is_seen_only_by_the_key_that_created_it(slow_mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with _relay(slow_mock[1], api_keys=("key-a", "key-b")) as relay_url:
        async with httpx.AsyncClient(timeout=10, headers={"authorization": "Bearer key-a"}) as as_a, \
                httpx.AsyncClient(timeout=10, headers={"x-api-key": "key-b"}) as as_b:
            created = await create(as_a, relay_url, {"prompt": "mine", "max_tokens": 30})
            events_path = f"{relay_url}/v1/streams/{created['id']}/events"
            stream_path = f"{relay_url}/v1/streams/{created['id']}"
            # Another key gets what it would get for a stream that does not exist.
            assert (await as_b.get(events_path)).status_code == 204
            refused = await as_b.delete(stream_path)
            assert refused.status_code == 404
            assert refused.json()["error"]["code"] == "stream_not_found"
            # The stream runs on for its owner.
            _, events = await read(as_a, events_path)
            assert text_of(events) == "".join(mock_text("mine", 30))
            assert events[-1].event == "done"
            # A signed URL is a capability of its own: it works with no key, and whatever key comes with it.
            _, by_token = await read(client, created["events_url"])
            assert by_token == events
            _, by_token = await read(as_b, created["events_url"])
            assert by_token == events
            assert (await as_b.delete(created["cancel_url"])).status_code == 200
            assert (await as_a.delete(stream_path)).json() == {"id": created["id"], "cancelled": False}


async def test_a_reader_still_reading_when_the_log_drops_its_stream_gets_a_terminal_error() -> None:
    log = MemoryEventLog(budget=MIB)
    await log.create("st_old")
    for _ in range(READ_BATCH + 10):
        await log.append("st_old", "token", b'{"text":"x"}')
    await log.append("st_old", "done", b"{}")
    await log.expire("st_old", 60)
    sent: list[bytes] = []

    async def send(message: Message) -> None:
        sent.append(message["body"])
        if len(sent) == 1:  # between two batches of the replay, a new stream needs the room
            await log.create("st_new")
            await log.append("st_new", "token", b"x" * (MIB - 10 * KIB))

    first = await log.read_after("st_old", None, READ_BATCH)
    assert first is not None
    with anyio.fail_after(2):
        await Reader(send, log, "st_old", heartbeat=15, grace=5).follow(None, first)
    assert await log.read_after("st_old", None, 1) is None
    events = SSEParser().feed(b"".join(sent))
    assert len(events) == READ_BATCH + 1
    assert events[-1].event == "error"
    assert data(events[-1])["code"] == "stream_expired"
