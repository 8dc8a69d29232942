"""Upstreams behind an egress proxy, with a private CA, asking for a client certificate, or speaking HTTP/2: over both transports.

Certificates are made here by ``trustme``: a CA of the test's own, a server certificate for
127.0.0.1 and a client one. The proxy is tests/proxy.py's ``ForwardProxy``; the proxy
variables are this process's environment, which the relay reads as it starts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel
import httpx
import pytest
import trustme

from app.mock import MockModel, mock_text
from app.runtime import Transports, build_upstreams
from app.streaming.upstreams.egress import TLS, Proxy, bypassed, proxy_for
from app.streaming.upstreams.http1 import Client, Origin
from app.streaming.upstreams.httpx_transport import HttpxTransport
from tests.asgi_servers import hypercorn_server
from tests.proxy import ForwardProxy
from tests.servers import TRANSPORTS, relay_server, relay_settings, serve_in_thread
from tests.sse import data, post_stream

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "SSL_CERT_FILE")
over_both = pytest.mark.parametrize("transport", TRANSPORTS)
ANSWER = "".join(mock_text("x", 4))


class Certs(NamedTuple):
    ca: str  # the CA's certificate
    server: str  # the server's key and certificate chain
    client: str  # the client's certificate and key, in one file
    client_cert: str  # the same, in two files
    client_key: str


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    paths = Certs(*(str(folder / name) for name in ("ca.pem", "server.pem", "client.pem", "client-cert.pem", "client-key.pem")))
    ca.cert_pem.write_to_path(paths.ca)
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(paths.server)
    client = ca.issue_cert("relay.test")
    client.private_key_and_cert_chain_pem.write_to_path(paths.client)
    client.cert_chain_pems[0].write_to_path(paths.client_cert)
    client.private_key_pem.write_to_path(paths.client_key)
    return paths


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the variables it means: none of the machine's own apply."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@contextlib.contextmanager
def tls_mock(certs: Certs, *, client_cert: bool = False, **options: Any) -> Iterator[tuple[MockModel, str]]:
    """The mock over TLS with the test CA's certificate; with ``client_cert``, one from the test CA is required."""
    model = MockModel(ttft=0.0, interval=0.0, tokens=16, **options)
    required = {"ssl_ca_certs": certs.ca, "ssl_cert_reqs": ssl.CERT_REQUIRED} if client_cert else {}
    with serve_in_thread(model, lifespan="off", ssl_certfile=certs.server, **required) as url:
        yield model, url.replace("http://", "https://") + "/v1"


@contextlib.contextmanager
def plain_mock() -> Iterator[tuple[MockModel, str]]:
    model = MockModel(ttft=0.0, interval=0.0, tokens=16)
    with serve_in_thread(model, lifespan="off") as url:
        yield model, url + "/v1"


@pytest.fixture(scope="module")
def served(certs: Certs) -> Iterator[tuple[MockModel, str]]:
    with tls_mock(certs) as mock:
        yield mock


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The test's own client to the relay: it reads no proxy variable."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=False) as http:
        yield http


async def ask(client: httpx.AsyncClient, url: str) -> tuple[str, str | None]:
    """A streamed answer of four tokens through the relay: its text, and its error's code and message (``None`` if it ended well)."""
    _, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "max_tokens": 4, "stream": True})
    text = "".join(data(event)["text"] for event in events if event.event == "token")
    last = data(events[-1])
    return text, None if events[-1].event == "done" else f"{last['code']}: {last['message']}"


def upstream(base_url: str, transport: str, **settings: Any) -> dict[str, Any]:
    return {"name": "up", "base_url": base_url, "transport": transport, **settings}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# NO_PROXY


