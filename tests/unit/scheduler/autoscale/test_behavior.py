"""Normalization, from Kubernetes' horizontal.go: stabilization windows, rate policies over recent scale
events, select policies, min/max, and the legacy path without a behavior."""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.autoscale import hpa
from scheduler.autoscale.behavior import Aged, Normalized, Rule, normalize, normalize_legacy
from scheduler.autoscale.inputs import DEFAULT_SCALE_UP_POLICIES
from scheduler.autoscale.integers import MAX_INT32
from tests.unit.scheduler.autoscale.builders import policy

DEFAULT = hpa.Behavior()


def with_behavior(current: int, desired: int, *, behavior: hpa.Behavior = DEFAULT, min_replicas: int = 1,
                  max_replicas: int = 1000, recs: Sequence[Aged] = (), up: Sequence[Aged] = (),
                  down: Sequence[Aged] = (), downscale: int = 300) -> Normalized:
    return normalize(current=current, desired=desired, min_replicas=min_replicas, max_replicas=max_replicas,
                     behavior=behavior, downscale_stabilization_seconds=downscale,
                     recommendations=recs, scale_up_events=up, scale_down_events=down)


def legacy(current: int, desired: int, *, min_replicas: int = 1, max_replicas: int = 1000,
           recs: Sequence[Aged] = (), window: int = 300) -> Normalized:
    return normalize_legacy(current=current, desired=desired, min_replicas=min_replicas,
                            max_replicas=max_replicas, window_seconds=window, recommendations=recs)


def up_rules(*policies: hpa.ScalingPolicy, window: int = 0,
             select: hpa.SelectPolicy = hpa.SelectPolicy.MAX) -> hpa.Behavior:
    return hpa.Behavior(scale_up=hpa.scale_up_rules(stabilization_window_seconds=window, select_policy=select,
                                                    policies=policies or None))


def down_rules(*policies: hpa.ScalingPolicy, window: int | None = 0,
               select: hpa.SelectPolicy = hpa.SelectPolicy.MAX) -> hpa.Behavior:
    return hpa.Behavior(scale_down=hpa.scale_down_rules(stabilization_window_seconds=window,
                                                        select_policy=select, policies=policies or None))


# --- defaults -----------------------------------------------------------------------------------------


def test_default_scale_up_is_the_larger_of_4_replicas_and_100_percent_per_15_s() -> None:
    assert with_behavior(3, 40).replicas == 7  # 3 + 4 beats 3 * 2
    n = with_behavior(10, 50)
    assert (n.replicas, n.rules, n.policy) == (20, (Rule.SCALE_UP_POLICY,), DEFAULT_SCALE_UP_POLICIES[1])


def test_default_scale_down_allows_100_percent_after_a_300_s_window() -> None:
    assert with_behavior(10, 2).replicas == 2
    n = with_behavior(10, 2, recs=[(8, 299.0)])
    assert (n.replicas, n.rules, n.window_seconds) == (8, (Rule.SCALE_DOWN_STABILIZATION,), 300)


def test_defaults_match_kubernetes() -> None:
    up, down = DEFAULT.scale_up, DEFAULT.scale_down
    assert (up.stabilization_window_seconds, up.select_policy) == (0, hpa.SelectPolicy.MAX)
    assert [(p.type.value, p.value, p.period_seconds) for p in up.policies] == [
        ("replicas", 4, 15), ("percent", 100, 15)]
    assert (down.stabilization_window_seconds, down.select_policy) == (None, hpa.SelectPolicy.MAX)
    assert [(p.type.value, p.value, p.period_seconds) for p in down.policies] == [("percent", 100, 15)]


# --- stabilization windows ----------------------------------------------------------------------------


def test_scale_up_window_takes_the_lowest_recent_recommendation() -> None:
    behavior = up_rules(window=60)
    n = with_behavior(4, 10, behavior=behavior, recs=[(6, 30.0), (5, 59.0), (2, 61.0)])
    assert (n.stabilized, n.replicas, n.rules) == (5, 5, (Rule.SCALE_UP_STABILIZATION,))
    assert n.window_seconds == 60


