"""``GET /metrics``: the Prometheus text format, via ``prometheus-client``.

Names follow the OpenTelemetry GenAI semantic conventions in their Prometheus form where one
exists (``gen_ai_client_token_usage``, ``gen_ai_client_operation_duration_seconds``,
``gen_ai_server_time_to_first_token_seconds``, ``gen_ai_server_time_per_output_token_seconds``),
else they start with ``relay_``. Every label is bounded: a model name outside the configured
set is ``other``, upstreams are the configured names. A ``code`` is the relay's own or a model
server's (its in-band error's, or the 4xx it refused with), which a model server may make up per
request: a process keeps the first ``MAX_CODES`` codes it sees as themselves and counts any
later one as ``other``, as OpenTelemetry's SDKs cap a metric's label sets.

Cost: nothing per event. Histograms and counters are recorded once per request, from its
``RequestRecord``; time per output token is derived per request (the time after the first
token over the tokens after it). Gauges are read from the relay's own state at scrape time
(``_State``, a custom collector). With several workers (``PROMETHEUS_MULTIPROC_DIR`` set by the
runner, app/server.py) prometheus-client's multiprocess mode adds every worker's counts; the
gauges are then copied into its files once a second by each worker (``refresh``), the
live ones summed, circuit states the worst of the workers'.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.ops.limits import LIMIT_CODES
from app.ops.record import Operations, RequestRecord
from app.streaming.routing import Upstream
from app.types import Receive, Scope, Send

OTHER = "other"
NONE = "none"
# Seconds between two copies of the gauges into the multiprocess files, in each worker.
REFRESH_INTERVAL = 1.0
_CODE = re.compile(r"^[a-z0-9_]{1,48}$")
# Distinct ``code`` label values one process keeps (the relay has about 50 codes of its own).
MAX_CODES = 128
_CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}

# Buckets: the OTel GenAI conventions' advice, stretched to the minutes a reasoning model takes.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 120.0)
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84, 327.68, 655.36)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
# The relay's own work: microseconds while all is well.
RELAY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

_REQUEST = ("dialect", "model", "upstream")


def multiprocess_dir() -> str | None:
    """Where the workers' metrics meet: set by the runner for ``--workers`` > 1 (prometheus-client reads it at import)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The relay's metrics, in a registry of the app's own (none is global): an ``Observer`` of every request's end."""

    def __init__(self, models: Iterable[str], upstreams: Iterable[str], *, multiprocess_dir: str | None = None) -> None:
        self._models = frozenset(models)
        self._upstreams = frozenset(upstreams)
        self._codes: set[str] = set()  # the code label values kept (``code_label``)
        self.multiprocess = multiprocess_dir is not None
        self.registry = CollectorRegistry(auto_describe=True)
        # In multiprocess mode the values live in the directory's files, and a scrape reads them all back.
        owned = None if self.multiprocess else self.registry
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds", "Time from the request's arrival to its first event (any part) from the model.",
            _REQUEST, buckets=TTFT_BUCKETS, registry=owned,
        )
        self.per_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds", "Time per output token after the first, per request (time after the first event / tokens after it).",
            _REQUEST, buckets=PER_TOKEN_BUCKETS, registry=owned,
        )
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds", "Duration of a request, from its arrival to its end, by outcome.",
            (*_REQUEST, "outcome"), buckets=DURATION_BUCKETS, registry=owned,
        )
        self.tokens = Histogram(
            "gen_ai_client_token_usage", "Tokens per request, by type (input, output); partial and estimated counts included.",
            (*_REQUEST, "type"), buckets=TOKEN_BUCKETS, registry=owned,
        )
        self.relay_latency = Histogram(
            "relay_added_latency_seconds", "The relay's own latency on a stream's first event: from the upstream's read to the end of the client write.",
            ("dialect",), buckets=RELAY_BUCKETS, registry=owned,
        )
        self.disconnect = Histogram(
            "relay_disconnect_to_upstream_closed_seconds", "From a client's disconnect, as seen, to its upstream request closed.",
            ("dialect",), buckets=RELAY_BUCKETS, registry=owned,
        )
        self.requests = Counter(
            "relay_requests", "Requests ended, by terminal outcome (done, error, cancelled, client_left) and error code.",
            (*_REQUEST, "outcome", "code"), registry=owned,
        )
        self.attempts = Counter("relay_upstream_attempts", "Attempts made on upstreams (the last upstream of each request).", ("upstream",), registry=owned)
        self.failovers = Counter("relay_upstream_failovers", "Requests that went to another upstream after a failed attempt.", ("upstream",), registry=owned)
        self.partial = Counter("relay_partial_usage", "Requests whose usage covers only what was generated before they stopped.", _REQUEST, registry=owned)
        # Incremented by the key limits, when a key is over one of its limits.
        self.limit_refusals = Counter("relay_limit_refusals", "Requests refused because a key was over a limit, by limit.", ("limit",), registry=owned)
        # Each (dialect, model, upstream)'s children, looked up once: ``labels()`` checks and joins its values at every call.
        self._series: dict[tuple[str, str, str], _Series] = {}

    def model_label(self, model: str | None) -> str:
        if model is None:
            return NONE
        return model if model in self._models else OTHER

    def upstream_label(self, upstream: str | None) -> str:
        if upstream is None:
            return NONE
        return upstream if upstream in self._upstreams else OTHER

    def code_label(self, code: str | None) -> str:
        """``code`` while this process has kept fewer than ``MAX_CODES`` codes (or already keeps it), else ``other``."""
        if code is None:
            return ""
        if code in self._codes:
            return code
        if len(self._codes) < MAX_CODES and _CODE.match(code):
            self._codes.add(code)
            return code
        return OTHER

    def request_ended(self, record: RequestRecord) -> None:
        labels = (record.dialect, self.model_label(record.model), self.upstream_label(record.upstream))
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(self, labels)
        outcome = record.outcome
        series.requests(outcome, self.code_label(record.code)).inc()
        if record.code in LIMIT_CODES:
            self.limit_refusals.labels(record.code).inc()
        series.duration(outcome).observe(record.duration)
        if record.ttft is not None and record.counted:  # a first token, not an error or an empty answer
            series.ttft.observe(record.ttft)
        per_token = record.time_per_output_token
        if per_token is not None:
            series.per_token.observe(per_token)
        if record.prompt_tokens is not None:
            series.input_tokens.observe(record.prompt_tokens)
        if record.completion_tokens is not None:
            series.output_tokens.observe(record.completion_tokens)
        if record.partial:
            series.partial.inc()
        if record.attempts:
            series.attempts.inc(record.attempts)
        if record.attempts > 1:
            series.failovers.inc()
        if record.relay_latency is not None:
            series.relay_latency.observe(record.relay_latency)
        if record.disconnect_seconds is not None:
            series.disconnect.observe(record.disconnect_seconds)

    def exposition(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    async def endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.exposition()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"),
        ]})
        await send({"type": "http.response.body", "body": body})


class _Series:
    """The children of every metric for one (dialect, model, upstream): the labels are bounded, so are these.

    What also varies by outcome (and code) is looked up on first use and kept, as prometheus-client keeps the child itself.
    """

    __slots__ = (
        "_by_outcome", "_by_result", "_labels", "_metrics", "attempts", "disconnect", "failovers", "input_tokens", "output_tokens",
        "partial", "per_token", "relay_latency", "ttft",
    )

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str]) -> None:
        self._metrics, self._labels = metrics, labels
        dialect, _, upstream = labels
        self.ttft = metrics.ttft.labels(*labels)
        self.per_token = metrics.per_token.labels(*labels)
        self.input_tokens = metrics.tokens.labels(*labels, "input")
        self.output_tokens = metrics.tokens.labels(*labels, "output")
        self.partial = metrics.partial.labels(*labels)
        self.attempts = metrics.attempts.labels(upstream)
        self.failovers = metrics.failovers.labels(upstream)
        self.relay_latency = metrics.relay_latency.labels(dialect)
        self.disconnect = metrics.disconnect.labels(dialect)
        self._by_outcome: dict[str, Histogram] = {}
        self._by_result: dict[tuple[str, str], Counter] = {}

    def duration(self, outcome: str) -> Histogram:
        child = self._by_outcome.get(outcome)
        if child is None:
            child = self._by_outcome[outcome] = self._metrics.duration.labels(*self._labels, outcome)
        return child

    def requests(self, outcome: str, code: str) -> Counter:
        child = self._by_result.get((outcome, code))
        if child is None:
            child = self._by_result[outcome, code] = self._metrics.requests.labels(*self._labels, outcome, code)
        return child


class State:
    """The gauges, read from the relay's own state when asked: nothing is updated as requests come and go."""

    def __init__(self, operations: Operations, upstreams: Iterable[Upstream], streams: Callable[[], tuple[int, int]]) -> None:
        self._operations = operations
        self._upstreams = tuple(upstreams)
        self._streams = streams  # resumable streams generating here, and their readers here

    def values(self) -> Iterator[tuple[str, str, dict[str, str], float]]:
        """``(name, help, labels, value)`` for each gauge sample."""
        operations = self._operations
        yield "relay_active_streams", "Requests in flight (direct streams and whole answers).", {}, operations.direct
        yield "relay_waiting_first_token_streams", "Requests in flight still waiting for their first event.", {}, operations.waiting
        running, readers = self._streams()
        yield "relay_resumable_streams", "Resumable streams being generated.", {}, running
        yield "relay_resumable_stream_readers", "Readers following resumable streams.", {}, readers
        for upstream in self._upstreams:
            state = _CIRCUIT_STATES.get(upstream.circuit.state, 2)
            yield "relay_circuit_state", "Each upstream's circuit: 0 closed, 1 half open, 2 open.", {"upstream": upstream.name}, state


