"""The replica calculator: what one metric asks for, following Kubernetes' ``replica_calculator.go``.

Per-replica metrics (cpu, memory, ``replica_average``) first sort the replicas:

* **ignored** — exited or terminating: out of the calculation entirely;
* **unready** — pending, or, for cpu only, not ready or recently started (its sample may cover its
  start-up): left out of the average;
* **missing** — running without a sample: left out of the average;
* **ready** — the rest, whose samples make the average.

The usage ratio (utilization / target, or average / target) then decides. With no unready replica to
rebalance and none missing, a ratio within tolerance keeps the current count and any other gives
``ceil(ratio * ready)``. Otherwise a second, *rebalanced* pass fills the gaps in the direction of the
first: missing replicas count as using the target (at least 100% of their request for resources) when
scaling down and nothing when scaling up; unready replicas count as idle, only when scaling up. If
the rebalanced ratio falls within tolerance or points the other way, or its count
``ceil(new ratio * replicas counted)`` would move against the ratio, the current count stays.

Service-level metrics have no replicas to sort: a ``value`` target gives ``ceil(value / target *
ready replicas)`` (``ceil(value / target)`` from zero replicas, without tolerance, which is how a
service wakes), an ``average_value`` target ``ceil(value / target_average)`` unless
``value / (target_average * current)`` is within tolerance.

Arithmetic is Kubernetes': utilization is ``int32(usage * 100 / request)`` on the sums, averages are
truncating int64 divisions, ratios are float64 divisions of the integers converted to float, counts
are ``int32(ceil(…))`` — saturated rather than wrapped (``integers``). Memory is computed in
milli-bytes, as Kubernetes does, and reported in bytes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

from scheduler.autoscale.inputs import (
    AverageValueMetric,
    Metric,
    ReplicaAverageMetric,
    ReplicaSample,
    ReplicaState,
    Resource,
    ResourceMetric,
    Tolerance,
    ValueMetric,
    metric_label,
)
from scheduler.autoscale.integers import (
    MAX_INT64,
    ceil_int32,
    ceil_int64,
    div_trunc,
    saturate_int32,
)


class Outcome(enum.Enum):
    """How a metric reached its proposal."""

    PROPORTIONAL = "proportional"  # ceil(ratio * replicas measured)
    WITHIN_TOLERANCE = "within_tolerance"  # the ratio is within tolerance: the current count
    REBALANCED = "rebalanced"  # the second pass, with unready and missing replicas filled in
    REBALANCED_WITHIN_TOLERANCE = "rebalanced_within_tolerance"  # …whose ratio is within tolerance
    DIRECTION_CHANGED = "direction_changed"  # …which would reverse the direction: the current count
    FROM_ZERO = "from_zero"  # a service-level metric at zero replicas: ceil(value / target)
    FAILED = "failed"  # no proposal: see ``error``


@dataclass(frozen=True, kw_only=True)
class ReplicaCounts:
    """How a per-replica metric sorted the replicas (see the module docstring)."""

    ready: int = 0
    unready: int = 0
    missing: int = 0
    ignored: int = 0
    unmatched: int = 0  # samples that matched no replica (replica_average)


@dataclass(frozen=True, kw_only=True)
class MetricResult:
    """One metric's part in a decision: its proposal (None when it failed) and the numbers behind it.

    ``target`` is in the metric's own unit (percent for cpu/memory, milli-units otherwise).
    ``average`` is the per-replica average of the first pass (cpu millicores, memory bytes, milli-units
    for ``replica_average``; for ``average_value``, ``ceil(value / current)``). ``measured`` is how many
    replicas the proposal was computed over (ready ones, all counted ones after rebalancing, or the
    ready replicas of a ``value`` metric).
    """

    index: int
    kind: str
    label: str
    target: int
    proposal: int | None
    outcome: Outcome
    error: str | None = None
    ratio: float | None = None
    utilization_percent: int | None = None
    average: int | None = None
    value: int | None = None
    counts: ReplicaCounts | None = None
    measured: int | None = None
    rebalanced_ratio: float | None = None
    rebalanced_utilization_percent: int | None = None
    rebalanced_average: int | None = None


def compute(metric: Metric, *, index: int, current_replicas: int, tolerance: Tolerance) -> MetricResult:
    """What ``metric`` (the ``index``-th of the service) asks for at ``current_replicas``."""
    if isinstance(metric, ResourceMetric):
        return _resource(metric, index, current_replicas, tolerance)
    if isinstance(metric, ReplicaAverageMetric):
        return _replica_average(metric, index, current_replicas, tolerance)
    if isinstance(metric, ValueMetric):
        return _value(metric, index, current_replicas, tolerance)
    return _average_value(metric, index, current_replicas, tolerance)


@dataclass
class _Groups:
    ready: list[ReplicaSample] = field(default_factory=list)
    unready: list[ReplicaSample] = field(default_factory=list)
    missing: list[ReplicaSample] = field(default_factory=list)
    ignored: list[ReplicaSample] = field(default_factory=list)

    def counts(self, unmatched: int = 0) -> ReplicaCounts:
        return ReplicaCounts(ready=len(self.ready), unready=len(self.unready), missing=len(self.missing),
                             ignored=len(self.ignored), unmatched=unmatched)


def _group(replicas: tuple[ReplicaSample, ...], *, cpu_readiness: bool) -> _Groups:
    """Kubernetes' ``groupPods``, in its order: a pending replica is unready even with a sample, and a
    running one without a sample is missing even if it is not ready."""
    groups = _Groups()
    for r in replicas:
        if r.state in (ReplicaState.EXITED, ReplicaState.TERMINATING):
            groups.ignored.append(r)
        elif r.state is ReplicaState.PENDING:
            groups.unready.append(r)
        elif r.value is None:
            groups.missing.append(r)
        elif cpu_readiness and (not r.ready or r.recently_started):
            # Only cpu: a start-up burst would inflate the average. Memory and other metrics take the
            # samples of running replicas whatever their readiness.
            groups.unready.append(r)
        else:
            groups.ready.append(r)
    return groups


def _utilization(samples: list[tuple[int, int]], target_percent: int) -> tuple[float, int, int]:
    """``GetResourceUtilizationRatio`` over (usage, request) pairs in milli-units: the ratio, the
    utilization in percent (int32) and the average usage."""
    total_usage = sum(u for u, _ in samples)
    total_request = sum(r for _, r in samples)
    utilization = saturate_int32(div_trunc(total_usage * 100, total_request))
    return float(utilization) / float(target_percent), utilization, div_trunc(total_usage, len(samples))


def _usage(values: list[int], target: int) -> tuple[float, int]:
    """``GetMetricUsageRatio``: the ratio and the truncated average (an average of int64s fits int64)."""
    average = div_trunc(sum(values), len(values))
    return float(average) / float(target), average


def _after_rebalance(ratio: float, new_ratio: float, counted: int, current: int,
                     tolerance: Tolerance) -> tuple[int, Outcome]:
    """The end of the rebalanced pass: the "no direction change" rules."""
    if tolerance.within(new_ratio):
        return current, Outcome.REBALANCED_WITHIN_TOLERANCE
    if (ratio < 1.0 and new_ratio > 1.0) or (ratio > 1.0 and new_ratio < 1.0):
        return current, Outcome.DIRECTION_CHANGED
    proposal = ceil_int32(new_ratio * float(counted))
    if (new_ratio < 1.0 and proposal > current) or (new_ratio > 1.0 and proposal < current):
        return current, Outcome.DIRECTION_CHANGED
    return proposal, Outcome.REBALANCED


def _failed(metric: Metric, index: int, target: int, error: str, *,
            counts: ReplicaCounts | None = None) -> MetricResult:
    return MetricResult(index=index, kind=metric.kind, label=metric_label(metric), target=target,
                        proposal=None, outcome=Outcome.FAILED, error=error, counts=counts)


def _no_samples(groups: _Groups) -> str:
    parts = [f"{n} {what}" for n, what in ((len(groups.unready), "unready"),
                                          (len(groups.missing), "without a sample"),
                                          (len(groups.ignored), "exited or terminating")) if n]
    return "no ready replica has a sample" + (f" ({', '.join(parts)})" if parts else "")


def _resource(m: ResourceMetric, index: int, current: int, tolerance: Tolerance) -> MetricResult:
    target = m.target_utilization_percent
    if m.error is not None:
        return _failed(m, index, target, m.error)
    if not m.replicas:
        return _failed(m, index, target, "no replicas to measure")
    groups = _group(m.replicas, cpu_readiness=m.resource is Resource.CPU)
    if not groups.ready:
        return _failed(m, index, target, _no_samples(groups), counts=groups.counts())
    for r in m.replicas:
        # Kubernetes needs the request of every replica of the service, measured or not.
        if not r.request:
            return _failed(m, index, target, f"replica {r.id} has no {m.resource.value} request",
                           counts=groups.counts())
    # Kubernetes works in milli-units: millicores for cpu, milli-bytes for memory.
    scale = 1000 if m.resource is Resource.MEMORY else 1

    def request(r: ReplicaSample) -> int:
        assert r.request is not None  # checked above
        return r.request * scale

    samples = [(r.value * scale, request(r)) for r in groups.ready if r.value is not None]
    ratio, utilization, average = _utilization(samples, target)
    base = MetricResult(index=index, kind=m.kind, label=metric_label(m), target=target, proposal=current,
                        outcome=Outcome.WITHIN_TOLERANCE, ratio=ratio, utilization_percent=utilization,
                        average=div_trunc(average, scale), counts=groups.counts(), measured=len(samples))

    scale_up_with_unready = bool(groups.unready) and ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if tolerance.within(ratio):
            return base
        return replace(base, proposal=ceil_int32(ratio * float(len(samples))), outcome=Outcome.PROPORTIONAL)

    rebalanced = list(samples)
    if groups.missing:
        if ratio < 1.0:
            # Scaling down: a replica without a sample counts as using its whole request, or the
            # target when that is above 100% (it must not hide load the others cannot see).
            fallback = max(100, target)
            rebalanced += [(div_trunc(request(r) * fallback, 100), request(r)) for r in groups.missing]
        elif ratio > 1.0:
            rebalanced += [(0, request(r)) for r in groups.missing]
    if scale_up_with_unready:
        rebalanced += [(0, request(r)) for r in groups.unready]
    new_ratio, new_utilization, new_average = _utilization(rebalanced, target)
    proposal, outcome = _after_rebalance(ratio, new_ratio, len(rebalanced), current, tolerance)
    return replace(base, proposal=proposal, outcome=outcome, measured=len(rebalanced),
                    rebalanced_ratio=new_ratio, rebalanced_utilization_percent=new_utilization,
                    rebalanced_average=div_trunc(new_average, scale))


def _replica_average(m: ReplicaAverageMetric, index: int, current: int, tolerance: Tolerance) -> MetricResult:
    target = m.target_average_milli
    if m.error is not None:
        return _failed(m, index, target, m.error)
    if not m.replicas:
        return _failed(m, index, target, "no replicas to measure")
    groups = _group(m.replicas, cpu_readiness=False)
    unmatched = list(m.unmatched_samples_milli)
    counts = groups.counts(unmatched=len(unmatched))
    # Samples matching no replica stay in the average (and in the rebalanced count), as in Kubernetes,
    # but not in the ready count of the first pass.
    values = [r.value for r in groups.ready if r.value is not None] + unmatched
    if not values:
        return _failed(m, index, target, _no_samples(groups), counts=counts)
    ratio, average = _usage(values, target)
    base = MetricResult(index=index, kind=m.kind, label=metric_label(m), target=target, proposal=current,
                        outcome=Outcome.WITHIN_TOLERANCE, ratio=ratio, average=average, counts=counts,
                        measured=len(groups.ready))

    scale_up_with_unready = bool(groups.unready) and ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if tolerance.within(ratio):
            return base
        return replace(base, proposal=ceil_int32(ratio * float(len(groups.ready))),
                        outcome=Outcome.PROPORTIONAL)

    rebalanced = list(values)
    if groups.missing:
        if ratio < 1.0:
            rebalanced += [target] * len(groups.missing)  # scaling down: missing ones are at the target
        elif ratio > 1.0:
            rebalanced += [0] * len(groups.missing)
    if scale_up_with_unready:
        rebalanced += [0] * len(groups.unready)
    new_ratio, new_average = _usage(rebalanced, target)
    proposal, outcome = _after_rebalance(ratio, new_ratio, len(rebalanced), current, tolerance)
    return replace(base, proposal=proposal, outcome=outcome, measured=len(rebalanced),
                    rebalanced_ratio=new_ratio, rebalanced_average=new_average)


def _value(m: ValueMetric, index: int, current: int, tolerance: Tolerance) -> MetricResult:
    target = m.target_milli
    if m.error is not None:
        return _failed(m, index, target, m.error)
    if m.value_milli is None:
        return _failed(m, index, target, "no value")
    ratio = float(m.value_milli) / float(target)
    base = MetricResult(index=index, kind=m.kind, label=metric_label(m), target=target, proposal=current,
                        outcome=Outcome.WITHIN_TOLERANCE, ratio=ratio, value=m.value_milli,
                        measured=m.ready_replicas)
    if current == 0:
        # Scale from zero: no ready replicas to multiply by, and no tolerance.
        return replace(base, proposal=ceil_int32(ratio), outcome=Outcome.FROM_ZERO, measured=None)
    if tolerance.within(ratio):
        return base
    return replace(base, proposal=ceil_int32(ratio * float(m.ready_replicas)), outcome=Outcome.PROPORTIONAL)


def _average_value(m: AverageValueMetric, index: int, current: int, tolerance: Tolerance) -> MetricResult:
    target = m.target_average_milli
    if m.error is not None:
        return _failed(m, index, target, m.error)
    if m.value_milli is None:
        return _failed(m, index, target, "no value")
    value = m.value_milli
    if current == 0:
        # Go's float division by zero: ±Inf, or NaN for 0/0; neither is within tolerance.
        ratio = math.inf if value > 0 else -math.inf if value < 0 else math.nan
        average = None
    else:
        ratio = float(value) / (float(target) * float(current))
        average = MAX_INT64 if float(value) >= float(MAX_INT64) else ceil_int64(float(value) / float(current))
    base = MetricResult(index=index, kind=m.kind, label=metric_label(m), target=target, proposal=current,
                        outcome=Outcome.WITHIN_TOLERANCE, ratio=ratio, value=value, average=average)
    if tolerance.within(ratio):
        return base
    return replace(base, proposal=ceil_int32(float(value) / float(target)),
                    outcome=Outcome.FROM_ZERO if current == 0 else Outcome.PROPORTIONAL)
