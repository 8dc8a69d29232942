"""How a request's record reports its usage: the upstream's figures when it gave them, the relay's count otherwise."""

from __future__ import annotations

import logging

import pytest

from app.ops.record import Operations, RequestRecord
from app.streaming.events import Usage


def ended(outcome: str, counted: int, usage: Usage | None, *, generated: bool = True) -> RequestRecord:
    record = RequestRecord("r", "openai_chat")
    record.outcome, record.counted, record.usage, record.generated = outcome, counted, usage, generated  # type: ignore[assignment]
    record.end()
    return record


async def test_a_finished_request_reports_the_upstreams_usage() -> None:
    record = ended("done", 7, Usage.counted(12, 5))
    assert (record.prompt_tokens, record.completion_tokens, record.estimated, record.partial) == (12, 5, False, False)


async def test_a_stopped_request_counts_what_it_relayed_unless_the_upstream_said_more() -> None:
    early = ended("client_left", 9, Usage.counted(12, 1))  # an early usage (a prompt count, one output token): the count is higher
    assert (early.prompt_tokens, early.completion_tokens, early.estimated, early.partial) == (12, 9, True, True)
    late = ended("cancelled", 9, Usage.counted(12, 11))  # the upstream's usage came before the end: its figure wins
    assert (late.completion_tokens, late.estimated, late.partial) == (11, False, True)
    unknown = ended("client_left", 3, None)
    assert (unknown.prompt_tokens, unknown.completion_tokens, unknown.estimated) == (None, 3, True)


async def test_a_request_without_a_generation_has_no_usage() -> None:
    record = ended("error", 0, None, generated=False)
    assert (record.prompt_tokens, record.completion_tokens, record.partial) == (None, None, False)


async def test_time_per_output_token_is_derived_per_request() -> None:
    record = RequestRecord("r", "native")
    record.ttft, record.completion_tokens, record.duration = 0.5, 11, 1.5
    assert record.time_per_output_token == pytest.approx(0.1)
    record.completion_tokens = 1
    assert record.time_per_output_token is None


class _Broken:
    def request_ended(self, record: RequestRecord) -> None:
        raise RuntimeError("defect")


class _Seen:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def request_ended(self, record: RequestRecord) -> None:
        self.records.append(record)


async def test_each_observer_hears_of_each_end_once_whatever_another_does(caplog: pytest.LogCaptureFixture) -> None:
    seen = _Seen()
    operations = Operations([_Broken(), seen])
    record = operations.begin("r", "native")
    assert (operations.direct, operations.waiting) == (1, 1)
    with caplog.at_level(logging.ERROR, logger="token_relay"):
        operations.end(record)
        operations.end(record)
    assert seen.records == [record] and (operations.direct, operations.waiting) == (0, 0)
    assert [r.message for r in caplog.records] == ["request r: observer _Broken failed"]


async def test_the_gauges_count_each_record_in_flight_once_whatever_order_its_events_come_in() -> None:
    operations = Operations()
    waiting, streaming, resumable = operations.begin("a", "native"), operations.begin("b", "native"), operations.begin("c", "native", resumable=True)
    streaming.first_event()
    streaming.first_event()  # a second call changes no count
    assert (operations.direct, operations.waiting) == (2, 2)
    operations.end(waiting)
    operations.end(streaming)
    operations.end(waiting)
    assert (operations.direct, operations.waiting) == (0, 1)
    resumable.end()  # ended without the operations: still counted out once
    operations.end(resumable)
    resumable.first_event()  # after its end: no longer waiting, nothing to count
    assert (operations.direct, operations.waiting) == (0, 0)
