"""The service as users run it: `python -m app serve` in its own process, and a graceful SIGTERM."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest
import uvicorn
from uvicorn.lifespan.on import LifespanOn

from app.main import create_app
from app.mock import MockModel, mock_text
from app.server import YOUNG_THRESHOLD, RelayConfig
from tests.processes import Start, relay_processes
from tests.rawhttp import Response, open_request, read_until
from tests.servers import mock_server, relay_settings, serve_in_thread
from tests.sse import read_events
from tests.streams import decodes_to, misspelled_token_queries


@pytest.fixture
def serve() -> Iterator[Start]:
    with relay_processes() as start:
        yield start


async def test_serve_with_no_upstream_relays_the_embedded_mock(serve, client: httpx.AsyncClient) -> None:  # type: ignore[no-untyped-def]
    process, url = serve(RELAY_MOCK_TTFT="0", RELAY_MOCK_INTERVAL="0")
    response = await client.post(url + "/v1/chat/completions", json={"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert response.json()["choices"][0]["message"]["content"] == "".join(mock_text("hi", 3))
    process.send_signal(signal.SIGTERM)
    await anyio.to_thread.run_sync(process.wait, 10)
    log = process.stdout.read().decode()
    # The embedded mock's server must not take over the process's logging.
    expected = ("WARNING:  RELAY_API_KEYS is not set", "INFO:     upstream default: relaying to http://127.0.0.1:", "Application startup complete")
    for line in (*expected, "Finished server process"):
        assert line in log


async def test_serve_with_several_workers(serve, client: httpx.AsyncClient, redis_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    _, url = serve("--workers", "2", RELAY_MOCK_TTFT="0", RELAY_MOCK_INTERVAL="0", **redis_env)
    for _ in range(4):
        response = await client.post(url + "/v1/generate", json={"prompt": "hi", "max_tokens": 2})
        assert response.json()["output"] == "".join(mock_text("hi", 2))


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_ends_every_stream_with_shutting_down_and_closes_the_upstreams(  # type: ignore[no-untyped-def]
    serve, workers: int, redis_env: dict[str, str],
) -> None:
    shared = redis_env if workers > 1 else {}  # several workers need Redis for their resumable streams
    with mock_server(ttft=0.0, interval=0.05, tokens=10_000) as (model, upstream):
        process, url = serve("--upstream", upstream, "--workers", str(workers), RELAY_DRAIN_TIMEOUT="5", RELAY_MAX_TOKENS_LIMIT="10000", **shared)
        # A resumable stream's POST and GET on one connection, so on one worker.
        async with httpx.AsyncClient(timeout=10) as client, httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=1)) as one, \
                anyio.create_task_group() as tg:
            results: dict[str, list] = {}  # type: ignore[type-arg]

            async def read(name: str, path: str, body: dict) -> None:  # type: ignore[type-arg]
                async with client.stream("POST", url + path, json=body, headers={"x-request-id": name}) as response:
                    results[name] = await read_events(response)

            async def read_resumable() -> None:
                created = await one.post(url + "/v1/streams", json={"prompt": "x", "model": "m", "max_tokens": 10_000},
                                         headers={"x-request-id": "resumable"})
                async with one.stream("GET", created.json()["events_url"]) as response:
                    results["resumable"] = await read_events(response)

            tg.start_soon(read, "native", "/v1/generate", {"prompt": "x", "model": "m", "stream": True, "max_tokens": 10_000})
            tg.start_soon(read, "openai", "/v1/chat/completions",
                          {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 10_000})
            tg.start_soon(read_resumable)
            with anyio.fail_after(10):
                await anyio.to_thread.run_sync(_wait_for_tokens, model, 3)
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                await anyio.to_thread.run_sync(process.wait, 10)
        elapsed = time.monotonic() - started
        native, openai = results["native"], results["openai"]
        assert native[-1].event == "error" and json.loads(native[-1].data)["code"] == "shutting_down"
        assert openai[-1].data == "[DONE]" and json.loads(openai[-2].data)["error"]["code"] == "shutting_down"
        assert [e.event for e in native].count("error") == 1
        resumable = results["resumable"]
        assert resumable[-1].event == "error" and json.loads(resumable[-1].data)["code"] == "shutting_down"
        # uvicorn finishes cleanly, then re-raises the SIGTERM it caught, so the exit status is the conventional one;
        # with workers, each does, and their parent, having stopped them, exits 0.
        assert process.returncode == (-signal.SIGTERM if workers == 1 else 0)
        assert process.stdout is not None and process.stdout.read().count(b"Finished server process") == workers
        assert elapsed < 5
        for name in ("native", "openai", "resumable"):
            assert model.wait_for_disconnect(name, 5)["tokens_sent"] < 10_000


def _wait_for_tokens(model: MockModel, streams: int) -> None:
    # The mock's only signal of progress is its request count; give the streams a moment to produce.
    deadline = time.monotonic() + 10
    while model.requests < streams and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)


async def test_sigint_shuts_down_cleanly_without_a_traceback(serve) -> None:  # type: ignore[no-untyped-def]
    process, _ = serve(RELAY_MOCK_TTFT="0")
    process.send_signal(signal.SIGINT)
    await anyio.to_thread.run_sync(process.wait, 10)
    log = process.stdout.read().decode()
    assert "Finished server process" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log


async def test_no_log_line_shows_a_stream_token_whatever_its_spelling(serve, client: httpx.AsyncClient) -> None:  # type: ignore[no-untyped-def]
    """The access log (every spelling, in the query or the path) and the relay's own log (a token as a request id)."""
    with mock_server(ttft=0.0, interval=0.0) as (_, upstream):
        # The first upstream always fails, so the relay logs each request's id as it fails over.
        upstreams = [{"name": "failing", "base_url": upstream.removesuffix("/v1") + "/mock-fault-http-500/v1"}, {"name": "good", "base_url": upstream}]
        process, url = serve(RELAY_ACCESS_LOG="true", PYTHONUNBUFFERED="1", RELAY_UPSTREAMS=json.dumps(upstreams),
                             RELAY_ROUTES=json.dumps({"mock": ["failing", "good"]}), RELAY_DEFAULT_MODEL="mock")
        created = (await client.post(url + "/v1/streams", json={"prompt": "x", "max_tokens": 2})).json()
        async with client.stream("GET", created["events_url"]) as response:
            await read_events(response)
        await client.delete(created["cancel_url"])
        token = created["events_url"].split("token=")[1]
        events = f"/v1/streams/{created['id']}/events"
        queries = misspelled_token_queries(token)
        requests = [f"GET {events}?{query}" for query in queries]
        requests += [f"GET /v1/streams/{token}/events", f"DELETE /v1/streams/{created['id']}?x=1;token={token}"]
        for request in requests:
            with anyio.fail_after(10):
                async with await open_request(url, request) as connection:
                    await read_until(connection, Response())
        response = await client.post(url + "/v1/generate", json={"prompt": "x", "max_tokens": 2}, headers={"x-request-id": token})
        assert response.headers["x-request-id"] == token
        process.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(process.wait, 10)
    log = process.stdout.read().decode()
    assert '"POST /v1/streams HTTP/1.1" 201' in log
    assert f'"GET {events}?token=[redacted] HTTP/1.1" 200' in log
    assert f'"DELETE /v1/streams/{created["id"]}?token=[redacted] HTTP/1.1" 200' in log
    assert f'"GET {events}?%74oken=[redacted] HTTP/1.1" 401' in log
    assert f'"GET {events}?x=1;token=[redacted] HTTP/1.1" 401' in log
    assert log.count(f'"GET {events}?') == len(queries) + 1  # each was logged, and so was the read of events_url
    assert '"GET /v1/streams/[redacted]/events HTTP/1.1" 401' in log
    assert "request [redacted]: attempt 1 on upstream failing failed" in log
    for url_with_token in (created["events_url"], created["cancel_url"]):
        assert not decodes_to(log, url_with_token.split("token=")[1].split(".")[1])


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_every_access_and_request_line_is_written_whole_before_the_relay_exits(serve, client: httpx.AsyncClient, log_format: str) -> None:  # type: ignore[no-untyped-def]
    """A request's lines wait for the next batch; SIGTERM right after the last request loses none of them."""
    process, url = serve(RELAY_ACCESS_LOG="true", RELAY_LOG_FORMAT=log_format, RELAY_MOCK_TTFT="0", RELAY_MOCK_INTERVAL="0")
    requests = 20
    for _ in range(requests):
        response = await client.post(url + "/v1/generate", json={"prompt": "hi", "max_tokens": 2})
        assert response.status_code == 200
    process.send_signal(signal.SIGTERM)
    await anyio.to_thread.run_sync(process.wait, 10)
    lines = process.stdout.read().decode().splitlines()
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # every line whole, one object each
        access = [r for r in records if r["logger"] == "uvicorn.access" and r["path"] == "/v1/generate"]
        assert {(r["method"], r["http_version"], r["status"], r["level"]) for r in access} == {("POST", "1.1", 200, "info")}
        ends = [r for r in records if r["logger"] == "token_relay.requests"]
        assert {(r["outcome"], r["completion_tokens"]) for r in ends} == {("done", 2)}
        assert records[-1]["message"].startswith("Finished server process")
    else:
        access = [line for line in lines if re.fullmatch(r'INFO:     127\.0\.0\.1:\d+ - "POST /v1/generate HTTP/1\.1" 200 OK', line)]
        ends = [line for line in lines if re.fullmatch(r"INFO:     request \S+: .* outcome=done .*completion_tokens=2 .*status=200", line)]
        assert lines[-1].startswith("INFO:     Finished server process")
    assert len(access) == len(ends) == requests


