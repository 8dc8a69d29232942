"""A client that leaves, in any phase, closes the upstream connection: the mock records each disconnect."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest

from app.mock import MockModel
from tests.servers import mock_server, relay_server, under_every_server


@pytest.fixture(scope="module")
def slow(asgi_server: str, transport: str) -> Iterator[tuple[MockModel, str]]:
    """A model that takes 30 s to its first token, then a token every 50 ms (over each transport)."""
    with mock_server(ttft=30.0, interval=0.05, tokens=1000) as (model, upstream), \
            relay_server(upstream, server=asgi_server, max_tokens_limit=1000, default_model="mock", transport=transport) as url:
        yield model, url


@pytest.fixture(scope="module")
def steady(asgi_server: str, transport: str) -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.02, tokens=1000) as (model, upstream), \
            relay_server(upstream, server=asgi_server, max_tokens_limit=1000, default_model="mock", transport=transport) as url:
        yield model, url


async def _disconnect_of(model: MockModel, request_id: str) -> dict:
    with anyio.fail_after(5):
        return await anyio.to_thread.run_sync(model.wait_for_disconnect, request_id, 5)


@under_every_server
@pytest.mark.parametrize("path", ["/v1/generate", "/v1/chat/completions"])
async def test_leaving_before_the_first_token(path: str, slow: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    model, url = slow
    request_id = f"before-first{path.replace('/', '-')}"
    body = {"prompt": "x", "stream": True} if path == "/v1/generate" else {"model": "mock", "messages": [{"role": "user", "content": "x"}], "stream": True}
    before = model.requests
    with anyio.fail_after(5):
        async with client.stream("POST", url + path, json=body, headers={"x-request-id": request_id}) as response:
            assert response.status_code == 200  # the head goes out at once, before the first token
            # Leave once the model has the request (a client gone before that is never sent upstream).
            await anyio.to_thread.run_sync(model.wait_for_requests, before + 1, 4)
    record = await _disconnect_of(model, request_id)
    assert record["tokens_sent"] == 0


@under_every_server
async def test_leaving_right_after_the_head(slow: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    """Gone before the relay has even asked the model: the request is never sent, or it is closed like any other."""
    model, url = slow
    ids = [f"right-after-head-{i}" for i in range(10)]
    with anyio.fail_after(10):
        for request_id in ids:
            async with client.stream("POST", url + "/v1/generate", json={"prompt": "x", "stream": True}, headers={"x-request-id": request_id}) as response:
                assert response.status_code == 200
        # Round trips after them: by their end the relay has seen the ten leave (a request it has
        # not sent yet would only escape the check below, not fail it).
        for _ in range(3):
            assert (await client.get(url + "/readyz")).status_code == 200
    asked = [request_id for request_id in ids if request_id in model.request_ids]
    for request_id in asked:
        assert (await _disconnect_of(model, request_id))["tokens_sent"] == 0


@under_every_server
async def test_leaving_mid_stream(steady: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    model, url = steady
    with anyio.fail_after(5):
        async with client.stream("POST", url + "/v1/generate", json={"prompt": "x", "stream": True, "max_tokens": 1000},
                                 headers={"x-request-id": "mid-stream"}) as response:
            seen = 0
            async for chunk in response.aiter_raw():
                seen += chunk.count(b"event: token")
                if seen >= 5:
                    break
    record = await _disconnect_of(model, "mid-stream")
    assert 5 <= record["tokens_sent"] < 1000


@under_every_server
async def test_leaving_a_non_streaming_request(slow: tuple[MockModel, str]) -> None:
    model, url = slow
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.3)) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(url + "/v1/generate", json={"prompt": "x"}, headers={"x-request-id": "non-streaming"})
    record = await _disconnect_of(model, "non-streaming")
    assert record["tokens_sent"] == 0


@under_every_server
async def test_no_disconnect_is_recorded_for_a_stream_read_to_its_end(steady: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    model, url = steady
    async with client.stream("POST", url + "/v1/generate", json={"prompt": "x", "stream": True, "max_tokens": 3},
                             headers={"x-request-id": "read-to-end"}) as response:
        body = await response.aread()
    assert body.endswith(b"\n\n") and b"event: done" in body
    assert model.disconnect_of("read-to-end") is None
