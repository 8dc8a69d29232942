"""The runner's load shape: concurrency, counts, duration, ramp, several targets."""

from __future__ import annotations

import anyio
import pytest

from app.loadtest.runner import LoadConfig, Runner
from app.loadtest.stream import CUT, OK
from app.loadtest.target import build_target
from app.mock import MockModel
from tests.loadtest.conftest import load


async def test_requests_beyond_the_concurrency_reuse_the_slots(mock: tuple[MockModel, str]) -> None:
    runner = await load(mock[1] + "/chat/completions", streams=3, requests=10, max_tokens=4)
    assert runner.started == runner.finished == 10
    assert runner.outcomes[OK] == 10
    assert max(open_ for _, open_, *_ in runner.series) <= 3
    assert sorted(record["index"] for record in runner.records) == list(range(10))


async def test_a_duration_keeps_the_slots_busy_then_cuts_what_is_open_without_failing(mock: tuple[MockModel, str]) -> None:
    runner = await load(mock[1] + "/chat/completions", streams=2, duration=0.5, max_tokens=5, headers=[("x-mock-interval", "0.01")])
    assert runner.started > 2  # finished streams were replaced
    assert runner.failed == 0
    assert runner.outcomes[OK] >= 1
    assert runner.outcomes[CUT] <= 2
    assert runner.outcomes[OK] + runner.outcomes[CUT] == runner.started
    assert 0.5 <= runner.elapsed < 5


async def test_the_ramp_spreads_the_starts(mock: tuple[MockModel, str]) -> None:
    runner = await load(mock[1] + "/chat/completions", streams=5, ramp=0.4, duration=0.6, max_tokens=10_000,
                        headers=[("x-mock-tokens", "10000"), ("x-mock-interval", "0.01")])
    assert runner.started == 5  # long streams: no slot needed a second one
    starts = sorted(record["start_s"] for record in runner.records)
    for i, start in enumerate(starts):
        assert start >= i * 0.08 - 0.001  # slot i never starts before its place in the ramp


async def test_stop_ends_the_run_early_and_cuts_the_open_streams(mock: tuple[MockModel, str]) -> None:
    target = build_target(mock[1] + "/chat/completions", max_tokens=10_000, headers=[("x-mock-tokens", "10000"), ("x-mock-interval", "0.01")])

    def stop_once_streaming(runner: Runner) -> None:
        if runner.content_events >= 3 * 5:
            runner.stop()

    runner = Runner([target], LoadConfig(streams=3, tick=0.05), on_tick=stop_once_streaming)
    with anyio.fail_after(10):
        await runner.run()
    assert runner.outcomes[CUT] == 3
    assert runner.elapsed < 5
    assert runner.failed == 0


async def test_several_urls_take_the_streams_in_turn(mock: tuple[MockModel, str], relay: str) -> None:
    targets = [build_target(mock[1] + "/chat/completions", max_tokens=3), build_target(relay + "/v1/generate", max_tokens=3)]
    runner = Runner(targets, LoadConfig(streams=2, requests=6, keep_records=True, tick=0.05))
    with anyio.fail_after(10):
        await runner.run()
    assert runner.outcomes[OK] == 6
    by_index = {record["index"]: record["url"] for record in runner.records}
    assert [by_index[i] for i in range(6)] == [t.url for t in targets] * 3


async def test_request_ids_and_local_ports_identify_each_stream(mock: tuple[MockModel, str]) -> None:
    model, url = mock
    runner = await load(url + "/chat/completions", streams=8, close_after=1, id_prefix="rid", max_tokens=10_000,
                        headers=[("x-mock-tokens", "10000"), ("x-mock-interval", "0.01")])
    ports = {record["request_id"]: record["local_port"] for record in runner.records}
    for rid in (f"rid-{i}" for i in range(8)):
        seen = model.wait_for_disconnect(rid, timeout=5)
        assert seen["request_id"] == rid
        assert seen["peer"] == f"127.0.0.1:{ports[rid]}"  # the record's port is the connection the server saw


def test_a_runner_needs_a_target_and_a_stream() -> None:
    with pytest.raises(ValueError):
        Runner([], LoadConfig())
    with pytest.raises(ValueError):
        Runner([build_target("http://127.0.0.1:9/")], LoadConfig(streams=0))