async def test_x_forwarded_proto_is_trusted_only_from_the_forwarded_allow_ips(serve) -> None:  # type: ignore[no-untyped-def]
    """Behind a TLS proxy the stream URLs are https://, but only a listed proxy may say so."""
    _, url = serve(RELAY_FORWARDED_ALLOW_IPS="127.0.0.2", FORWARDED_ALLOW_IPS="127.0.0.1")
    schemes = {}
    for source in ("127.0.0.2", "127.0.0.1"):  # the proxy, and a client that connects directly
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=source), timeout=10) as client:
            response = await client.post(url + "/v1/streams", json={"prompt": "x", "max_tokens": 1}, headers={"x-forwarded-proto": "https"})
            schemes[source] = response.json()["events_url"].partition("://")[0]
    assert schemes == {"127.0.0.2": "https", "127.0.0.1": "http"}


async def test_without_a_relay_setting_uvicorns_forwarded_allow_ips_is_honoured(serve) -> None:  # type: ignore[no-untyped-def]
    _, url = serve(FORWARDED_ALLOW_IPS="127.0.0.2")
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.1"), timeout=10) as client:
        response = await client.post(url + "/v1/streams", json={"prompt": "x", "max_tokens": 1}, headers={"x-forwarded-proto": "https"})
    assert response.json()["events_url"].startswith("http://")


