"""The replica calculator, case by case from Kubernetes' replica_calculator.go and its tests: readiness,
missing samples, the rebalanced pass, tolerance in float64, truncation and saturation."""

from __future__ import annotations

import math

import pytest

from scheduler.autoscale import calculator, explain, hpa
from scheduler.autoscale.calculator import MetricResult, Outcome
from scheduler.autoscale.integers import MAX_INT32, MAX_INT64
from tests.unit.scheduler.autoscale.builders import (
    EXITED,
    PENDING,
    TERMINATING,
    average_value,
    cpu,
    memory,
    per_replica,
    replica,
    replicas,
    value,
)


def propose(metric: hpa.Metric, current: int, tolerance: hpa.Tolerance | None = None) -> MetricResult:
    return calculator.compute(metric, index=0, current_replicas=current,
                              tolerance=tolerance or hpa.Tolerance())


# --- cpu: the fast path -----------------------------------------------------------------------------


def test_cpu_scale_up_is_ceil_of_ratio_times_ready_replicas() -> None:
    r = propose(cpu(30, replicas(300, 500, 700)), current=3)
    assert (r.utilization_percent, r.average, r.proposal, r.outcome) == (50, 500, 5, Outcome.PROPORTIONAL)
    assert r.ratio == 50 / 30


def test_cpu_scale_down() -> None:
    r = propose(cpu(50, replicas(100, 300, 500, 250, 250)), current=5)
    assert (r.utilization_percent, r.proposal) == (28, 3)


def test_ratio_within_tolerance_keeps_the_current_count() -> None:
    r = propose(cpu(100, replicas(1010, 1030, 1020)), current=3)
    assert (r.utilization_percent, r.proposal, r.outcome) == (102, 3, Outcome.WITHIN_TOLERANCE)


def test_utilization_is_truncated_to_whole_percent_before_the_tolerance() -> None:
    # 1017 / 3000 = 33.9% truncates to 33%, and 33/30 is 1.1: within tolerance. Unrounded (1.13) it
    # would have asked for 4.
    r = propose(cpu(30, replicas(339, 339, 339)), current=3)
    assert r.utilization_percent == 33
    assert (r.proposal, r.outcome) == (3, Outcome.WITHIN_TOLERANCE)


def test_utilization_is_taken_on_the_sums_of_usage_and_request() -> None:
    reps = (replica("a", 900, request=1000), replica("b", 100, request=3000))
    r = propose(cpu(100, reps), current=2)
    assert r.utilization_percent == 25  # 1000 * 100 / 4000, not the mean of 90% and 3%
    assert r.proposal == 1


# --- cpu readiness ------------------------------------------------------------------------------------


def test_unready_cpu_replica_is_left_out_then_counted_idle_when_scaling_up() -> None:
    reps = (replica("a", 300, ready=False), replica("b", 500), replica("c", 700))
    r = propose(cpu(30, reps), current=3)
    assert r.utilization_percent == 60  # the ready two only
    assert r.counts == calculator.ReplicaCounts(ready=2, unready=1)
    # Rebalanced: (500 + 700 + 0) / 3000 = 40% → 4/3 → ceil(1.33 * 3) = 4, not ceil(2 * 2) = 4+.
    assert (r.rebalanced_utilization_percent, r.proposal, r.outcome) == (40, 4, Outcome.REBALANCED)
    assert r.measured == 3


def test_recently_started_cpu_replica_counts_as_unready() -> None:
    reps = (replica("a", 300, recently_started=True), replica("b", 500), replica("c", 700))
    r = propose(cpu(30, reps), current=3)
    assert (r.counts and r.counts.unready, r.proposal) == (1, 4)


def test_unready_replicas_that_would_reverse_the_direction_keep_the_count() -> None:
    reps = (replica("a", 400), replica("b", 500, ready=False), replica("c", 700, ready=False))
    r = propose(cpu(30, reps), current=3)
    # 40% alone says up (1.33); with two idle replicas 13% says down: no change.
    assert r.utilization_percent == 40
    assert (r.proposal, r.outcome) == (3, Outcome.DIRECTION_CHANGED)


