"""One autoscaling decision, as Kubernetes' HorizontalPodAutoscaler makes it: ``decide(input, now)``.

The order is HPA's ``reconcileAutoscaler``:

1. zero replicas with ``min > 0``: autoscaling is paused (Kubernetes: "scaling is disabled since the
   replica count of the target is zero"), so ``shoal scale web 0`` stops a service without removing
   its policy; a count above ``max`` or below ``min`` goes straight to the bound, without metrics;
2. each metric proposes a count (``calculator``); the recommendation is the highest proposal, and a
   failed metric is skipped, unless every metric failed, or one failed and the others would scale
   down: then there is no decision (``Decision.error``) and the count stays;
3. the recommendation, floored at 0, is normalized (``behavior``): stabilization windows and rate
   policies with a ``behavior``, the legacy window and ``max(2 * current, 4)`` limit without one.

From zero replicas (with ``min: 0``) only service-level metrics can say anything: per-replica metrics
have no replicas to measure, fail, and are skipped, so ``value`` wakes the service with
``ceil(value / target)`` and ``average_value`` with ``ceil(value / target_average)``.

``decide`` is pure: no clock, no I/O. The caller keeps each service's ``History`` and, after acting on a
decision, replaces it with ``record_decision(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.autoscale import calculator, explain
from scheduler.autoscale import history as history_rules
from scheduler.autoscale.behavior import Normalized, Rule, normalize, normalize_legacy
from scheduler.autoscale.calculator import MetricResult, Outcome, ReplicaCounts
from scheduler.autoscale.inputs import (
    AverageValueMetric,
    Behavior,
    DecisionInput,
    History,
    InvalidInput,
    Metric,
    PolicyType,
    Recommendation,
    ReplicaAverageMetric,
    ReplicaSample,
    ReplicaState,
    Resource,
    ResourceMetric,
    ScaleEvent,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
    Tolerance,
    ValueMetric,
    scale_down_rules,
    scale_up_rules,
)

__all__ = [
    "AverageValueMetric", "Behavior", "Decision", "DecisionInput", "History", "InvalidInput", "Metric",
    "MetricResult", "Outcome", "PolicyType", "Recommendation", "ReplicaAverageMetric", "ReplicaCounts",
    "ReplicaSample", "ReplicaState", "Resource", "ResourceMetric", "Rule", "ScaleEvent", "ScalingPolicy",
    "ScalingRules", "SelectPolicy", "Tolerance", "ValueMetric", "decide", "record_decision",
    "scale_down_rules", "scale_up_rules",
]


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What to do with one service, and why.

    ``desired_replicas`` is the count to set, or None when no decision could be made (``error`` says
    why; keep the current count). ``metrics`` holds every metric's result, in the input's order (empty
    when the count was outside min/max or paused: no metric is computed then). ``metric_replicas`` is
    the metrics' recommendation (the highest proposal, at least 0) and ``deciding_metric`` the index of
    the metric that gave it; ``stabilized_replicas`` the count after the stabilization windows;
    ``limited_by`` the rules that made ``desired_replicas`` differ from the recommendation, in the order
    applied. ``recommendation`` is what ``record_decision`` adds to the history (None: nothing).
    ``reason`` says all that in one sentence.
    """

    current_replicas: int
    desired_replicas: int | None
    reason: str
    error: str | None = None
    metrics: tuple[MetricResult, ...] = ()
    metric_replicas: int | None = None
    deciding_metric: int | None = None
    stabilized_replicas: int | None = None
    limited_by: tuple[Rule, ...] = ()
    recommendation: int | None = None

    @property
    def scales(self) -> bool:
        """Whether acting on this decision changes the replica count."""
        return self.desired_replicas is not None and self.desired_replicas != self.current_replicas