async def test_serve_raises_its_open_files_limit_and_warns_when_it_is_still_too_low(serve) -> None:  # type: ignore[no-untyped-def]
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 1024))

    process, _ = serve(RELAY_MAX_CONCURRENT_REQUESTS="1000", preexec_fn=low_limit)
    limits = await anyio.Path(f"/proc/{process.pid}/limits").read_text()
    assert re.search(r"Max open files\s+1024\s+1024", limits)
    process.send_signal(signal.SIGTERM)
    await anyio.to_thread.run_sync(process.wait, 10)
    log = process.stdout.read().decode()
    assert "the open-files limit (1024) is below the 2256 that RELAY_MAX_CONCURRENT_REQUESTS=1000 needs" in log
    assert "past about 384 streams" in log


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector's settings put back as they were, whatever the test did to them."""
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


@pytest.mark.usefixtures("collector")
def test_the_app_leaves_the_collector_to_the_runner(mock: tuple[MockModel, str]) -> None:
    """Process-wide settings are the runner's: create_app and its lifespan change none of them."""
    gc.unfreeze()
    threshold = gc.get_threshold()
    with serve_in_thread(create_app(relay_settings(mock[1]))):  # the app alone, under plain uvicorn
        pass
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, 0)


async def test_the_app_leaves_the_signal_handlers_to_the_runner(mock: tuple[MockModel, str]) -> None:
    """create_app's lifespan, run in the main thread, installs no signal handler: ending streams on SIGTERM is the runner's."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    config = uvicorn.Config(create_app(relay_settings(mock[1])), log_config=None)
    config.load()
    lifespan = LifespanOn(config)
    with anyio.fail_after(10):
        await lifespan.startup()
        try:
            assert not lifespan.should_exit
            assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
            assert callable(lifespan.state["shut_down"])  # the hook the runner calls instead
        finally:
            await lifespan.shutdown()
    assert not lifespan.should_exit and {sig: signal.getsignal(sig) for sig in handlers} == handlers


@pytest.mark.usefixtures("collector")
def test_the_runner_freezes_what_start_up_built_and_raises_the_young_threshold_alone() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    config = RelayConfig(relay_settings(None), log_config=None)
    config.load()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
def _children(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/status") as status:
                if f"\nPPid:\t{pid}\n" in status.read():
                    children.append(int(entry))
    return children


def _wait_for_workers(pid: int, count: int) -> list[int]:
    deadline = time.monotonic() + 20
    while len(workers := [child for child in _children(pid) if b"spawn_main" in _proc_bytes(child, "cmdline")]) < count:
        assert time.monotonic() < deadline, f"{len(workers)} of {count} workers started"
        time.sleep(0.05)
    return workers


def _proc_bytes(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as file:
        return file.read()


def _process_holding(relay_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the relay's end of the connection from ``client_port`` (by its socket's inode)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    inodes = [row[9] for row in rows if int(row[1].split(":")[1], 16) == relay_port and int(row[2].split(":")[1], 16) == client_port]
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in {f"socket:[{inode}]" for inode in inodes}:
                    return pid
    return None


def _exchange(sock: socket.socket, request: bytes) -> Response:
    response = Response()
    sock.sendall(request)
    while not response.complete:
        chunk = sock.recv(65536)
        if not chunk:
            break
        response.parser.feed_data(chunk)
    return response


async def test_workers_get_their_settings_and_secrets_through_a_pipe_not_the_environment(  # type: ignore[no-untyped-def]
    serve, client: httpx.AsyncClient, redis_env: dict[str, str],
) -> None:
    key, secret, upstream_key = "client-key-" + "k" * 24, "stream-secret-" + "z" * 32, "upstream-key-" + "u" * 24
    with mock_server(ttft=0.0, interval=0.0, tokens=2, api_key=upstream_key) as (_, upstream):
        upstreams = json.dumps([{"name": "keyed", "base_url": upstream, "api_key_env": "TOKEN_RELAY_TEST_UPSTREAM_KEY"}])
        process, url = serve("--workers", "2", RELAY_API_KEYS=key, RELAY_UPSTREAMS=upstreams, TOKEN_RELAY_TEST_UPSTREAM_KEY=upstream_key,
                             **(redis_env | {"RELAY_STREAM_SECRET": secret}))
        await _check_workers(process, url, client, key, {"key": key, "secret": secret, "upstream key": upstream_key})


async def _check_workers(process: subprocess.Popen[bytes], url: str, client: httpx.AsyncClient, key: str, hidden: dict[str, str]) -> None:
    workers = await anyio.to_thread.run_sync(_wait_for_workers, process.pid, 2)
    assert key.encode() in _proc_bytes(process.pid, "environ")  # the test put it there: the parent's own environment
    for pid in _children(process.pid):  # the workers, and multiprocessing's resource tracker
        exposed = _proc_bytes(pid, "environ") + _proc_bytes(pid, "cmdline")
        # Named, not shown: a failure must not print the environment.
        assert [name for name, value in (*hidden.items(), ("settings", "TOKEN_RELAY_SETTINGS_JSON")) if value.encode() in exposed] == []

    created = await client.post(url + "/v1/streams", json={"prompt": "hi", "model": "mock", "max_tokens": 2}, headers={"authorization": f"Bearer {key}"})
    assert created.status_code == 201, created.text
    events_path = created.json()["events_url"].removeprefix(url)
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"prompt": "hi", "model": "mock", "max_tokens": 2}).encode()

    def post(with_key: str) -> bytes:
        return (f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {with_key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def visit_both_workers() -> dict[int, tuple[int, int, int]]:
        seen: dict[int, tuple[int, int, int]] = {}
        deadline = time.monotonic() + 15
        while len(seen) < 2 and time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                statuses = (
                    _exchange(sock, post(key)).status,
                    _exchange(sock, post("wrong-" + key)).status,
                    _exchange(sock, f"GET {events_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()).status,
                )
                pid = _process_holding(port, sock.getsockname()[1], workers)
                assert pid is not None
                seen[pid] = statuses
        return seen

    seen = await anyio.to_thread.run_sync(visit_both_workers)
    assert set(seen) == set(workers)
    for good_key, wrong_key, stream_token in seen.values():
        assert (good_key, wrong_key) == (200, 401)
        assert stream_token == 200  # the stream is in Redis, and its token valid in both


async def test_every_worker_cuts_off_a_connection_whose_request_head_does_not_come(serve, redis_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    process, url = serve("--workers", "2", RELAY_REQUEST_HEAD_TIMEOUT="1", **redis_env)
    workers = await anyio.to_thread.run_sync(_wait_for_workers, process.pid, 2)
    port = int(url.rsplit(":", 1)[1])

    def cut_off_in_both() -> dict[int, bytes]:
        answers: dict[int, bytes] = {}
        deadline = time.monotonic() + 20
        while len(answers) < 2 and time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                while (pid := _process_holding(port, sock.getsockname()[1], workers)) is None:  # until a worker has accepted it
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
                answers[pid] = received
        return answers

    answers = await anyio.to_thread.run_sync(cut_off_in_both)
    assert set(answers) == set(workers)
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers.values())
