"""``decide``: HPA's reconcile order, multiple metrics and failing ones, zero replicas, and the reasons."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from scheduler.autoscale import hpa
from scheduler.autoscale.hpa import Outcome, Rule
from tests.unit.scheduler.autoscale.builders import (
    average_value,
    cpu,
    decision_input,
    memory,
    recommendations,
    replica,
    replicas,
    value,
)


def test_the_example_from_the_issue() -> None:
    inp = decision_input(cpu(60, replicas(1820, 1820, 1820)), current=3, max_replicas=20,
                         behavior=hpa.Behavior())
    d = hpa.decide(inp)
    assert d.reason == ("cpu 182% of target 60% on 3 ready replicas → 10, capped to 7 by scale-up policy "
                        "4 replicas / 15 s")
    assert (d.desired_replicas, d.metric_replicas, d.stabilized_replicas) == (7, 10, 10)
    assert (d.limited_by, d.recommendation, d.deciding_metric) == ((Rule.SCALE_UP_POLICY,), 10, 0)
    assert d.error is None
    assert d.scales


def test_legacy_path_without_behavior() -> None:
    d = hpa.decide(decision_input(cpu(60, replicas(1820, 1820, 1820)), current=3, max_replicas=20))
    assert d.desired_replicas == 6
    assert d.reason.endswith(", capped to 6 by the scale-up limit max(2 * 3, 4)")


def test_within_tolerance_the_count_stays() -> None:
    d = hpa.decide(decision_input(cpu(60, replicas(620, 640)), current=2))
    assert (d.desired_replicas, d.scales) == (2, False)
    assert d.reason == "cpu 63% of target 60% on 2 ready replicas, within tolerance → 2"


def test_rebalanced_reason_says_what_was_filled_in() -> None:
    reps = (replica("a", 300, ready=False), replica("b", 500), replica("c", 700), replica("d", None))
    d = hpa.decide(decision_input(cpu(30, reps), current=4))
    # 1200 / 2000 = 60%; with the unready and the missing replicas idle: 1200 / 4000 = 30% → within.
    assert d.desired_replicas == 4
    assert d.reason == ("cpu 60% of target 30% on 2 ready replicas; 1 unready counted as idle and 1 without "
                        "a sample counted as idle: 30% on 4 replicas, within tolerance → 4")


# --- several metrics --------------------------------------------------------------------------------


def test_the_highest_proposal_wins() -> None:
    inp = decision_input(cpu(50, replicas(600, 600)), value(10000, 40000, ready=2, name="queue"),
                         memory(80, replicas(100, 100)), current=2)
    d = hpa.decide(inp)
    assert [m.proposal for m in d.metrics] == [3, 8, 1]
    assert (d.metric_replicas, d.deciding_metric, d.desired_replicas) == (8, 1, 4)
    assert d.reason.startswith("queue 40 of target 10 on 2 ready replicas → 8 (the highest of 3 metrics)")


def test_a_failed_metric_is_skipped_when_the_others_do_not_scale_down() -> None:
    inp = decision_input(cpu(50, replicas(1000, 1000), error="no usage stream"), value(1000, 3000, ready=2),
                         current=2)
    d = hpa.decide(inp)
    assert (d.desired_replicas, d.error) == (4, None)
    assert d.metrics[0].outcome is Outcome.FAILED
    assert d.reason.endswith("; ignored cpu, which failed: no usage stream")
    # At the current count too: only a scale-down is refused.
    d = hpa.decide(decision_input(cpu(50, (), error="down"), value(1000, 1000, ready=2), current=2))
    assert (d.desired_replicas, d.error) == (2, None)


def test_no_scale_down_while_a_metric_fails() -> None:
    inp = decision_input(cpu(50, replicas(100, 100)), value(1000, None, ready=2), current=2)
    d = hpa.decide(inp)
    assert (d.desired_replicas, d.recommendation) == (None, None)
    assert d.error == ("1 of 2 metrics failed and the others ask for 1 < 2: no scale-down without every "
                       "metric (value: no value)")
    assert d.reason == f"no decision, staying at 2: {d.error}"
    assert not d.scales
    assert [m.proposal for m in d.metrics] == [1, None]


def test_every_metric_failing_is_no_decision() -> None:
    d = hpa.decide(decision_input(value(1000, None), cpu(50, (replica("a", None),)), current=1))
    assert d.desired_replicas is None
    assert d.error == ("all 2 metrics failed (value: no value; cpu: no ready replica has a sample "
                       "(1 without a sample))")


def test_a_first_proposal_of_zero_is_replaced_by_the_next_whatever_it_is() -> None:
    # Kubernetes' loop keeps the highest proposal, except that a 0 is taken as "none yet".
    inp = decision_input(value(10000, 0, ready=2), value(10000, -15000, ready=1, name="debt"), current=2,
                         downscale_stabilization_seconds=0)
    d = hpa.decide(inp)
    assert [m.proposal for m in d.metrics] == [0, -1]
    assert d.deciding_metric == 1
    assert d.metric_replicas == 0  # a negative recommendation becomes 0
    assert d.desired_replicas == 1  # min


# --- bounds and zero ------------------------------------------------------------------------------------


def test_above_max_goes_to_max_without_metrics() -> None:
    d = hpa.decide(decision_input(cpu(50, ()), current=12, max_replicas=10))
    assert (d.desired_replicas, d.limited_by, d.metrics) == (10, (Rule.MAX_REPLICAS,), ())
    assert d.reason == "12 replicas is above max 10 → 10"
    assert d.recommendation is None


def test_below_min_goes_to_min() -> None:
    d = hpa.decide(decision_input(cpu(50, ()), current=1, min_replicas=3))
    assert (d.desired_replicas, d.limited_by) == (3, (Rule.MIN_REPLICAS,))
    assert d.reason == "1 replica is below min 3 → 3"


def test_zero_replicas_with_min_above_zero_pauses_autoscaling() -> None:
    d = hpa.decide(decision_input(value(1000, 50000), current=0, min_replicas=2))
    assert (d.desired_replicas, d.limited_by, d.metrics) == (0, (Rule.PAUSED_AT_ZERO,), ())
    assert not d.scales
    assert "paused" in d.reason


def test_wake_from_zero_on_a_service_level_metric() -> None:
    inp = decision_input(cpu(50, ()), value(10000, 25000, name="backlog"), current=0, min_replicas=0)
    d = hpa.decide(inp)
    assert d.desired_replicas == 3
    assert d.metrics[0].error == "no replicas to measure"
    assert d.reason == ("backlog 25 of target 10 at zero replicas → 3; ignored cpu, which failed: "
                        "no replicas to measure")


def test_wake_from_zero_is_at_least_one_for_any_work() -> None:
    inp = decision_input(average_value(10000, 1), current=0, min_replicas=0, behavior=hpa.Behavior())
    assert hpa.decide(inp).desired_replicas == 1


def test_zero_stays_zero_without_work() -> None:
    d = hpa.decide(decision_input(value(10000, 0), current=0, min_replicas=0))
    assert (d.desired_replicas, d.error) == (0, None)


def test_scale_to_zero_when_the_metric_says_no_work() -> None:
    inp = decision_input(value(10000, 0, ready=2), current=2, min_replicas=0,
                         history=recommendations((0, 400.0)))
    assert hpa.decide(inp).desired_replicas == 0
    # Within the scale-down window of a recommendation of 2, it waits.
    inp = decision_input(value(10000, 0, ready=2), current=2, min_replicas=0,
                         history=recommendations((2, 100.0)))
    assert hpa.decide(inp).desired_replicas == 2


def test_a_service_without_history_is_seeded_with_its_current_count() -> None:
    # Kubernetes seeds the recommendations with the current count: no scale-down for a window after the
    # autoscaler starts watching a service.
    d = hpa.decide(decision_input(cpu(50, replicas(100, 100, 100, 100)), current=4))
    assert (d.metric_replicas, d.desired_replicas, d.limited_by) == (1, 4, (Rule.SCALE_DOWN_STABILIZATION,))
    inp = decision_input(cpu(50, replicas(100, 100, 100, 100)), current=4, downscale_stabilization_seconds=0)
    d = hpa.decide(inp)
    assert d.desired_replicas == 1


def test_history_times_are_measured_from_now() -> None:
    history = hpa.History(recommendations=(hpa.Recommendation(replicas=4, at=1000.0),))
    inp = decision_input(cpu(50, replicas(100, 100, 100, 100)), current=4, history=history)
    assert hpa.decide(inp, now=1200.0).desired_replicas == 4  # 200 s old: in the 300 s window
    assert hpa.decide(inp, now=1301.0).desired_replicas == 1


# --- inputs that are refused --------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_replicas": 5, "max_replicas": 4}, "min_replicas: must be <= max_replicas (4)"),
    ({"max_replicas": 0}, "max_replicas: must be > 0"),
    ({"current_replicas": -1}, "current_replicas: must be >= 0"),
    ({"metrics": ()}, "metrics: must have at least one metric"),
    ({"min_replicas": 0}, "min_replicas: 0 needs a service-level metric (value or average_value) to wake the "
                          "service from zero replicas"),
])
def test_invalid_inputs_name_the_field(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"current_replicas": 1, "max_replicas": 10,
                                 "metrics": (cpu(50, replicas(100)),)}
    fields.update(kwargs)
    with pytest.raises(hpa.InvalidInput) as raised:
        hpa.DecisionInput(**fields)  # type: ignore[arg-type]
    assert str(raised.value) == message


@pytest.mark.parametrize(("make", "message"), [
    (lambda: cpu(0, replicas(100)), "target_utilization_percent: must be > 0"),
    (lambda: hpa.ScalingPolicy(type=hpa.PolicyType.PERCENT, value=10, period_seconds=1801),
     "period_seconds: must be <= 1800"),
    (lambda: hpa.scale_up_rules(stabilization_window_seconds=3601),
     "stabilization_window_seconds: must be <= 3600"),
    (lambda: hpa.scale_down_rules(policies=()), "policies: must have at least one policy"),
    (lambda: hpa.Tolerance(scale_down=-0.1), "scale_down: must be a number >= 0, not -0.1"),
    (lambda: cpu(50, (replica("r0", 1), replica("r0", 2))), "replicas[1].id: 'r0' appears twice"),
    (lambda: value(1000, 1, ready=-1), "ready_replicas: must be >= 0"),
])
def test_invalid_values_are_refused_where_they_are_made(make: Callable[[], object], message: str) -> None:
    with pytest.raises(hpa.InvalidInput) as raised:
        make()
    assert str(raised.value) == message