class StateCollector(Collector):
    """The gauges of one process, computed at scrape time."""

    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, help_, labels, value in self._state.values():
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(name, help_, labels=list(labels))
            family.add_metric(list(labels.values()), value)
        yield from families.values()


class SharedGauges:
    """The gauges in multiprocess mode: each worker copies its values into the shared files (``refresh``)."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._gauges: dict[str, Gauge] = {}

    def refresh(self) -> None:
        for name, help_, labels, value in self._state.values():
            gauge = self._gauges.get(name)
            if gauge is None:
                # Live counts add up over the workers; a circuit is as bad as the worst worker's view of it.
                if name == "relay_circuit_state":
                    gauge = Gauge(name, help_, list(labels), registry=None, multiprocess_mode="livemax")
                else:
                    gauge = Gauge(name, help_, list(labels), registry=None, multiprocess_mode="livesum")
                self._gauges[name] = gauge
            (gauge.labels(*labels.values()) if labels else gauge).set(value)

    async def run(self) -> None:
        while True:
            self.refresh()
            await anyio.sleep(REFRESH_INTERVAL)


def serve_gauges(metrics: Metrics, state: State) -> SharedGauges | None:
    """Register the gauges: a collector of this process's state, or, in multiprocess mode, shared gauges to refresh."""
    if not metrics.multiprocess:
        metrics.registry.register(StateCollector(state))
        return None
    return SharedGauges(state)


def mark_dead(pid: int) -> None:
    """A worker that stops takes its live gauges with it."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