def test_unready_replicas_are_ignored_when_scaling_down() -> None:
    reps = (*replicas(100, 300, 500), replica("d", 250, ready=False), replica("e", 250, ready=False))
    r = propose(cpu(50, reps), current=5)
    assert r.utilization_percent == 30
    # No rebalancing downward: ceil(0.6 * 3 ready) = 2.
    assert (r.proposal, r.outcome, r.measured) == (2, Outcome.PROPORTIONAL, 3)


def test_exited_and_terminating_replicas_are_ignored() -> None:
    reps = (*replicas(500, 700), replica("x", 100, state=EXITED), replica("y", 100, state=TERMINATING))
    r = propose(cpu(30, reps), current=4)
    assert r.counts == calculator.ReplicaCounts(ready=2, ignored=2)
    assert (r.utilization_percent, r.proposal, r.outcome) == (60, 4, Outcome.PROPORTIONAL)


def test_a_not_ready_replica_without_a_sample_is_missing_not_unready() -> None:
    # Kubernetes checks for a sample before readiness. As missing, it counts at 100% of its request in a
    # scale-down: (100 + 100 + 1000) / 3000 = 40% → ceil(0.5 * 3) = 2. As unready it would be dropped:
    # ceil(0.125 * 2) = 1.
    reps = (*replicas(100, 100), replica("z", None, ready=False))
    r = propose(cpu(80, reps), current=3)
    assert r.counts == calculator.ReplicaCounts(ready=2, missing=1)
    assert (r.rebalanced_utilization_percent, r.proposal, r.outcome) == (40, 2, Outcome.REBALANCED)


def test_pending_replica_is_unready_even_with_a_sample() -> None:
    reps = (replica("a", 800), replica("b", 800, state=PENDING))
    r = propose(memory(50, reps), current=2)
    assert r.counts == calculator.ReplicaCounts(ready=1, unready=1)
    # 80% says up; with the pending one idle, 40% says down: no change.
    assert (r.proposal, r.outcome) == (2, Outcome.DIRECTION_CHANGED)


def test_memory_ignores_readiness_and_start_up() -> None:
    reps = (replica("a", 800, ready=False), replica("b", 800, recently_started=True))
    r = propose(memory(50, reps), current=2)
    assert r.counts == calculator.ReplicaCounts(ready=2)
    assert (r.utilization_percent, r.proposal) == (80, 4)


