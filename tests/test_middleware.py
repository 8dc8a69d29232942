"""API keys: with RELAY_API_KEYS set, every /v1 route needs one, by Bearer or X-API-Key."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.mock import MockModel
from app.ops.keys import Keys
from app.settings import load_settings
from tests.servers import relay_server


@pytest.fixture(scope="module")
def guarded(mock: tuple[MockModel, str]) -> Iterator[str]:
    with relay_server(mock[1], api_keys=("key-one", "key-two"), models=("mock",)) as url:
        yield url


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"x-api-key": "key-one-but-longer"}, {"authorization": "Basic key-one"}])
async def test_missing_or_wrong_keys_get_401(guarded: str, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.post(guarded + "/v1/generate", json={"prompt": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [{"authorization": "Bearer key-one"}, {"authorization": "bearer key-two"}, {"x-api-key": "key-two"}])
async def test_a_valid_key_by_either_header_is_accepted(guarded: str, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.post(guarded + "/v1/generate", json={"prompt": "x", "max_tokens": 2}, headers=headers)
    assert response.status_code == 200


async def test_health_checks_need_no_key(guarded: str, client: httpx.AsyncClient) -> None:
    assert (await client.get(guarded + "/healthz")).status_code == 200
    assert (await client.get(guarded + "/readyz")).json()["status"] == "ready"


async def test_an_open_relay_warns_once_at_start_up(mock: tuple[MockModel, str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="token_relay"), relay_server(mock[1]):
        pass
    warnings = [r.getMessage() for r in caplog.records if "RELAY_API_KEYS is not set" in r.getMessage()]
    assert len(warnings) == 1


def _scope(headers: dict[str, str]) -> dict[str, object]:
    return {"type": "http", "headers": [(name.encode(), value.encode()) for name, value in headers.items()]}


def _keys(*secrets: str) -> Keys:
    return Keys(load_settings({"api_keys": list(secrets)}, environ={}), {})


def test_the_key_of_a_request_is_known_by_a_name_that_is_not_the_key() -> None:
    keys = _keys("key-one", "key-two", "key-one")
    one = keys.identify(_scope({"authorization": "Bearer key-one"}))
    two = keys.identify(_scope({"x-api-key": "key-two"}))
    assert one is not None and two is not None and one.name != two.name
    assert "key-one" not in one.name
    # The same key has the same name in any process, whatever the order of the keys.
    assert _keys("key-two", "key-one").identify(_scope({"x-api-key": "key-one"})) == one
    for headers in [{}, {"authorization": "Bearer key-three"}, {"authorization": "Basic key-one"}, {"x-api-key": "key-one "}]:
        assert keys.identify(_scope(headers)) is None
    assert not _keys()
