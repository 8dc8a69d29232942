"""Whether an upstream error is the model server's fault is a property of its type, not of its code's spelling."""

from __future__ import annotations

import pytest

from app.errors import TotalTimeout, UpstreamConnectError, UpstreamProtocolError, UpstreamStatusError, UpstreamTimeout


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_a_status_that_says_the_model_server_cannot_now_is_its_fault(status: int) -> None:
    assert UpstreamStatusError(status, "unable").fault


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_a_status_that_refuses_the_request_itself_is_not(status: int) -> None:
    error = UpstreamStatusError(status, "refused")
    assert not error.fault
    assert error.event().rejected


@pytest.mark.parametrize("phase", ["connect", "first_token", "stream"])
def test_a_phase_timeout_is_the_model_servers_fault(phase: str) -> None:
    assert UpstreamTimeout(phase, 1.0).fault


def test_the_total_deadline_is_the_requests_own_budget() -> None:
    timeout = TotalTimeout(30.0)
    assert not timeout.fault
    assert isinstance(timeout, UpstreamTimeout)
    assert (timeout.type, timeout.code, timeout.phase) == ("timeout", "total_timeout", "total")
    assert timeout.message == "no end of the generation within 30 s"


def test_connect_and_protocol_errors_are_the_model_servers_fault() -> None:
    assert UpstreamConnectError("refused").fault
    assert UpstreamProtocolError("upstream_malformed_http", "bad bytes", "first_token").fault
