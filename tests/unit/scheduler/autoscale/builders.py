"""Small constructors for autoscaling tests: replicas, metrics and inputs in one line each."""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.autoscale import hpa
from scheduler.autoscale.hpa import ReplicaState
from scheduler.model import ReplicaId

RUNNING = ReplicaState.RUNNING
PENDING = ReplicaState.PENDING
EXITED = ReplicaState.EXITED
TERMINATING = ReplicaState.TERMINATING


def replica(rid: str, value: int | None, *, request: int | None = 1000, ready: bool = True,
            state: ReplicaState = RUNNING, recently_started: bool = False) -> hpa.ReplicaSample:
    return hpa.ReplicaSample(id=ReplicaId(rid), state=state, ready=ready, recently_started=recently_started,
                             value=value, request=request)


def replicas(*values: int | None, request: int = 1000) -> tuple[hpa.ReplicaSample, ...]:
    """Ready running replicas r0, r1, … with these usages and one request."""
    return tuple(replica(f"r{i}", v, request=request) for i, v in enumerate(values))


def cpu(target: int, reps: Sequence[hpa.ReplicaSample], *, name: str = "",
        error: str | None = None) -> hpa.ResourceMetric:
    return hpa.ResourceMetric(resource=hpa.Resource.CPU, target_utilization_percent=target,
                              replicas=tuple(reps), name=name, error=error)


def memory(target: int, reps: Sequence[hpa.ReplicaSample]) -> hpa.ResourceMetric:
    return hpa.ResourceMetric(resource=hpa.Resource.MEMORY, target_utilization_percent=target,
                              replicas=tuple(reps))


def per_replica(target_milli: int, reps: Sequence[hpa.ReplicaSample], *, unmatched: Sequence[int] = (),
                name: str = "") -> hpa.ReplicaAverageMetric:
    return hpa.ReplicaAverageMetric(target_average_milli=target_milli, replicas=tuple(reps),
                                    unmatched_samples_milli=tuple(unmatched), name=name)


def value(target_milli: int, value_milli: int | None, *, ready: int = 0, name: str = "",
          error: str | None = None) -> hpa.ValueMetric:
    return hpa.ValueMetric(target_milli=target_milli, value_milli=value_milli, ready_replicas=ready,
                           name=name, error=error)


def average_value(target_milli: int, value_milli: int | None, *, name: str = "") -> hpa.AverageValueMetric:
    return hpa.AverageValueMetric(target_average_milli=target_milli, value_milli=value_milli, name=name)


def decision_input(*metrics: hpa.Metric, current: int, min_replicas: int = 1, max_replicas: int = 100,
                   behavior: hpa.Behavior | None = None, tolerance: hpa.Tolerance | None = None,
                   downscale_stabilization_seconds: int = 300,
                   history: hpa.History | None = None) -> hpa.DecisionInput:
    return hpa.DecisionInput(current_replicas=current, min_replicas=min_replicas, max_replicas=max_replicas,
                             metrics=metrics, behavior=behavior, tolerance=tolerance or hpa.Tolerance(),
                             downscale_stabilization_seconds=downscale_stabilization_seconds,
                             history=history or hpa.History())


def recommendations(*pairs: tuple[int, float]) -> hpa.History:
    """A history of (replicas, age) recommendations, for a decision at now = 0."""
    return hpa.History(recommendations=tuple(hpa.Recommendation(replicas=r, at=-age) for r, age in pairs))


def events(*, up: Sequence[tuple[int, float]] = (), down: Sequence[tuple[int, float]] = (),
           recs: Sequence[tuple[int, float]] = ()) -> hpa.History:
    """A history of (change, age) scale events and (replicas, age) recommendations, for now = 0."""
    return hpa.History(
        recommendations=tuple(hpa.Recommendation(replicas=r, at=-age) for r, age in recs),
        scale_up_events=tuple(hpa.ScaleEvent(change=c, at=-age) for c, age in up),
        scale_down_events=tuple(hpa.ScaleEvent(change=c, at=-age) for c, age in down))


def policy(kind: str, value: int, period: int) -> hpa.ScalingPolicy:
    return hpa.ScalingPolicy(type=hpa.PolicyType(kind), value=value, period_seconds=period)
