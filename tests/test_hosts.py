"""The Host header: only the hosts the relay is configured for are answered, on every route, and
the stream URLs it hands out come from its public URL when one is set."""

from __future__ import annotations

import json
import sys

import anyio
import httpx

from app.hosts import AllowedHosts
from app.mock import MockModel
from app.settings import load_settings
from app.types import Message, Receive, Scope, Send
from tests.rawhttp import Response, open_post, read_until
from tests.servers import relay_server
from tests.streams import create

# Every route, streaming or not.
ROUTES = [
    ("POST", "/v1/chat/completions", {"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "stream": True}),
    ("POST", "/v1/chat/completions", {"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}),
    ("POST", "/v1/generate", {"prompt": "x", "max_tokens": 1, "stream": True}),
    ("POST", "/v1/generate", {"prompt": "x", "max_tokens": 1}),
    ("POST", "/v1/streams", {"prompt": "x", "max_tokens": 1}),
    ("GET", "/v1/streams/st_x/events", None),
    ("DELETE", "/v1/streams/st_x", None),
    ("GET", "/", None),
    ("GET", "/static/chat.js", None),
    ("GET", "/nowhere", None),
    ("OPTIONS", "/v1/streams", None),
]


async def _statuses(client: httpx.AsyncClient, relay_url: str, host: str | None) -> list[int]:
    headers = {"origin": "https://chat.example.com", "access-control-request-method": "POST"}
    if host is not None:
        headers["host"] = host
    statuses = []
    for method, path, body in ROUTES:
        response = await client.request(method, relay_url + path, json=body, headers=headers)
        assert response.status_code != 400 or response.json()["error"]["code"] == "invalid_host", (path, response.text)
        statuses.append(response.status_code)
    return statuses


async def test_a_host_not_allowed_gets_400_on_every_route(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with relay_server(mock[1], models=("mock",), cors_origins=("https://chat.example.com",)) as relay_url:
        port = relay_url.rsplit(":", 1)[1]
        for host in ["evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", "localhost@evil.example", "[::2]", ""]:
            assert await _statuses(client, relay_url, host) == [400] * len(ROUTES), host
        # The defaults: loopback's names and addresses, with any port.
        for host in [None, f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "127.0.0.1"]:
            assert 400 not in await _statuses(client, relay_url, host), host


async def test_the_health_routes_answer_whatever_the_host(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    """A platform's probes and a Prometheus scraper reach the process by an address nobody lists: they must not take it out of service."""
    with relay_server(mock[1], models=("mock",)) as relay_url:
        for host in ["10.1.2.3:8000", "evil.example", ""]:
            assert (await client.get(relay_url + "/healthz", headers={"host": host})).status_code == 200, host
            assert (await client.get(relay_url + "/readyz", headers={"host": host})).status_code == 200, host
            assert (await client.get(relay_url + "/metrics", headers={"host": host})).status_code == 200, host
        refused = await client.get(relay_url + "/v1/streams/st_x/events", headers={"host": "10.1.2.3:8000"})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "invalid_host"
        assert "RELAY_ALLOWED_HOSTS" in refused.json()["error"]["message"]


async def test_the_configured_hosts_and_wildcards_are_answered(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with relay_server(mock[1], models=("mock",), allowed_hosts=("relay.example.com", "*.relay.example.net")) as relay_url:
        for host in ["relay.example.com", "Relay.Example.Com:443", "a.relay.example.net", "a.b.relay.example.net"]:
            assert 400 not in await _statuses(client, relay_url, host), host
        for host in ["127.0.0.1", "localhost", "relay.example.net", "example.com", "relay.example.com.evil"]:
            assert await _statuses(client, relay_url, host) == [400] * len(ROUTES), host
    with relay_server(mock[1], models=("mock",), allowed_hosts=("*",)) as relay_url:
        assert 400 not in await _statuses(client, relay_url, "anything.example")


async def test_stream_urls_come_from_the_public_url_whatever_the_host(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with relay_server(mock[1], models=("mock",), public_url="https://relay.example.com/llm/") as relay_url:
        for host in [None, "localhost", "relay.example.com"]:
            created = await create(client, relay_url, {"prompt": "x", "max_tokens": 1}, headers={"host": host} if host else {})
            assert created["events_url"].startswith(f"https://relay.example.com/llm/v1/streams/{created['id']}/events?token="), host
            assert created["cancel_url"].startswith(f"https://relay.example.com/llm/v1/streams/{created['id']}?token="), host
        # The public URL's host is answered as well as loopback's, other hosts are not.
        assert (await client.post(relay_url + "/v1/streams", json={"prompt": "x"}, headers={"host": "relay.example.org"})).status_code == 400
        # The URL works once its origin is put back to the relay's, as the proxy in front would.
        path = created["events_url"].removeprefix("https://relay.example.com/llm")
        response = await client.get(relay_url + path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")


async def test_without_a_public_url_stream_urls_come_from_an_allowed_host(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    with relay_server(mock[1], models=("mock",), allowed_hosts=("relay.example.com",)) as relay_url:
        created = await create(client, relay_url, {"prompt": "x", "max_tokens": 1}, headers={"host": "relay.example.com:8443"})
        assert created["events_url"].startswith(f"http://relay.example.com:8443/v1/streams/{created['id']}/events?token=")


def test_the_default_hosts_are_loopbacks_the_bound_address_and_the_public_urls() -> None:
    assert load_settings(environ={}).trusted_hosts() == ("127.0.0.1", "localhost", "[::1]")
    settings = load_settings({"host": "10.0.0.5"}, environ={"RELAY_PUBLIC_URL": "https://Relay.Example.com:8443/x"})
    assert settings.trusted_hosts() == ("127.0.0.1", "localhost", "[::1]", "10.0.0.5", "relay.example.com")
    assert load_settings({"host": "::"}, environ={}).trusted_hosts() == ("127.0.0.1", "localhost", "[::1]")
    assert load_settings({"host": "fd00::1"}, environ={}).trusted_hosts()[-1] == "[fd00::1]"
    settings = load_settings(environ={"RELAY_ALLOWED_HOSTS": "a.example, *.b.example", "RELAY_PUBLIC_URL": "https://c.example"})
    assert settings.trusted_hosts() == ("a.example", "*.b.example", "c.example")
    assert load_settings(environ={"RELAY_ALLOWED_HOSTS": "*"}).trusted_hosts() == ("*",)


async def test_a_request_with_two_host_headers_gets_400(mock: tuple[MockModel, str]) -> None:
    """RFC 9112 §3.2: which of the two a proxy or a cache in front reads is anyone's guess, so neither is believed."""
    with relay_server(mock[1], models=("mock",)) as relay_url:
        for second in ["evil.example", "localhost"]:
            stream = await open_post(relay_url, "/v1/streams", {"prompt": "x", "max_tokens": 1}, headers=f"Host: {second}\r\n")
            response = Response()
            with anyio.fail_after(5):
                async with stream:
                    await read_until(stream, response)
            assert response.status == 400, second
            assert json.loads(response.body)["error"]["code"] == "invalid_host"


async def test_a_port_of_other_than_ascii_digits_gets_400(mock: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    """``"²".isdigit()`` is true: such a port would be handed out in the stream URLs."""
    with relay_server(mock[1], models=("mock",)) as relay_url:
        for host in [b"localhost:\xb2", b"127.0.0.1:8\xb9"]:
            response = await client.post(relay_url + "/v1/streams", json={"prompt": "x", "max_tokens": 1}, headers={"host": host})  # type: ignore[dict-item]
            assert response.status_code == 400, host
            assert response.json()["error"]["code"] == "invalid_host"


async def test_an_allowed_request_runs_under_a_frame_that_keeps_nothing_of_the_check() -> None:
    """That frame lasts as long as the request (a stream's minutes): it holds the request's arguments only."""
    held: list[set[str]] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        held.append(set(sys._getframe(1).f_locals))

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        raise AssertionError(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/v1/generate", "headers": [(b"host", b"relay.example:8000")]}
    await AllowedHosts(endpoint, ["relay.example"])(scope, receive, send)
    assert held == [{"self", "scope", "receive", "send"}]
