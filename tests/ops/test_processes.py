"""The runner's side of operations, in real relay processes: JSON logs, and the metrics of several workers added up."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from app.mock import MockModel
from app.server import METRICS_DIR_VARIABLE, metrics_directory
from tests.conftest import keys_expire
from tests.ops.scrape import scrape, value
from tests.processes import Start, relay_processes
from tests.servers import mock_server
from tests.sse import chat, post_stream


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.001, tokens=8) as served:
        yield served


@pytest.fixture
def start() -> Iterator[Start]:
    with relay_processes() as start:
        yield start


async def test_json_logs_one_object_a_line(start: Start, upstream: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    """With RELAY_LOG_FORMAT=json every line, the relay's, the access log's and each request's, is one JSON object."""
    process, url = start(RELAY_LOG_FORMAT="json", RELAY_ACCESS_LOG="true", RELAY_UPSTREAM=upstream[1], RELAY_MODELS="mock",
                         RELAY_API_KEYS="secret-key-1")
    auth = {"authorization": "Bearer secret-key-1"}
    response, _ = await post_stream(client, url + "/v1/chat/completions", chat(stream=True), headers=auth | {"x-request-id": "json-1"})
    assert response.status_code == 200
    assert (await client.post(url + "/v1/chat/completions", json=chat("nope"), headers=auth | {"x-request-id": "json-2"})).status_code == 404
    process.send_signal(signal.SIGTERM)
    assert process.stdout is not None
    with anyio.fail_after(15):
        output = await anyio.to_thread.run_sync(process.stdout.read)
    lines = [json.loads(line) for line in output.decode().splitlines() if line.strip()]  # every line parses
    assert all({"time", "level", "logger"} <= set(line) for line in lines)
    requests = [line for line in lines if line["logger"] == "token_relay.requests"]
    assert [line["request_id"] for line in requests] == ["json-1", "json-2"]
    assert requests[0]["outcome"] == "done" and requests[1]["code"] == "model_not_found"
    key = requests[0]["key"]
    assert key.startswith("key_") and "secret" not in key and requests[1]["key"] == key  # a stable label, never the key
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert {(line["method"], line["path"], line["status"]) for line in access} >= {("POST", "/v1/chat/completions", 200), ("GET", "/readyz", 200)}
    assert any(line["logger"] == "uvicorn.error" and "message" in line for line in lines)


@pytest.mark.parametrize("given_directory", [True, False], ids=["operators-directory", "runners-directory"])
async def test_two_workers_add_up_their_metrics(
    start: Start, redis_url: str, upstream: tuple[MockModel, str], tmp_path: Path, given_directory: bool,
) -> None:
    """Requests served by either worker are counted once in every scrape, whichever worker answers it."""
    directory = {METRICS_DIR_VARIABLE: str(tmp_path)} if given_directory else {}
    with keys_expire(redis_url):
        _, url = start("--workers", "2", RELAY_REDIS_URL=redis_url, RELAY_STREAM_SECRET="s" * 32, RELAY_UPSTREAM=upstream[1],
                       RELAY_MODELS="mock", **directory)
        count = 12

        async def one() -> None:
            async with httpx.AsyncClient(timeout=10) as fresh:  # a connection of its own: either worker may take it
                response, _ = await post_stream(fresh, url + "/v1/chat/completions", chat(stream=True))
                assert response.status_code == 200

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(one)
            # Each worker writes its gauges into the shared directory once a second: both are there.
            while given_directory and len(await anyio.to_thread.run_sync(_gauge_writers, tmp_path)) < 2:  # noqa: ASYNC110 (other processes' files)
                await anyio.sleep(0.05)
        for _ in range(4):
            async with httpx.AsyncClient(timeout=10) as fresh:
                samples = await scrape(fresh, url)
            assert value(samples, "relay_requests_total", dialect="openai_chat", model="mock", outcome="done") == count
            assert value(samples, "gen_ai_client_token_usage_sum", type="output") == 8 * count
            assert value(samples, "relay_active_streams") == 0


def _gauge_writers(directory: Path) -> set[str]:
    """The processes that wrote live gauges into ``directory``: prometheus-client names the files ``gauge_<mode>_<pid>.db``."""
    return {path.stem.rsplit("_", 1)[1] for path in directory.glob("gauge_live*_*.db")}


def test_the_runner_gives_workers_a_metrics_directory_and_removes_it() -> None:
    environ: dict[str, str] = {}
    with metrics_directory(environ) as path:
        assert environ[METRICS_DIR_VARIABLE] == path and os.path.isdir(path)
    assert not os.path.exists(path) and METRICS_DIR_VARIABLE not in environ
    with metrics_directory({METRICS_DIR_VARIABLE: "/srv/metrics"}) as given:  # the operator's own: used, left alone
        assert given == "/srv/metrics"
