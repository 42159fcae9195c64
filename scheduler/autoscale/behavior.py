"""Normalization: from the metrics' recommendation to the count to set, following HPA's
``normalizeDesiredReplicas`` (no ``behavior``) and ``normalizeDesiredReplicasWithBehaviors``.

**With a behavior**, first the stabilization windows: the count moves from the current one toward the
recommendation, but no further up than the *lowest* recommendation made within the scale-up window and
no further down than the *highest* made within the scale-down window (both include this one). Then the
rate policies: each policy allows, from the count at the start of its period (the current count minus
what was added plus what was removed within the period), ``+value`` replicas or ``* (1 + value%)``
rounded up when scaling up, ``-value`` or ``* (1 - value%)`` truncated when scaling down; ``select_policy``
takes the policy allowing the most change (``max``), the least (``min``), or none (``disabled``). A
limit that would move against the direction is the current count. ``max``/``min`` bound the result.

**Without one** (the legacy path), the recommendation is raised to the highest made within
``downscale_stabilization_seconds``, then bounded by ``min``, ``max`` and a scale-up limit of
``max(2 * current, 4)``. No scale events are kept.

Ages are seconds before the decision. A record counts in a behavior window when its age is *below*
the window (Kubernetes: ``timestamp.After(now - window)``), and in the legacy window when it is *at
most* the window (``!timestamp.Before(now - window)``); a legacy window of 0 counts nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.autoscale.inputs import (
    Behavior,
    PolicyType,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
)
from scheduler.autoscale.integers import (
    MAX_INT32,
    MIN_INT32,
    ceil_int32,
    saturate_int32,
    trunc_int32,
)

Aged = tuple[int, float]  # a recommendation or scale change, and its age in seconds


class Rule(enum.Enum):
    """A rule that made the count to set differ from what the metrics asked for."""

    SCALE_UP_STABILIZATION = "scale_up_stabilization"
    SCALE_DOWN_STABILIZATION = "scale_down_stabilization"
    SCALE_UP_POLICY = "scale_up_policy"
    SCALE_DOWN_POLICY = "scale_down_policy"
    SCALE_UP_DISABLED = "scale_up_disabled"
    SCALE_DOWN_DISABLED = "scale_down_disabled"
    LEGACY_SCALE_UP_LIMIT = "legacy_scale_up_limit"  # max(2 * current, 4), without a behavior
    MAX_REPLICAS = "max_replicas"
    MIN_REPLICAS = "min_replicas"
    PAUSED_AT_ZERO = "paused_at_zero"  # zero replicas with min > 0: autoscaling is paused


@dataclass(frozen=True, kw_only=True)
class Normalized:
    """The count to set, and what shaped it.

    ``stabilized`` is the count after the stabilization windows; ``rules`` the rules that changed the
    count, in the order applied; ``window_seconds`` the window that stabilized it (if one did);
    ``policy`` the rate policy whose limit bound it and ``changed_in_period`` the replicas already added
    (or removed) within that policy's period.
    """

    replicas: int
    stabilized: int
    rules: tuple[Rule, ...] = ()
    window_seconds: int = 0
    policy: ScalingPolicy | None = None
    changed_in_period: int = 0


def stabilization_windows(behavior: Behavior, downscale_stabilization_seconds: int) -> tuple[int, int]:
    """The scale-up and scale-down windows, the latter defaulting to the service-wide setting."""
    down = behavior.scale_down.stabilization_window_seconds
    up = behavior.scale_up.stabilization_window_seconds or 0
    return up, downscale_stabilization_seconds if down is None else down


def normalize_legacy(*, current: int, desired: int, min_replicas: int, max_replicas: int, window_seconds: int,
                     recommendations: Sequence[Aged]) -> Normalized:
    """HPA without ``behavior``: the highest recommendation of the window, then min/max and the
    ``max(2 * current, 4)`` scale-up limit."""
    stabilized = desired
    if window_seconds > 0:
        for replicas, age in recommendations:
            if age <= window_seconds and replicas > stabilized:
                stabilized = replicas
    rules = (Rule.SCALE_DOWN_STABILIZATION,) if stabilized != desired else ()
    window = window_seconds if rules else 0

    scale_up_limit = saturate_int32(int(max(2.0 * float(current), 4.0)))
    if max_replicas > scale_up_limit:
        maximum, maximum_rule = scale_up_limit, Rule.LEGACY_SCALE_UP_LIMIT
    else:
        maximum, maximum_rule = max_replicas, Rule.MAX_REPLICAS
    if stabilized < min_replicas:
        return Normalized(replicas=min_replicas, stabilized=stabilized, rules=(*rules, Rule.MIN_REPLICAS),
                          window_seconds=window)
    if stabilized > maximum:
        return Normalized(replicas=maximum, stabilized=stabilized, rules=(*rules, maximum_rule),
                          window_seconds=window)
    return Normalized(replicas=stabilized, stabilized=stabilized, rules=rules, window_seconds=window)


def normalize(*, current: int, desired: int, min_replicas: int, max_replicas: int, behavior: Behavior,
              downscale_stabilization_seconds: int, recommendations: Sequence[Aged],
              scale_up_events: Sequence[Aged], scale_down_events: Sequence[Aged]) -> Normalized:
    """HPA with ``behavior``: stabilization windows, then rate policies bounded by min/max."""
    up_window, down_window = stabilization_windows(behavior, downscale_stabilization_seconds)
    up_bound = min([desired, *(replicas for replicas, age in recommendations if age < up_window)])
    down_bound = max([desired, *(replicas for replicas, age in recommendations if age < down_window)])
    stabilized = current
    if stabilized < up_bound:
        stabilized = up_bound
    if stabilized > down_bound:
        stabilized = down_bound
    rules: tuple[Rule, ...] = ()
    window = 0
    if stabilized != desired:
        scaling_up = desired >= current
        rules = (Rule.SCALE_UP_STABILIZATION if scaling_up else Rule.SCALE_DOWN_STABILIZATION,)
        window = up_window if scaling_up else down_window

    if stabilized > current:
        limit, policy, changed = _scale_up_limit(current, behavior.scale_up, scale_up_events,
                                                 scale_down_events)
        # A limit below the current count (replicas were removed within the period) must not scale down.
        limit = max(limit, current)
        if max_replicas > limit:
            maximum = limit
            maximum_rule = (Rule.SCALE_UP_DISABLED if behavior.scale_up.select_policy is SelectPolicy.DISABLED
                            else Rule.SCALE_UP_POLICY)
        else:
            maximum, maximum_rule, policy, changed = max_replicas, Rule.MAX_REPLICAS, None, 0
        if stabilized > maximum:
            return Normalized(replicas=maximum, stabilized=stabilized, rules=(*rules, maximum_rule),
                              window_seconds=window, policy=policy, changed_in_period=changed)
    elif stabilized < current:
        limit, policy, changed = _scale_down_limit(current, behavior.scale_down, scale_up_events,
                                                   scale_down_events)
        limit = min(limit, current)
        if min_replicas < limit:
            minimum = limit
            minimum_rule = (Rule.SCALE_DOWN_DISABLED
                            if behavior.scale_down.select_policy is SelectPolicy.DISABLED
                            else Rule.SCALE_DOWN_POLICY)
        else:
            minimum, minimum_rule, policy, changed = min_replicas, Rule.MIN_REPLICAS, None, 0
        if stabilized < minimum:
            return Normalized(replicas=minimum, stabilized=stabilized, rules=(*rules, minimum_rule),
                              window_seconds=window, policy=policy, changed_in_period=changed)
    return Normalized(replicas=stabilized, stabilized=stabilized, rules=rules, window_seconds=window)


def _changed_within(period_seconds: int, events: Sequence[Aged]) -> int:
    """``getReplicasChangePerPeriod``: the replicas changed by events younger than the period."""
    return sum(change for change, age in events if age < period_seconds)


def _scale_up_limit(current: int, rules: ScalingRules, up_events: Sequence[Aged],
                    down_events: Sequence[Aged]) -> tuple[int, ScalingPolicy | None, int]:
    """``calculateScaleUpLimitWithScalingRules``: the highest count the policies allow, the policy that
    allowed it and what was already added within its period."""
    if rules.select_policy is SelectPolicy.DISABLED:
        return current, None, 0
    pick_min = rules.select_policy is SelectPolicy.MIN
    result = MAX_INT32 if pick_min else MIN_INT32
    chosen: tuple[ScalingPolicy | None, int] = (None, 0)
    for policy in rules.policies:
        added = _changed_within(policy.period_seconds, up_events)
        removed = _changed_within(policy.period_seconds, down_events)
        start = saturate_int32(current - added + removed)
        if policy.type is PolicyType.REPLICAS:
            proposed = saturate_int32(start + policy.value)
        else:
            # Rounded up, or a small percentage of a few replicas would never add one.
            proposed = ceil_int32(float(start) * (1.0 + float(policy.value) / 100.0))
        if (proposed < result) if pick_min else (proposed > result):
            result, chosen = proposed, (policy, added)
    return result, chosen[0], chosen[1]


def _scale_down_limit(current: int, rules: ScalingRules, up_events: Sequence[Aged],
                      down_events: Sequence[Aged]) -> tuple[int, ScalingPolicy | None, int]:
    """``calculateScaleDownLimitWithBehaviors``: the lowest count the policies allow (``max`` picks the
    largest change, so the lowest count), the policy and what was already removed within its period."""
    if rules.select_policy is SelectPolicy.DISABLED:
        return current, None, 0
    pick_min_change = rules.select_policy is SelectPolicy.MIN
    result = MIN_INT32 if pick_min_change else MAX_INT32
    chosen: tuple[ScalingPolicy | None, int] = (None, 0)
    for policy in rules.policies:
        added = _changed_within(policy.period_seconds, up_events)
        removed = _changed_within(policy.period_seconds, down_events)
        start = saturate_int32(current - added + removed)
        if policy.type is PolicyType.REPLICAS:
            proposed = saturate_int32(start - policy.value)
        else:
            proposed = trunc_int32(float(start) * (1.0 - float(policy.value) / 100.0))
        if (proposed > result) if pick_min_change else (proposed < result):
            result, chosen = proposed, (policy, removed)
    return result, chosen[0], chosen[1]
