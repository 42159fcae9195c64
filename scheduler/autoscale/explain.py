"""Decisions in plain words: "cpu 182% of target 60% on 3 ready replicas → 10, capped to 7 by scale-up
policy 4 replicas / 15 s".

A reason names the metric that decided (with its value, target and the replicas it was measured on),
how it got its count (tolerance, the rebalanced pass and what it filled in), the metrics that failed,
then each rule that held the count back, in the order they applied. Milli-values are written as
numbers (15000 → "15", 1500 → "1.5").
"""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.autoscale.behavior import Normalized, Rule
from scheduler.autoscale.calculator import MetricResult, Outcome


def milli(value: int) -> str:
    """A milli-value as a decimal number without trailing zeros."""
    whole, fraction = divmod(abs(value), 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    return f"-{text}" if value < 0 else text


def replicas(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


def paused(min_replicas: int) -> str:
    return (f"0 replicas with min {min_replicas}: autoscaling is paused until the service is scaled "
            "up by hand")


def out_of_bounds(current: int, *, min_replicas: int, max_replicas: int) -> str:
    if current > max_replicas:
        return f"{replicas(current)} is above max {max_replicas} → {max_replicas}"
    return f"{replicas(current)} is below min {min_replicas} → {min_replicas}"


def no_decision(results: Sequence[MetricResult], *, replicas_asked: int, current: int) -> str:
    """Why no count could be decided: every metric failed, or one failed and the others would scale down
    (Kubernetes refuses to scale down on partial information)."""
    failed = [r for r in results if r.proposal is None]
    errors = "; ".join(f"{r.label}: {r.error}" for r in failed)
    if len(failed) == len(results):
        return errors if len(results) == 1 else f"all {len(results)} metrics failed ({errors})"
    return (f"{len(failed)} of {len(results)} metrics failed and the others ask for {replicas_asked} "
            f"< {current}: no scale-down without every metric ({errors})")


def metric_phrase(r: MetricResult, *, current: int, ready_replicas: int | None = None) -> str:
    """One metric's part: its numbers, then how it reached its proposal. ``ready_replicas`` is a ``value``
    metric's ready count."""
    if r.proposal is None:
        return f"{r.label} failed: {r.error}"
    head = _numbers(r, current=current, ready_replicas=ready_replicas)
    if r.outcome in (Outcome.PROPORTIONAL, Outcome.FROM_ZERO):
        return f"{head} → {r.proposal}"
    if r.outcome is Outcome.WITHIN_TOLERANCE:
        return f"{head}, within tolerance → {r.proposal}"
    rebalanced = f"{head}; {_fills(r)}: {_rebalanced_numbers(r)}"
    if r.outcome is Outcome.REBALANCED:
        return f"{rebalanced} → {r.proposal}"
    if r.outcome is Outcome.REBALANCED_WITHIN_TOLERANCE:
        return f"{rebalanced}, within tolerance → {r.proposal}"
    return f"{rebalanced}, which would reverse the direction → {r.proposal}"


def decision(results: Sequence[MetricResult], *, deciding: MetricResult, current: int,
             min_replicas: int, max_replicas: int, normalized: Normalized,
             ready_replicas: int | None) -> str:
    """The whole reason of a decision made from the metrics."""
    text = metric_phrase(deciding, current=current, ready_replicas=ready_replicas)
    valid = [r for r in results if r.proposal is not None]
    if len(valid) > 1:
        text += f" (the highest of {len(valid)} metrics)"
    for rule in normalized.rules:
        text += _rule_phrase(rule, normalized, current=current, min_replicas=min_replicas,
                             max_replicas=max_replicas)
    for r in results:
        if r.proposal is None:
            text += f"; ignored {r.label}, which failed: {r.error}"
    return text


def _numbers(r: MetricResult, *, current: int, ready_replicas: int | None) -> str:
    counts = r.counts
    if r.kind in ("cpu", "memory"):
        measured = counts.ready if counts else 0
        ready = " ready" if r.kind == "cpu" else ""
        return (f"{r.label} {r.utilization_percent}% of target {r.target}% on {measured}{ready} "
                f"{'replica' if measured == 1 else 'replicas'}")
    if r.kind == "replica_average":
        measured = counts.ready if counts else 0
        text = (f"{r.label} average {milli(r.average or 0)} of target {milli(r.target)} "
                f"on {replicas(measured)}")
        if counts and counts.unmatched:
            text += f" and {counts.unmatched} unmatched {'sample' if counts.unmatched == 1 else 'samples'}"
        return text
    value = milli(r.value or 0)
    if r.kind == "value":
        where = " at zero replicas" if current == 0 else f" on {ready_replicas} ready"
        if current != 0:
            where += " replica" if ready_replicas == 1 else " replicas"
        return f"{r.label} {value} of target {milli(r.target)}{where}"
    if current == 0:
        return f"{r.label} {value} at zero replicas, target {milli(r.target)} each"
    return (f"{r.label} {value} over {replicas(current)} ({milli(r.average or 0)} each) "
            f"of target {milli(r.target)} each")


def _fills(r: MetricResult) -> str:
    """What the rebalanced pass assumed for the replicas the first pass left out."""
    counts = r.counts
    assert counts is not None and r.ratio is not None  # only per-replica metrics rebalance
    parts = []
    if counts.unready and r.ratio > 1.0:
        parts.append(f"{counts.unready} unready counted as idle")
    if counts.missing:
        if r.ratio == 1.0:
            # Exactly on target: Kubernetes fills in nothing, and the count stays.
            parts.append(f"{counts.missing} without a sample left out")
        elif r.ratio > 1.0:
            parts.append(f"{counts.missing} without a sample counted as idle")
        elif r.kind in ("cpu", "memory"):
            parts.append(f"{counts.missing} without a sample counted at {max(100, r.target)}% of request")
        else:
            parts.append(f"{counts.missing} without a sample counted at the target")
    return " and ".join(parts)


def _rebalanced_numbers(r: MetricResult) -> str:
    over = replicas(r.measured or 0)
    if r.kind in ("cpu", "memory"):
        return f"{r.rebalanced_utilization_percent}% on {over}"
    return f"average {milli(r.rebalanced_average or 0)} on {over}"


def _rule_phrase(rule: Rule, n: Normalized, *, current: int, min_replicas: int, max_replicas: int) -> str:
    if rule is Rule.SCALE_UP_STABILIZATION:
        return (f", held at {n.stabilized} by scale-up stabilization (lowest recommendation of the last "
                f"{n.window_seconds} s)")
    if rule is Rule.SCALE_DOWN_STABILIZATION:
        return (f", held at {n.stabilized} by scale-down stabilization (highest recommendation of the last "
                f"{n.window_seconds} s)")
    if rule in (Rule.SCALE_UP_POLICY, Rule.SCALE_DOWN_POLICY):
        up = rule is Rule.SCALE_UP_POLICY
        assert n.policy is not None
        text = (f", {'capped to' if up else 'held at'} {n.replicas} by scale-{'up' if up else 'down'} policy "
                f"{n.policy.describe()}")
        if n.changed_in_period:
            text += (f" ({n.changed_in_period} {'added' if up else 'removed'} in the last "
                     f"{n.policy.period_seconds} s)")
        return text
    if rule is Rule.SCALE_UP_DISABLED:
        return f", held at {current}: scale-up is disabled"
    if rule is Rule.SCALE_DOWN_DISABLED:
        return f", held at {current}: scale-down is disabled"
    if rule is Rule.LEGACY_SCALE_UP_LIMIT:
        return f", capped to {n.replicas} by the scale-up limit max(2 * {current}, 4)"
    if rule is Rule.MAX_REPLICAS:
        return f", capped to max {max_replicas}"
    if rule is Rule.MIN_REPLICAS:
        return f", raised to min {min_replicas}"
    return ""