@pytest.mark.parametrize(("host", "port", "no_proxy", "direct"), [
    ("api.example.com", 443, "*", True),
    ("api.example.com", 443, "example.com", True),
    ("api.example.com", 443, ".example.com", True),
    ("api.example.com", 443, "*.example.com", True),
    ("example.com", 443, ".example.com", True),
    ("notexample.com", 443, "example.com", False),
    ("api.example.com", 443, "other.org, API.Example.com", True),
    ("api.example.com", 443, "example.com:8443", False),
    ("api.example.com", 8443, "example.com:8443", True),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("10.1.2.3", 80, "10.1.2.3", True),
    ("11.1.2.3", 80, "10.0.0.0/8", False),
    ("::1", 80, "::1", True),
    ("::1", 8080, "[::1]:8080", True),
    ("::1", 8081, "[::1]:8080", False),
    ("127.0.0.1", 80, "", False),
    ("127.0.0.1", 80, " , ", False),
])
def test_no_proxy_names_hosts_domains_networks_and_ports(host: str, port: int, no_proxy: str, direct: bool) -> None:
    assert bypassed(host, port, no_proxy) is direct


def test_the_proxy_is_chosen_by_the_upstreams_scheme_and_the_lowercase_name_wins() -> None:
    environ = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "HTTP_PROXY": "plain:3128", "NO_PROXY": "skip.example"}
    secure, plain = proxy_for("https", "a.example", 443, environ), proxy_for("http", "a.example", 80, environ)
    assert secure is not None and (secure.host, secure.port) == ("lower", 2)
    assert plain is not None and (plain.host, plain.port, plain.url) == ("plain", 3128, "http://plain:3128")
    assert proxy_for("https", "skip.example", 443, environ) is None
    assert proxy_for("https", "a.example", 443, {}) is None


def test_a_proxy_urls_userinfo_is_its_authorization_and_never_in_its_url() -> None:
    proxy = Proxy("http://us%40er:p%3Ass@proxy.internal:8080")
    assert proxy.authorization == basic("us@er", "p:ss")
    assert proxy.url == "http://proxy.internal:8080"


@pytest.mark.parametrize("url", ["socks5://127.0.0.1:1080", "https://proxy.internal:443"])
async def test_a_proxy_the_relay_cannot_speak_stops_it_from_starting(url: str) -> None:
    settings = relay_settings(None, upstreams=[upstream("https://api.example.com/v1", "http1")])
    with pytest.raises(ValueError, match=r"upstream up: the proxy .* is not an http:// proxy URL"):
        build_upstreams(settings, Transports(Client(), HttpxTransport(anyio.create_task_group())), {}, network={"HTTPS_PROXY": url})


# Proxies, end to end


