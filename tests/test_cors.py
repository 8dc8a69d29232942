"""CORS: browser pages on other origins may call the API only when their origin is configured."""

from __future__ import annotations

import httpx

from app.mock import MockModel
from tests.servers import relay_server
from tests.sse import post_stream

PAGE = "https://chat.example.com"


def _preflight(method: str, headers: str = "content-type") -> dict[str, str]:
    return {"origin": PAGE, "access-control-request-method": method, "access-control-request-headers": headers}


async def test_a_configured_origin_may_post_read_and_cancel_with_credentials(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with relay_server(mock[1], models=("mock",), cors_origins=(PAGE,)) as relay_url:
        for path, method, headers in [("/v1/streams", "POST", "content-type,authorization"), ("/v1/streams/st_x", "DELETE", "authorization"),
                                      ("/v1/chat/completions", "POST", "content-type,x-api-key")]:
            response = await client.options(relay_url + path, headers=_preflight(method, headers))
            assert response.status_code == 200, (path, response.text)
            assert response.headers["access-control-allow-origin"] == PAGE
            assert response.headers["access-control-allow-credentials"] == "true"
            assert method in response.headers["access-control-allow-methods"]
        created = await client.post(relay_url + "/v1/streams", json={"prompt": "x", "max_tokens": 2}, headers={"origin": PAGE})
        assert created.headers["access-control-allow-origin"] == PAGE
        assert "x-request-id" in created.headers["access-control-expose-headers"]
        events = await client.get(created.json()["events_url"], headers={"origin": PAGE})
        assert events.headers["access-control-allow-origin"] == PAGE
        # The streaming routes answer with the same headers.
        response, _ = await post_stream(client, relay_url + "/v1/generate", {"prompt": "x", "max_tokens": 2, "stream": True}, headers={"origin": PAGE})
        assert response.headers["access-control-allow-origin"] == PAGE


async def test_other_origins_get_no_cors_headers(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with relay_server(mock[1], models=("mock",), cors_origins=(PAGE,)) as relay_url:
        response = await client.options(relay_url + "/v1/streams", headers={**_preflight("POST"), "origin": "https://evil.example"})
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
        response = await client.post(relay_url + "/v1/generate", json={"prompt": "x", "max_tokens": 1}, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers


async def test_any_origin_is_allowed_without_credentials(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with relay_server(mock[1], models=("mock",), cors_origins=("*",)) as relay_url:
        response = await client.options(relay_url + "/v1/streams", headers=_preflight("POST"))
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers


async def test_without_configured_origins_there_are_no_cors_headers(relay_url: str, client: httpx.AsyncClient) -> None:
    response = await client.post(relay_url + "/v1/generate", json={"prompt": "x", "max_tokens": 1}, headers={"origin": PAGE})
    assert response.status_code == 200
    assert not any(name.startswith("access-control-") for name in response.headers)
