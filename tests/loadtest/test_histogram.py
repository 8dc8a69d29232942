"""Percentiles in constant memory stay within 0.5 % of the exact ones."""

from __future__ import annotations

import random

from app.loadtest.histogram import Histogram, distribution, nearest_rank


def test_histogram_percentiles_are_within_half_a_percent_of_the_exact_ones() -> None:
    rng = random.Random(5)
    values = [rng.lognormvariate(-4, 1.2) for _ in range(20_000)]
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    for q in (1, 50, 90, 99, 99.9):
        exact = nearest_rank(ordered, q)
        assert abs(histogram.percentile(q) - exact) <= exact * 0.005 + 1e-9  # type: ignore[operator]
    summary = histogram.summary()
    assert summary["n"] == 20_000
    assert summary["max"] == max(values)
    assert abs(summary["mean"] - sum(values) / len(values)) < 1e-9  # type: ignore[operator]


def test_zero_gaps_are_reported_as_zero_and_an_empty_histogram_has_no_percentiles() -> None:
    histogram = Histogram()
    assert histogram.percentile(50) is None
    assert histogram.summary()["p99"] is None
    histogram.add(0.0)
    histogram.add(0.0)
    histogram.add(0.5)
    assert histogram.percentile(50) == 0.0
    assert histogram.percentile(100) == 0.5
    assert histogram.cumulative()[-1][1] == 1.0


def test_exact_distribution_by_nearest_rank() -> None:
    d = distribution([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (d["n"], d["p50"], d["p90"], d["max"], d["mean"]) == (5, 3.0, 5.0, 5.0, 3.0)
    assert distribution([])["p50"] is None