@over_both
async def test_an_https_upstream_is_reached_through_a_connect_tunnel_with_the_proxys_credentials(
    transport: str, certs: Certs, served: tuple[MockModel, str], client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, base = served
    proxy = ForwardProxy(authorization=basic("relay", "s3cret"))
    with proxy.serving() as proxy_url:
        monkeypatch.setenv("HTTPS_PROXY", proxy_url.replace("http://", "http://relay:s3cret@"))
        with relay_server(None, upstreams=[upstream(base, transport, ca_file=certs.ca)], default_model="mock") as url:
            assert await ask(client, url) == (ANSWER, None)
    target = base.removeprefix("https://").removesuffix("/v1")
    assert proxy.requests[0] == (f"CONNECT {target}", basic("relay", "s3cret"))


@over_both
async def test_an_http_upstream_is_asked_through_the_proxy_in_absolute_form(
    transport: str, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = ForwardProxy(authorization=basic("relay", "pw"))
    with plain_mock() as (_, base), proxy.serving() as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url.replace("http://", "http://relay:pw@"))
        with relay_server(None, upstreams=[upstream(base, transport)], default_model="mock") as url:
            assert await ask(client, url) == (ANSWER, None)
    assert proxy.requests[0] == (f"POST {base}/chat/completions", basic("relay", "pw"))


@over_both
async def test_an_upstream_named_in_no_proxy_is_reached_directly(
    transport: str, certs: Certs, served: tuple[MockModel, str], client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, base = served
    proxy = ForwardProxy()
    with proxy.serving() as proxy_url, plain_mock() as (_, plain):
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("no_proxy", "localhost,127.0.0.0/8")
        upstreams = [upstream(base, transport, ca_file=certs.ca), upstream(plain, transport) | {"name": "plain"}]
        with relay_server(None, upstreams=upstreams, default_model="mock") as url:
            assert await ask(client, url) == (ANSWER, None)
            assert await ask(client, url) == (ANSWER, None)
    assert proxy.requests == []


@over_both
async def test_a_proxy_that_refuses_the_tunnel_is_a_connect_error(
    transport: str, certs: Certs, served: tuple[MockModel, str], client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, base = served
    proxy = ForwardProxy(authorization=basic("relay", "right"))
    with proxy.serving() as proxy_url:
        monkeypatch.setenv("HTTPS_PROXY", proxy_url.replace("http://", "http://relay:wrong@"))
        with relay_server(None, upstreams=[upstream(base, transport, ca_file=certs.ca)], default_model="mock") as url:
            text, error = await ask(client, url)
    assert text == "" and error is not None and error.startswith("upstream_unreachable: ")
    assert "407" in error
    assert len(proxy.requests) == 1


# TLS


@over_both
async def test_a_private_ca_is_trusted_from_ca_file_or_ssl_cert_file_and_not_otherwise(
    transport: str, certs: Certs, served: tuple[MockModel, str], client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, base = served
    with relay_server(None, upstreams=[upstream(base, transport)], default_model="mock") as url:
        untrusted = await ask(client, url)
    with relay_server(None, upstreams=[upstream(base, transport, ca_file=certs.ca)], default_model="mock") as url:
        from_ca_file = await ask(client, url)
    monkeypatch.setenv("SSL_CERT_FILE", certs.ca)
    with relay_server(None, upstreams=[upstream(base, transport)], default_model="mock") as url:
        from_environment = await ask(client, url)
    assert untrusted[0] == "" and untrusted[1] is not None and untrusted[1].startswith("upstream_unreachable: ")
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted[1]
    assert from_ca_file == from_environment == (ANSWER, None)


@over_both
@pytest.mark.parametrize("files", ["one", "two"])
async def test_a_server_that_requires_a_client_certificate_gets_the_configured_one(
    transport: str, files: str, certs: Certs, client: httpx.AsyncClient,
) -> None:
    identity = {"client_cert": certs.client} if files == "one" else {"client_cert": certs.client_cert, "client_key": certs.client_key}
    with tls_mock(certs, client_cert=True) as (model, base):
        with relay_server(None, upstreams=[upstream(base, transport, ca_file=certs.ca)], default_model="mock") as url:
            anonymous = await ask(client, url)
        with relay_server(None, upstreams=[upstream(base, transport, ca_file=certs.ca, **identity)], default_model="mock") as url:
            presented = await ask(client, url)
    assert anonymous[0] == "" and anonymous[1] is not None
    assert anonymous[1].split(":")[0] in ("upstream_unreachable", "upstream_disconnected")
    assert presented == (ANSWER, None)
    assert model.requests == 1


async def test_connections_that_differ_in_proxy_or_tls_are_never_pooled_together(certs: Certs) -> None:
    """The fast client keys its pool by everything that makes a connection: by the origin alone it would lend one to the other."""
    plain, identified = TLS(certs.ca), TLS(certs.ca, certs.client)
    assert Origin("https://127.0.0.1:9/v1").key != Origin("https://127.0.0.1:9/v1", Proxy("http://127.0.0.1:8")).key
    http1 = Client()
    with tls_mock(certs) as (model, base):
        for sent, origin in enumerate([Origin(base, tls=plain), Origin(base, tls=plain), Origin(base, tls=identified), Origin(base, tls=identified)]):
            handler = _Ended()
            exchange = await http1.request(origin, "POST", "/chat/completions", [("Content-Type", "application/json")],
                                           b'{"model": "mock", "messages": [], "stream": true}', handler, connect_timeout=5, head_timeout=5)
            with anyio.fail_after(5):
                await handler.ended.wait()
            exchange.close()
            await anyio.to_thread.run_sync(model.wait_for_completed, sent + 1, 5)  # the body's end, so the connection is free
        await http1.aclose()
        for _ in range(5):  # the aborts take effect on this loop's next passes: before the server, waiting for them, stops
            await anyio.lowlevel.checkpoint()
    peers = list(model.peers)
    assert len(peers) == 4 and peers[0] == peers[1] and peers[2] == peers[3] and peers[1] != peers[2]


class _Ended:
    def __init__(self) -> None:
        self.ended = anyio.Event()

    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        assert status == 200

    def on_body(self, data: bytes) -> None:
        pass

    def on_end(self) -> None:
        self.ended.set()

    def on_lost(self, exc: Exception) -> None:
        raise AssertionError(f"lost: {exc}")


# HTTP/2


class Versions:
    """An ASGI app in front of ``app`` that records each request's HTTP version (and answers the lifespan itself)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.seen.append(scope["http_version"])
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def h2_mock(certs: Certs) -> Iterator[tuple[MockModel, Versions, str]]:
    """The mock under hypercorn, over TLS, HTTP/2 offered by ALPN; slow enough to leave in the middle."""
    model = MockModel(ttft=0.0, interval=0.02, tokens=1000)
    versions = Versions(model)
    with hypercorn_server(versions, certfile=certs.server, keyfile=certs.server) as url:
        yield model, versions, url + "/v1"


async def test_http2_through_httpx_streams_and_closes_the_stream_when_the_client_leaves(
    h2_mock: tuple[MockModel, Versions, str], certs: Certs, client: httpx.AsyncClient,
) -> None:
    model, versions, base = h2_mock
    settings = upstream(base, "httpx", ca_file=certs.ca, http2=True)
    with relay_server(None, upstreams=[settings], default_model="mock", max_tokens_limit=1000) as url:
        assert await ask(client, url) == (ANSWER, None)
        with anyio.fail_after(10):
            async with client.stream("POST", url + "/v1/generate", json={"prompt": "x", "stream": True, "max_tokens": 1000},
                                     headers={"x-request-id": "h2-leaves"}) as response:
                seen = 0
                async for piece in response.aiter_raw():
                    seen += piece.count(b"event: token")
                    if seen >= 3:
                        break
            record = await anyio.to_thread.run_sync(model.wait_for_disconnect, "h2-leaves", 5)
            assert await ask(client, url) == (ANSWER, None), "the connection serves the next stream after a reset one"
    assert versions.seen == ["2", "2", "2"]
    assert 3 <= record["tokens_sent"] < 1000


class SlowHead:
    """An ASGI app that answers a request's head only after ``delay``, then streams until the client resets the stream."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.arrived = threading.Event()
        self.reset = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        self.arrived.set()
        await asyncio.sleep(self.delay)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        gone = asyncio.ensure_future(receive())
        while not gone.done():
            await send({"type": "http.response.body", "body": b": tick\n\n", "more_body": True})
            await asyncio.wait([gone], timeout=0.01)
        if gone.result()["type"] == "http.disconnect":
            self.reset.set()


async def test_an_http2_request_left_before_its_head_has_its_stream_reset_once_the_head_arrives(certs: Certs) -> None:
    """httpcore, cancelled while it waits for a head, would leave the stream open on the server for good."""
    app = SlowHead(delay=0.3)
    with hypercorn_server(app, certfile=certs.server, keyfile=certs.server) as base:
        origin = Origin(base, tls=TLS(certs.ca, alpn=("h2", "http/1.1")))
        async with anyio.create_task_group() as tg:
            transport = HttpxTransport(tg)
            handler = _Ended()
            with anyio.move_on_after(10) as waited:
                async with anyio.create_task_group() as requesting:
                    requesting.start_soon(functools.partial(
                        transport.request, origin, "POST", "/", [], b"{}", handler, connect_timeout=5, head_timeout=5, http2=True))
                    await anyio.to_thread.run_sync(app.arrived.wait, 5)
                    requesting.cancel_scope.cancel()  # the client left: the relay abandons the request before its head
                reset = await anyio.to_thread.run_sync(app.reset.wait, 5)
            await transport.aclose()
            tg.cancel_scope.cancel()
    assert not waited.cancelled_caught
    assert reset, "the server's stream was never reset"
    assert not handler.ended.is_set(), "an abandoned request's handler heard from it"
