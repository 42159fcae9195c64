"""bench/sim/histograms.py: a histogram's buckets off a scrape, the difference of two scrapes, and its
quantiles as PromQL's histogram_quantile computes them."""

from __future__ import annotations

import math

import pytest

from bench.sim.histograms import between, buckets, quantile, summary

SCRAPED = {  # {label text: value}, as bench/scale.py's scrape_counter returns a metric's samples
    'le="0.5",outcome="created"': 2.0, 'le="1.0",outcome="created"': 6.0, 'le="+Inf",outcome="created"': 8.0,
    'le="0.5",outcome="failed"': 1.0, 'le="1.0",outcome="failed"': 1.0, 'le="+Inf",outcome="failed"': 1.0,
}


def test_buckets_by_label_and_summed_over_the_rest() -> None:
    assert buckets(SCRAPED, outcome="created") == {0.5: 2.0, 1.0: 6.0, math.inf: 8.0}
    assert buckets(SCRAPED) == {0.5: 3.0, 1.0: 7.0, math.inf: 9.0}
    assert buckets(SCRAPED, outcome="none") == {}
    assert buckets({"": 4.0}) == {}  # not a bucket


def test_quantiles_interpolate_within_the_bucket_holding_the_rank() -> None:
    counts = {0.5: 2.0, 1.0: 6.0, 2.0: 10.0, math.inf: 10.0}
    assert quantile(counts, 0.5) == pytest.approx(0.5 + 0.5 * (5 - 2) / 4)
    assert quantile(counts, 0.1) == pytest.approx(0.25)  # the first bucket counts from zero
    assert quantile(counts, 1.0) == pytest.approx(2.0)
    assert quantile({0.5: 1.0, math.inf: 4.0}, 0.9) == 0.5  # in +Inf: the highest finite bound
    assert quantile({0.5: 0.0, math.inf: 0.0}, 0.5) is None
    assert quantile({}, 0.5) is None
    with pytest.raises(ValueError):
        quantile(counts, 1.5)


def test_between_two_scrapes_and_its_summary() -> None:
    before = {0.5: 2.0, 1.0: 2.0, 5.0: 2.0, math.inf: 2.0}
    after = {0.5: 2.0, 1.0: 6.0, 5.0: 10.0, math.inf: 10.0}
    counted = between(before, after)
    assert counted == {0.5: 0.0, 1.0: 4.0, 5.0: 8.0, math.inf: 8.0}
    assert summary(counted) == {"p50": 1.0, "p90": pytest.approx(4.2), "p99": pytest.approx(4.92), "n": 8}