def test_scale_down_window_takes_the_highest_recent_recommendation() -> None:
    n = with_behavior(10, 3, behavior=down_rules(window=120), recs=[(7, 100.0), (9, 130.0)])
    assert (n.stabilized, n.replicas) == (7, 7)


def test_a_recommendation_exactly_as_old_as_the_window_is_out_of_it() -> None:
    # Kubernetes: timestamp.After(now - window).
    assert with_behavior(10, 3, behavior=down_rules(window=120), recs=[(9, 120.0)]).replicas == 3
    assert with_behavior(10, 3, behavior=down_rules(window=120), recs=[(9, 119.5)]).replicas == 9


def test_the_scale_down_window_defaults_to_the_service_wide_setting() -> None:
    behavior = down_rules(window=None)
    assert with_behavior(10, 3, behavior=behavior, recs=[(9, 50.0)], downscale=60).replicas == 9
    assert with_behavior(10, 3, behavior=behavior, recs=[(9, 50.0)], downscale=40).replicas == 3


def test_stabilization_never_moves_against_the_current_count() -> None:
    # Recent recommendations above the current one do not turn a scale-down into a scale-up.
    n = with_behavior(5, 3, recs=[(12, 10.0)])
    assert (n.replicas, n.rules) == (5, (Rule.SCALE_DOWN_STABILIZATION,))


# --- rate policies ------------------------------------------------------------------------------------


def test_select_min_takes_the_policy_allowing_the_smallest_change() -> None:
    behavior = up_rules(policy("replicas", 4, 15), policy("percent", 100, 15), select=hpa.SelectPolicy.MIN)
    n = with_behavior(10, 50, behavior=behavior)
    assert (n.replicas, n.policy) == (14, policy("replicas", 4, 15))


def test_select_min_for_scale_down_removes_the_fewest() -> None:
    behavior = down_rules(policy("replicas", 2, 15), policy("percent", 50, 15), select=hpa.SelectPolicy.MIN)
    assert with_behavior(10, 1, behavior=behavior).replicas == 8  # max(10 - 2, 5)
    behavior = down_rules(policy("replicas", 2, 15), policy("percent", 50, 15))
    assert with_behavior(10, 1, behavior=behavior).replicas == 5  # select max: min(8, 5)


def test_disabled_direction_holds_the_count() -> None:
    n = with_behavior(5, 9, behavior=up_rules(select=hpa.SelectPolicy.DISABLED))
    assert (n.replicas, n.rules) == (5, (Rule.SCALE_UP_DISABLED,))
    n = with_behavior(5, 2, behavior=down_rules(select=hpa.SelectPolicy.DISABLED))
    assert (n.replicas, n.rules) == (5, (Rule.SCALE_DOWN_DISABLED,))
    # The other direction still moves.
    assert with_behavior(5, 2, behavior=up_rules(select=hpa.SelectPolicy.DISABLED)).replicas == 2


def test_percent_scale_up_rounds_up_so_small_services_grow() -> None:
    # 3 * (1 + 10/100) = 3.3000000000000003 → 4.
    assert with_behavior(3, 10, behavior=up_rules(policy("percent", 10, 60))).replicas == 4


def test_percent_scale_down_truncates_the_count_that_stays() -> None:
    behavior = down_rules(policy("percent", 10, 60))
    assert with_behavior(80, 1, behavior=behavior).replicas == 72
    assert with_behavior(15, 1, behavior=behavior).replicas == 13  # 15 * 0.9 = 13.5 → 13


def test_changes_within_the_period_are_counted_from_its_start() -> None:
    behavior = up_rules(policy("replicas", 4, 60))
    # 4 added 30 s ago: the period started at 6, so 10 is the limit and nothing more is allowed.
    n = with_behavior(10, 20, behavior=behavior, up=[(4, 30.0)])
    assert (n.replicas, n.rules, n.changed_in_period) == (10, (Rule.SCALE_UP_POLICY,), 4)
    # An event exactly one period old is out of it.
    assert with_behavior(10, 20, behavior=behavior, up=[(4, 60.0)]).replicas == 14


