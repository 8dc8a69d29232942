"""Upstreams and routes: which model servers a model name goes to, in which order, and whether each is usable.

An ``Upstream`` is one configured model server (protocol, base URL, key, timeouts) with its
``Circuit``: a concurrency limit and a circuit breaker. ``circuit_failures`` consecutive
failures (connect errors, 5xx, 429, timeouts, streams cut short) open the circuit: the
upstream is skipped for ``cooldown`` seconds. Then it is half-open: one request is let
through as a probe; its first token closes the circuit, its failure opens it again.

A ``Route`` is the ordered list of ``Target`` s (an upstream, and the model name to ask it
for, or ``None`` for the client's own) that a client-visible model name maps to.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

from app.settings import Protocol
from app.streaming.upstreams.adapters import ADAPTERS
from app.streaming.upstreams.http1 import Origin
from app.streaming.upstreams.transport import Transport


class Timeouts:
    __slots__ = ("connect", "first_token", "idle", "total")

    def __init__(self, connect: float, first_token: float, idle: float, total: float | None) -> None:
        self.connect = connect
        self.first_token = first_token
        self.idle = idle
        self.total = total


class Circuit:
    """Concurrency limit and circuit breaker of one upstream."""

    __slots__ = ("_clock", "_cooldown", "_failures", "_opened_at", "_probing", "_threshold", "in_flight", "max_concurrency")

    def __init__(self, *, failures: int = 5, cooldown: float = 30.0, max_concurrency: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.in_flight = 0
        self.max_concurrency = max_concurrency

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "open" if self._clock() < self._opened_at + self._cooldown else "half_open"

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_after(self) -> float:
        """Seconds until an open circuit lets a probe through."""
        return 0.0 if self._opened_at is None else max(self._opened_at + self._cooldown - self._clock(), 0.0)

    @property
    def full(self) -> bool:
        return self.max_concurrency is not None and self.in_flight >= self.max_concurrency

    def usable(self) -> bool:
        state = self.state
        return not self.full and (state == "closed" or (state == "half_open" and not self._probing))

    def acquire(self) -> bool | None:
        """Take a slot: ``None`` if the upstream is not usable now, else whether this request is the probe."""
        if not self.usable():
            return None
        self.in_flight += 1
        probe = self._opened_at is not None
        self._probing = self._probing or probe
        return probe

    def release(self, probe: bool) -> None:
        self.in_flight -= 1
        if probe:
            self._probing = False  # a probe that ended without a verdict (the client left) lets the next one through

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()
        self._probing = False


class Upstream:
    """A configured model server: where it is, how to talk to it, with which key, and its circuit."""

    def __init__(
        self, name: str, base_url: str | Origin, client: Transport, timeouts: Timeouts, api_key: str | None = None, protocol: Protocol = "openai",
        circuit: Circuit | None = None,
    ) -> None:
        self.name = name
        self.protocol = protocol
        self.adapter = ADAPTERS[protocol]
        self.origin = base_url if isinstance(base_url, Origin) else Origin(base_url)
        self.client = client
        self.timeouts = timeouts
        self.api_key = api_key
        self.circuit = circuit or Circuit()

    def status(self) -> dict[str, object]:
        circuit = self.circuit
        return {
            "protocol": self.protocol, "state": circuit.state, "in_flight": circuit.in_flight,
            "max_concurrency": circuit.max_concurrency, "consecutive_failures": circuit.consecutive_failures,
        }


class Target(NamedTuple):
    upstream: Upstream
    model: str | None = None  # the name to ask the upstream for; None: the client's


class Route:
    """The upstreams a model name goes to, tried in order."""

    __slots__ = ("targets",)

    def __init__(self, targets: tuple[Target, ...]) -> None:
        assert targets, "a route needs at least one upstream"
        self.targets = targets

    @classmethod
    def to(cls, upstream: Upstream) -> Route:
        return cls((Target(upstream),))

    def unusable(self) -> tuple[int, str, str, int] | None:
        """Why no upstream of this route can take a request now: (status, code, message, retry after), or ``None``."""
        circuits = [target.upstream.circuit for target in self.targets]
        if any(circuit.usable() for circuit in circuits):
            return None
        if all(circuit.state == "open" for circuit in circuits):
            wait = math.ceil(min(circuit.retry_after() for circuit in circuits)) or 1
            return 503, "upstream_unavailable", "every upstream of this model is failing; retry later", wait
        return 429, "upstream_busy", "every upstream of this model is at its concurrency limit; retry shortly", 1