def test_memory_reports_its_average_in_bytes() -> None:
    gib = 1 << 30
    reps = (replica("a", gib, request=2 * gib), replica("b", gib // 2, request=2 * gib))
    r = propose(memory(25, reps), current=2)
    assert (r.utilization_percent, r.average) == (37, (gib + gib // 2) // 2)


# --- missing samples ----------------------------------------------------------------------------------


def test_missing_samples_count_as_full_request_when_scaling_down() -> None:
    r = propose(cpu(100, replicas(400, 95, None, None)), current=4)
    assert r.utilization_percent == 24
    assert (r.rebalanced_utilization_percent, r.proposal, r.outcome) == (62, 3, Outcome.REBALANCED)


def test_missing_samples_count_at_a_target_above_100_percent_when_scaling_down() -> None:
    r = propose(cpu(150, replicas(400, 95, None, None)), current=4)
    # Filled at 150% of request: (495 + 3000) / 4000 = 87% → 0.58 → 3 (at 100% it would be 2).
    assert (r.rebalanced_utilization_percent, r.proposal) == (87, 3)


def test_missing_samples_count_as_idle_when_scaling_up() -> None:
    r = propose(cpu(50, replicas(1500, 1500, None, None)), current=4)
    assert (r.utilization_percent, r.rebalanced_utilization_percent, r.proposal) == (150, 75, 6)


def test_rebalanced_ratio_within_tolerance_keeps_the_count() -> None:
    r = propose(cpu(50, replicas(1000, 1000, None, None)), current=4)
    assert (r.rebalanced_ratio, r.proposal, r.outcome) == (1.0, 4, Outcome.REBALANCED_WITHIN_TOLERANCE)


def test_rebalanced_count_against_the_ratio_keeps_the_count() -> None:
    # Two measured replicas, three just placed without samples (5 listed, 2 counted as current). 10% of
    # target 80 says down; filled at 100% the ratio is 0.8 (still down) but ceil(0.8 * 5) = 4 > 2.
    r = propose(cpu(80, replicas(100, 100, None, None, None)), current=2)
    assert r.rebalanced_ratio == 0.8
    assert (r.proposal, r.outcome) == (2, Outcome.DIRECTION_CHANGED)


def test_missing_samples_at_exactly_the_target_keep_the_count() -> None:
    r = propose(cpu(50, replicas(500, 500, None)), current=3)
    assert r.ratio == 1.0
    assert (r.proposal, r.outcome, r.measured) == (3, Outcome.REBALANCED_WITHIN_TOLERANCE, 2)
    assert explain.metric_phrase(r, current=3) == ("cpu 50% of target 50% on 2 ready replicas; 1 without a "
                                                   "sample left out: 50% on 2 replicas, within tolerance → 3")


# --- replica_average (per-replica Prometheus metric) ------------------------------------------------


def test_replica_average_scale_up() -> None:
    r = propose(per_replica(15000, replicas(20000, 10000, 30000)), current=3)
    assert (r.average, r.proposal) == (20000, 4)


def test_replica_average_ignores_readiness() -> None:
    reps = (replica("a", 50000), replica("b", 10000), replica("c", 30000, ready=False, recently_started=True))
    r = propose(per_replica(15000, reps), current=3)
    assert (r.average, r.proposal) == (30000, 6)


def test_unmatched_samples_stay_in_the_average_but_not_in_the_ready_count() -> None:
    r = propose(per_replica(10000, replicas(10000, 10000), unmatched=[40000]), current=2)
    assert r.average == 20000
    assert r.counts == calculator.ReplicaCounts(ready=2, unmatched=1)
    assert (r.proposal, r.measured) == (4, 2)  # ceil(2.0 * 2), not * 3


def test_replica_average_missing_counts_at_the_target_when_scaling_down() -> None:
    r = propose(per_replica(10000, replicas(2000, 2000, None)), current=3)
    # (2000 + 2000 + 10000) / 3 = 4666 → 0.4666 → ceil(1.4) = 2.
    assert (r.average, r.rebalanced_average, r.proposal) == (2000, 4666, 2)


def test_replica_average_divides_like_go_toward_zero() -> None:
    r = propose(per_replica(1000, replicas(-1, -2)), current=2)
    assert r.average == -1  # Go: -3 / 2 = -1; Python's // would give -2


def test_replica_average_sum_beyond_int64_is_exact() -> None:
    r = propose(per_replica(1, replicas(MAX_INT64, MAX_INT64)), current=2)
    assert r.average == MAX_INT64
    assert r.proposal == MAX_INT32


# --- service-level metrics ----------------------------------------------------------------------------


def test_value_scales_with_ready_replicas() -> None:
    r = propose(value(10000, 30000, ready=3), current=3)
    assert (r.ratio, r.proposal, r.measured) == (3.0, 9, 3)


def test_value_within_tolerance() -> None:
    assert propose(value(10000, 10500, ready=3), current=3).outcome is Outcome.WITHIN_TOLERANCE


def test_value_with_no_ready_replicas_proposes_zero_as_kubernetes_does() -> None:
    assert propose(value(10000, 30000, ready=0), current=3).proposal == 0


def test_value_from_zero_replicas_is_ceil_of_the_ratio_without_tolerance() -> None:
    assert propose(value(10000, 25000), current=0).proposal == 3
    assert propose(value(10000, 10500), current=0).proposal == 2  # 1.05 is not "within tolerance" here
    r = propose(value(10000, 0), current=0)
    assert (r.proposal, r.outcome) == (0, Outcome.FROM_ZERO)


def test_average_value_is_total_over_target() -> None:
    r = propose(average_value(2150, 8600), current=3)
    assert (r.proposal, r.average) == (4, 2867)  # ceil(8600 / 2150); the average is rounded up
    assert r.ratio == 8600 / (2150 * 3)


def test_average_value_within_tolerance_keeps_the_count() -> None:
    r = propose(average_value(2150, 6300), current=3)
    assert (r.proposal, r.outcome) == (3, Outcome.WITHIN_TOLERANCE)


def test_average_value_from_zero_replicas() -> None:
    r = propose(average_value(10000, 25000), current=0)
    assert (r.proposal, r.ratio, r.average, r.outcome) == (3, math.inf, None, Outcome.FROM_ZERO)
    idle = propose(average_value(10000, 0), current=0)
    assert idle.proposal == 0
    assert idle.ratio is not None and math.isnan(idle.ratio)


# --- failures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("metric", "current", "error"), [
    (cpu(50, replicas(100), error="usage stream unavailable"), 1, "usage stream unavailable"),
    (cpu(50, ()), 0, "no replicas to measure"),
    (cpu(50, (replica("a", None), replica("b", 100, ready=False))), 2,
     "no ready replica has a sample (1 unready, 1 without a sample)"),
    (cpu(50, (replica("a", 100), replica("b", 100, request=None, state=EXITED))), 2,
     "replica b has no cpu request"),
    (per_replica(1000, (replica("a", None, state=TERMINATING),)), 1,
     "no ready replica has a sample (1 exited or terminating)"),
    (value(1000, None, ready=1), 1, "no value"),
    (average_value(1000, None), 1, "no value"),
])
def test_a_metric_that_cannot_propose_says_why(metric: hpa.Metric, current: int, error: str) -> None:
    r = propose(metric, current=current)
    assert (r.proposal, r.outcome, r.error) == (None, Outcome.FAILED, error)


# --- saturation ---------------------------------------------------------------------------------------


def test_utilization_and_count_saturate_at_int32() -> None:
    r = propose(cpu(1, replicas(2**62, request=1)), current=1)
    assert r.utilization_percent == MAX_INT32
    assert r.proposal == MAX_INT32


def test_value_count_saturates_at_int32() -> None:
    assert propose(value(1, MAX_INT64, ready=3), current=3).proposal == MAX_INT32
    r = propose(average_value(1, MAX_INT64), current=1)
    assert (r.proposal, r.average) == (MAX_INT32, MAX_INT64)


# --- tolerance in float64 -------------------------------------------------------------------------------


def test_ratio_exactly_at_one_plus_tolerance_is_within() -> None:
    # 66/60 and 1.0 + 0.1 are the same float64, so the boundary holds.
    assert propose(cpu(60, replicas(660, 660, 660)), current=3).outcome is Outcome.WITHIN_TOLERANCE
    assert propose(cpu(60, replicas(670, 670, 670)), current=3).proposal == 4
    assert propose(cpu(60, replicas(540, 540, 540)), current=3).outcome is Outcome.WITHIN_TOLERANCE


def test_scale_up_tolerance_boundary_is_float64_not_decimal() -> None:
    # 1.0 + 0.36 is 1.3599999999999999 in float64, below 136/100: scale up, though 1.36 = 1 + 0.36.
    tolerance = hpa.Tolerance(scale_up=0.36)
    r = propose(cpu(100, replicas(*[1360] * 10)), current=10, tolerance=tolerance)
    assert (r.ratio, r.proposal) == (1.36, 14)


def test_scale_down_tolerance_boundary_is_float64_not_decimal() -> None:
    # 1.0 - 0.18 is 0.8200000000000001, above 0.82; 1.0 - 0.7 is 0.30000000000000004, above 0.3.
    r = propose(cpu(100, replicas(*[820] * 10)), current=10, tolerance=hpa.Tolerance(scale_down=0.18))
    assert r.proposal == 9
    r = propose(cpu(100, replicas(*[300] * 10)), current=10, tolerance=hpa.Tolerance(scale_down=0.7))
    assert r.proposal == 3


def test_separate_tolerances_per_direction() -> None:
    tolerance = hpa.Tolerance(scale_up=0.5, scale_down=0.05)
    assert propose(cpu(100, replicas(1400, 1400)), current=2, tolerance=tolerance).proposal == 2
    down = propose(cpu(100, replicas(900, 900)), current=2, tolerance=tolerance)
    assert down.outcome is Outcome.PROPORTIONAL


def test_tolerance_within() -> None:
    t = hpa.Tolerance()
    assert t.within(1.1) and t.within(0.9) and t.within(1.0)
    assert not t.within(1.1000000000000003) and not t.within(0.8999999999999999)
    assert not t.within(math.nan) and not t.within(math.inf)