def test_scale_events_of_the_other_direction_move_the_period_start() -> None:
    behavior = up_rules(policy("replicas", 2, 15))
    assert with_behavior(5, 20, behavior=behavior, down=[(3, 5.0)]).replicas == 10  # 5 + 3 + 2


def test_a_limit_below_the_current_count_holds_it() -> None:
    behavior = up_rules(policy("replicas", 4, 15))
    n = with_behavior(10, 12, behavior=behavior, up=[(8, 5.0)])  # start 2, limit 6 < 10
    assert n.replicas == 10
    behavior = down_rules(policy("replicas", 1, 15))
    assert with_behavior(10, 2, behavior=behavior, down=[(5, 1.0)]).replicas == 10  # start 15, limit 14
    # Replicas added within the period lower its start, so a scale-down may then remove more.
    assert with_behavior(10, 2, behavior=behavior, up=[(5, 1.0)]).replicas == 4


def test_percent_scale_down_after_a_removal_waits_for_the_period() -> None:
    behavior = down_rules(policy("percent", 10, 60))
    # 80 → 72, 8 removed 30 s ago: the period still starts at 80, whose limit is 72.
    n = with_behavior(72, 1, behavior=behavior, down=[(8, 30.0)])
    assert (n.replicas, n.changed_in_period) == (72, 8)
    assert with_behavior(72, 1, behavior=behavior, down=[(8, 61.0)]).replicas == 64


def test_max_and_min_bound_the_policies() -> None:
    n = with_behavior(10, 50, max_replicas=15)
    assert (n.replicas, n.rules) == (15, (Rule.MAX_REPLICAS,))
    n = with_behavior(10, 1, min_replicas=4)
    assert (n.replicas, n.rules) == (4, (Rule.MIN_REPLICAS,))


def test_policy_arithmetic_saturates_at_int32() -> None:
    current = MAX_INT32 - 1
    behavior = up_rules(policy("replicas", 4, 15))
    n = with_behavior(current, MAX_INT32, max_replicas=MAX_INT32, behavior=behavior)
    assert n.replicas == MAX_INT32


def test_stabilization_then_policy_are_both_reported() -> None:
    behavior = hpa.Behavior(scale_up=hpa.scale_up_rules(stabilization_window_seconds=60,
                                                        policies=(policy("replicas", 1, 15),)))
    n = with_behavior(3, 10, behavior=behavior, recs=[(6, 20.0)])
    assert (n.stabilized, n.replicas) == (6, 4)
    assert n.rules == (Rule.SCALE_UP_STABILIZATION, Rule.SCALE_UP_POLICY)


# --- the legacy path (no behavior) ----------------------------------------------------------------


def test_legacy_scale_up_limit_is_twice_current_or_four() -> None:
    n = legacy(3, 20)
    assert (n.replicas, n.rules) == (6, (Rule.LEGACY_SCALE_UP_LIMIT,))
    assert legacy(1, 20).replicas == 4
    assert legacy(0, 20, min_replicas=0).replicas == 4


def test_legacy_limit_saturates_at_int32() -> None:
    assert legacy(2**30 + 5, MAX_INT32, max_replicas=MAX_INT32).replicas == MAX_INT32


def test_legacy_max_below_the_limit_is_max_replicas() -> None:
    n = legacy(3, 20, max_replicas=5)
    assert (n.replicas, n.rules) == (5, (Rule.MAX_REPLICAS,))


def test_legacy_window_keeps_the_highest_recommendation_including_one_exactly_window_old() -> None:
    recs = [(3, 0.0), (9, 300.0), (12, 300.5)]
    n = legacy(10, 4, recs=recs)
    assert (n.stabilized, n.replicas, n.rules) == (9, 9, (Rule.SCALE_DOWN_STABILIZATION,))


def test_legacy_window_of_zero_counts_nothing() -> None:
    assert legacy(10, 4, recs=[(10, 0.0)], window=0).replicas == 4


def test_legacy_min_applies_after_stabilization() -> None:
    n = legacy(5, 0, min_replicas=2, recs=[(1, 10.0)])
    assert (n.stabilized, n.replicas, n.rules) == (1, 2, (Rule.SCALE_DOWN_STABILIZATION, Rule.MIN_REPLICAS))