def decide(inp: DecisionInput, now: float = 0.0) -> Decision:
    """The decision for ``inp`` at ``now`` (on the clock of the history's times; replayed inputs use 0)."""
    current = inp.current_replicas
    if current == 0 and inp.min_replicas != 0:
        return Decision(current_replicas=0, desired_replicas=0, limited_by=(Rule.PAUSED_AT_ZERO,),
                        reason=explain.paused(inp.min_replicas))
    if current > inp.max_replicas or current < inp.min_replicas:
        above = current > inp.max_replicas
        return Decision(current_replicas=current,
                        desired_replicas=inp.max_replicas if above else inp.min_replicas,
                        limited_by=(Rule.MAX_REPLICAS if above else Rule.MIN_REPLICAS,),
                        reason=explain.out_of_bounds(current, min_replicas=inp.min_replicas,
                                                     max_replicas=inp.max_replicas))

    results = tuple(calculator.compute(m, index=i, current_replicas=current, tolerance=inp.tolerance)
                    for i, m in enumerate(inp.metrics))
    asked, deciding = _highest_proposal(results)
    failed = sum(1 for r in results if r.proposal is None)
    if failed == len(results) or (failed and asked < current):
        error = explain.no_decision(results, replicas_asked=asked, current=current)
        return Decision(current_replicas=current, desired_replicas=None, error=error, metrics=results,
                        reason=f"no decision, staying at {current}: {error}")
    assert deciding is not None  # at least one metric gave a proposal
    # Kubernetes starts the desired count at 0 and raises it to the metrics' count: never negative.
    recommendation = max(asked, 0)
    normalized = _normalize(inp, recommendation, now)
    deciding_metric = inp.metrics[deciding.index]
    return Decision(
        current_replicas=current, desired_replicas=normalized.replicas, metrics=results,
        metric_replicas=recommendation, deciding_metric=deciding.index,
        stabilized_replicas=normalized.stabilized, limited_by=normalized.rules, recommendation=recommendation,
        reason=explain.decision(results, deciding=deciding, current=current, min_replicas=inp.min_replicas,
                                max_replicas=inp.max_replicas, normalized=normalized,
                                ready_replicas=_ready_replicas(deciding_metric)))


def record_decision(history: History, inp: DecisionInput, decision: Decision, *, now: float = 0.0,
                    applied: bool = True) -> History:
    """The service's history after ``decision`` (made from ``inp`` at ``now``). Pass ``applied=False``
    when setting the count failed: the recommendation is still remembered, as Kubernetes does, but no
    scale event is."""
    return history_rules.record(
        history, current_replicas=inp.current_replicas, recommendation=decision.recommendation,
        new_replicas=decision.desired_replicas if applied else None, behavior=inp.behavior,
        downscale_stabilization_seconds=inp.downscale_stabilization_seconds, now=now)


def _highest_proposal(results: tuple[MetricResult, ...]) -> tuple[int, MetricResult | None]:
    """Kubernetes' ``computeReplicasForMetrics``: the highest proposal, where a first proposal of 0 is
    replaced by the next one whatever it is (``replicas == 0 || proposal > replicas``)."""
    asked = 0
    deciding: MetricResult | None = None
    for r in results:
        if r.proposal is not None and (asked == 0 or r.proposal > asked):
            asked, deciding = r.proposal, r
    return asked, deciding


def _normalize(inp: DecisionInput, recommendation: int, now: float) -> Normalized:
    current = inp.current_replicas
    recommendations = history_rules.aged_recommendations(inp.history, current_replicas=current, now=now)
    if inp.behavior is None:
        return normalize_legacy(current=current, desired=recommendation, min_replicas=inp.min_replicas,
                                max_replicas=inp.max_replicas,
                                window_seconds=inp.downscale_stabilization_seconds,
                                recommendations=recommendations)
    return normalize(current=current, desired=recommendation, min_replicas=inp.min_replicas,
                     max_replicas=inp.max_replicas, behavior=inp.behavior,
                     downscale_stabilization_seconds=inp.downscale_stabilization_seconds,
                     recommendations=recommendations,
                     scale_up_events=history_rules.aged_events(inp.history.scale_up_events, now=now),
                     scale_down_events=history_rules.aged_events(inp.history.scale_down_events, now=now))


def _ready_replicas(metric: Metric) -> int | None:
    return metric.ready_replicas if isinstance(metric, ValueMetric) else None
