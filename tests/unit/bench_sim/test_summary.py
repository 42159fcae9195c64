"""p50/p99/max of measured durations: nearest rank, as the scale tables report them."""

from __future__ import annotations

import pytest

from bench.sim.summary import nearest_rank, summarize


def test_nearest_rank_of_a_hundred_samples() -> None:
    values = [float(v) for v in range(1, 101)]
    assert summarize(values) == {"p50": 50.0, "p99": 99.0, "max": 100.0, "n": 100}


def test_few_samples_take_an_observed_value() -> None:
    assert summarize([0.3, 0.1, 0.2]) == {"p50": 0.2, "p99": 0.3, "max": 0.3, "n": 3}
    assert summarize([0.5]) == {"p50": 0.5, "p99": 0.5, "max": 0.5, "n": 1}


def test_rounding() -> None:
    assert summarize([1.23456789], digits=3)["p50"] == 1.235


def test_no_samples_no_quantiles() -> None:
    assert summarize([]) == {"p50": None, "p99": None, "max": None, "n": 0}
    with pytest.raises(ValueError, match="no samples"):
        nearest_rank([], 0.5)
    with pytest.raises(ValueError, match="fraction"):
        nearest_rank([1.0], 0.0)
