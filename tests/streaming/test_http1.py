"""The upstream HTTP client: connection reuse, and an exchange that is over cannot touch the next one."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import httpx
import pytest

from app.errors import UpstreamTimeout
from app.streaming.upstreams.http1 import Client, Origin, _Connection, _HeadDeadline
from app.streaming.upstreams.mock import MockModel
from tests.servers import mock_server


class Collect:
    def __init__(self) -> None:
        self.status = 0
        self.body = bytearray()
        self.ended = anyio.Event()
        self.lost: Exception | None = None

    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_end(self) -> None:
        self.ended.set()

    def on_lost(self, exc: Exception) -> None:
        self.lost = exc
        self.ended.set()


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.0, tokens=3) as served:
        yield served


BODY = b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "stream": true}'


async def _exchange(client: Client, origin: Origin, model: str = "mock") -> Collect:
    handler = Collect()
    body = BODY.replace(b'"mock"', f'"{model}"'.encode())
    exchange = await client.request(origin, "POST", "/chat/completions", [("Content-Type", "application/json")], body, handler,
                                    connect_timeout=5, head_timeout=5)
    with anyio.fail_after(5):
        await handler.ended.wait()
    exchange.close()
    return handler


async def test_a_finished_exchange_returns_its_connection_for_reuse(upstream: tuple[MockModel, str]) -> None:
    client = Client()
    origin = Origin(upstream[1])
    first = await _exchange(client, origin)
    second = await _exchange(client, origin)
    idle = list(client._idle[origin.key])
    await client.aclose()
    assert first.status == second.status == 200
    assert first.body.endswith(b"data: [DONE]\n\n") and second.body.endswith(b"data: [DONE]\n\n")
    assert len(idle) == 1 and idle[0].serial == 2, "both exchanges should have used one connection"
    assert idle[0].closed


async def test_closing_a_finished_exchange_leaves_the_reused_connection_alone(upstream: tuple[MockModel, str]) -> None:
    client = Client()
    origin = Origin(upstream[1])
    handler = Collect()
    old = await client.request(origin, "POST", "/chat/completions", [], BODY.replace(b"true", b"false"), handler,
                               connect_timeout=5, head_timeout=5)
    with anyio.fail_after(5):
        await handler.ended.wait()
    # The connection is back in the pool; a new exchange takes it, then the old owner closes late.
    slow = Collect()
    await client.request(origin, "POST", "/chat/completions", [("x-mock-interval", "0.05"), ("x-mock-tokens", "20")], BODY, slow,
                         connect_timeout=5, head_timeout=5)
    old.close()
    with anyio.fail_after(5):
        await slow.ended.wait()
    await client.aclose()
    assert slow.lost is None
    assert slow.body.endswith(b"data: [DONE]\n\n")


async def test_closing_the_client_closes_a_connection_still_in_an_exchange(upstream: tuple[MockModel, str]) -> None:
    """One whose response has not ended (a relay's stream past its end marker, say) must not outlive the client."""
    client = Client()
    handler = Collect()
    await client.request(Origin(upstream[1]), "POST", "/chat/completions", [("x-mock-interval", "0.05"), ("x-mock-tokens", "1000")], BODY, handler,
                         connect_timeout=5, head_timeout=5)
    await client.aclose()
    with anyio.fail_after(5):
        await handler.ended.wait()
    assert handler.lost is not None


async def test_the_relay_reuses_its_upstream_connection_across_requests(client: httpx.AsyncClient) -> None:
    """Even when the body's end arrives after the model's [DONE], in its own packet."""
    from tests.servers import relay_server
    from tests.sse import post_stream

    with mock_server(ttft=0.0, interval=0.0, tokens=3) as (model, upstream), relay_server(upstream, default_model="mock") as url:
        for sent in range(1, 4):
            _, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True})
            assert events[-1].event == "done"
            # The body ends 2 ms after [DONE], as with a real server: let it, so the connection is free.
            await anyio.to_thread.run_sync(model.wait_for_completed, sent, 5)
        response = await client.post(url + "/v1/generate", json={"prompt": "x"})
        assert response.status_code == 200
    assert len(model.peers) == 4
    assert len(set(model.peers)) == 1, "each request opened a new upstream connection"


async def test_after_a_head_timeout_the_handler_hears_nothing_more(upstream: tuple[MockModel, str]) -> None:
    """The caller may have moved on to another upstream: the abandoned exchange must not report its end."""
    client = Client()
    handler = Collect()
    with pytest.raises(UpstreamTimeout):
        await client.request(Origin(upstream[1]), "POST", "/chat/completions", [("x-mock-fault", "stall-head")], BODY, handler,
                             connect_timeout=5, head_timeout=0.1)
    # The aborted connection's loss is delivered by the loop soon after the abort (call_soon): let it run.
    for _ in range(5):
        await anyio.lowlevel.checkpoint()
    await client.aclose()
    assert handler.lost is None and not handler.ended.is_set()


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
async def test_a_head_timeout_never_fires_before_its_deadline(upstream: tuple[MockModel, str]) -> None:
    """uvloop runs timers up to half a millisecond early: a head timeout bounded by the total deadline must wait for it."""
    client = Client()
    origin = Origin(upstream[1])
    early = []
    with anyio.fail_after(10):
        for _ in range(20):
            seconds = 0.0104  # not a whole number of milliseconds, which uvloop would round down
            started = anyio.current_time()
            with pytest.raises(UpstreamTimeout):
                await client.request(origin, "POST", "/chat/completions", [("x-mock-fault", "stall-head")], BODY, Collect(),
                                     connect_timeout=5, head_timeout=seconds)
            waited = anyio.current_time() - started
            if waited < seconds:
                early.append(waited)
    await client.aclose()
    assert early == []


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


async def test_bytes_after_the_head_deadline_reach_no_handler() -> None:
    """The deadline fired, and the head arrives in the same loop pass, before the waiting task resumes."""
    connection = _Connection(Client(), Origin("http://127.0.0.1:9/v1"))
    transport = _Transport()
    connection.connection_made(transport)
    handler = Collect()
    head = connection.start(b"POST /v1/chat/completions HTTP/1.1\r\n\r\n", handler)
    _HeadDeadline(asyncio.get_running_loop(), head, 0.001, functools.partial(connection.detach, connection.serial))
    with anyio.fail_after(5), pytest.raises(UpstreamTimeout):
        await head
    connection.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
    assert transport.aborted
    assert handler.status == 0 and not handler.body and not handler.ended.is_set()
