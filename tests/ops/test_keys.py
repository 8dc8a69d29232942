"""Named keys with limits and models, through a real relay: refusals are 429s that name the limit, and send nothing upstream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from app.mock import MockModel
from app.settings import SettingsError, load_settings
from tests.servers import mock_server, relay_server
from tests.sse import chat
from tests.streams import create, read


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


KEYS: list[dict[str, Any]] = [
    {"name": "team-rpm", "key_sha256": sha("rpm-secret"), "requests_per_minute": 2},
    {"name": "team-one", "key_sha256": sha("one-secret"), "max_concurrent_streams": 1},
    {"name": "team-models", "key_sha256": sha("models-secret"), "models": ["mock"]},
    {"name": "team-tokens", "key_sha256": sha("tokens-secret"), "tokens_per_minute": 300},
    {"name": "team-env", "key_env": "TEAM_ENV_KEY"},
]


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def slow_mock() -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.05, tokens=40) as served:
        yield served


@pytest.fixture(scope="module")
def relay_url(slow_mock: tuple[MockModel, str]) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEAM_ENV_KEY", "env-secret")
        with relay_server(slow_mock[1], environ={"TEAM_ENV_KEY": "env-secret"}, keys=KEYS, api_keys=["plain-secret"],
                          first_token_timeout=5, idle_timeout=5) as url:
            yield url


async def test_named_keys_from_a_digest_or_a_variable_and_unnamed_ones_let_in(relay_url: str, client: httpx.AsyncClient) -> None:
    for headers in [bearer("models-secret"), {"x-api-key": "env-secret"}, bearer("plain-secret")]:
        response = await client.post(relay_url + "/v1/chat/completions", json=chat("mock"), headers=headers)
        assert response.status_code == 200, response.text
    for headers in [bearer("models"), bearer(sha("models-secret")), {}]:
        response = await client.post(relay_url + "/v1/chat/completions", json=chat("mock"), headers=headers)
        assert response.status_code == 401


async def test_over_requests_per_minute_is_a_429_naming_the_limit_and_nothing_goes_upstream(
    relay_url: str, client: httpx.AsyncClient, slow_mock: tuple[MockModel, str],
) -> None:
    for _ in range(2):
        assert (await client.post(relay_url + "/v1/generate", json={"prompt": "hi", "model": "mock", "max_tokens": 2},
                                  headers=bearer("rpm-secret"))).status_code == 200
    before = slow_mock[0].requests
    response = await client.post(relay_url + "/v1/chat/completions", json=chat("mock", stream=True), headers=bearer("rpm-secret"))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "requests_per_minute"
    assert 1 <= int(response.headers["retry-after"]) <= 120
    assert slow_mock[0].requests == before
    scraped = (await client.get(relay_url + "/metrics")).text
    assert 'relay_limit_refusals_total{limit="requests_per_minute"} 1.0' in scraped
    # Another key is not counted with it.
    assert (await client.post(relay_url + "/v1/chat/completions", json=chat("mock"), headers=bearer("plain-secret"))).status_code == 200


async def test_a_stream_slot_is_held_until_its_client_leaves(relay_url: str, client: httpx.AsyncClient) -> None:
    headers = bearer("one-secret")
    with anyio.fail_after(10):
        async with client.stream("POST", relay_url + "/v1/chat/completions", json=chat("mock", stream=True), headers=headers) as first:
            assert first.status_code == 200
            chunks = first.aiter_raw()  # held: a generator left by a break is closed by the loop, and the response with it
            await chunks.__anext__()
            second = await client.post(relay_url + "/v1/chat/completions", json=chat("mock"), headers=headers)
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "max_concurrent_streams"
            await chunks.aclose()
        while (await client.post(relay_url + "/v1/generate", json={"prompt": "hi", "model": "mock", "max_tokens": 1},  # noqa: ASYNC110 (the relay's state)
                                 headers=headers)).status_code == 429:
            await anyio.sleep(0.02)  # the slot frees once the relay has seen the client go


async def test_a_resumable_stream_holds_a_slot_and_its_readers_do_not(relay_url: str, client: httpx.AsyncClient) -> None:
    headers = bearer("one-secret")
    created = await create(client, relay_url, {"prompt": "hi", "model": "mock", "max_tokens": 20}, headers=headers)
    refused = await client.post(relay_url + "/v1/streams", json={"prompt": "hi", "model": "mock"}, headers=headers)
    assert refused.status_code == 429
    readers = [await read(client, created["events_url"], stop_after=2) for _ in range(3)]
    assert all(response.status_code == 200 for response, _ in readers)
    _, events = await read(client, created["events_url"])
    assert events[-1].event == "done"
    with anyio.fail_after(10):
        while (await client.post(relay_url + "/v1/streams", json={"prompt": "hi", "model": "mock", "max_tokens": 1},  # noqa: ASYNC110 (the relay's state)
                                 headers=headers)).status_code == 429:
            await anyio.sleep(0.02)


async def test_a_key_may_use_only_its_models(relay_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(relay_url + "/v1/chat/completions", json=chat("mock-reasoning"), headers=bearer("models-secret"))
    assert response.status_code == 403
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("model_not_allowed", "$.model")


@pytest.fixture(scope="module")
def fast_relay_url(mock: tuple[MockModel, str]) -> Iterator[str]:
    with relay_server(mock[1], keys=KEYS[3:4], first_token_timeout=5, idle_timeout=5) as url:
        yield url


async def test_tokens_are_reserved_by_max_tokens_and_debited_with_the_usage(fast_relay_url: str, client: httpx.AsyncClient) -> None:
    relay_url = fast_relay_url
    headers = bearer("tokens-secret")
    too_big = await client.post(relay_url + "/v1/chat/completions", json=chat("mock", max_tokens=1_000), headers=headers)
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (429, "tokens_per_minute")
    used = 0
    while True:  # each answer's usage is debited: the budget runs out
        response = await client.post(relay_url + "/v1/chat/completions", json=chat("mock", max_tokens=30), headers=headers)
        if response.status_code == 429:
            break
        assert response.status_code == 200
        usage = response.json()["usage"]
        used += usage["total_tokens"]
        assert used <= 300
    assert response.json()["error"]["code"] == "tokens_per_minute"
    assert used + 30 > 300 - 30  # refused only near the budget (the estimate of the next prompt and its 30)


def test_a_key_is_named_once_and_given_one_way() -> None:
    with pytest.raises(SettingsError, match="keys"):
        load_settings({"keys": [{"name": "a", "key_sha256": sha("x"), "key_env": "X"}]}, environ={"X": "y"})
    with pytest.raises(SettingsError, match="another key is named"):
        load_settings({"keys": [{"name": "a", "key_sha256": sha("x")}, {"name": "a", "key_sha256": sha("y")}]}, environ={})
    with pytest.raises(SettingsError, match="TEAM_KEY is not set"):
        load_settings({"keys": [{"name": "a", "key_env": "TEAM_KEY"}]}, environ={})
    settings = load_settings(environ={"RELAY_KEYS": '[{"name": "a", "key_sha256": "' + sha("x") + '", "tokens_per_minute": 5}]'})
    assert settings.keys[0].tokens_per_minute == 5
