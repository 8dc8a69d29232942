"""Latency distributions in constant memory: a log-bucketed histogram, and exact percentiles.

Every inter-token gap of a long run would not fit in memory as a list, so gaps go into a
histogram whose buckets grow by 1 % from 1 µs to an hour: any percentile it reports is within
0.5 % of the true value (below 1 µs it reports 0). The count, the mean and the maximum are exact.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

_FLOOR = 1e-6
_GROWTH = 1.01
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = int(math.log(3600 / _FLOOR) / _LOG_GROWTH) + 2

QUANTILES = (50, 90, 99)


def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, by nearest rank."""
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    """Exact count, mean, p50/p90/p99 and max of ``values`` (``n: 0`` and Nones when empty)."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "mean": None, **{f"p{q}": None for q in QUANTILES}, "max": None}
    return {"n": len(ordered), "mean": statistics.fmean(ordered), **{f"p{q}": nearest_rank(ordered, q) for q in QUANTILES}, "max": ordered[-1]}


class Histogram:
    """Counts of durations in seconds, in buckets 1 % wide."""

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        if seconds < _FLOOR:
            self.buckets[0] += 1
        else:
            self.buckets[min(_BUCKETS - 1, int(math.log(seconds / _FLOOR) / _LOG_GROWTH) + 1)] += 1

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    @staticmethod
    def value_of(bucket: int) -> float:
        """A representative value of a bucket: 0 for the first, else the geometric middle."""
        if bucket == 0:
            return 0.0
        return float(_FLOOR * _GROWTH ** (bucket - 0.5))

    def percentile(self, q: float) -> float | None:
        if not self.count:
            return None
        if q >= 100:
            return self.max
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return min(self.value_of(i), self.max)
        return self.max

    def cumulative(self) -> list[tuple[float, float]]:
        """(value, share of samples at or below it) for each non-empty bucket: a CDF to plot."""
        points: list[tuple[float, float]] = []
        seen = 0
        for i, n in enumerate(self.buckets):
            if n:
                seen += n
                points.append((min(self.value_of(i), self.max), seen / self.count))
        return points

    def summary(self) -> dict[str, float | int | None]:
        if not self.count:
            return {"n": 0, "mean": None, **{f"p{q}": None for q in QUANTILES}, "max": None}
        return {"n": self.count, "mean": self.total / self.count, **{f"p{q}": self.percentile(q) for q in QUANTILES}, "max": self.max}
