"""What one decision is made from, gathered as the replay input (docs/autoscaling.md's JSON format).

``decision_input`` is pure: from a service's policy, its replica records, the replicas' latest usage
(the agents' 1 s stream), the answers to its Prometheus queries and the autoscaler's history, it builds
the JSON object ``shoal autoscale replay`` reads. The loop passes that very object to the decision
function and records it with the decision, so every recorded decision can be replayed exactly.

Mapping from what the scheduler knows to HPA's terms:

* a replica's ``state``: pending or starting → ``pending``; running → ``running``; failed → ``exited``;
  stopping → ``terminating``;
* ``ready``: the replica is running and ready (health check passing, or none);
* cpu readiness, as HPA's: within the cpu initialization period after its start (HPA's
  ``cpuInitializationPeriod``; Shoal's default is 15 s, not 5 minutes, because it samples every second,
  not every 15 s) a replica's cpu counts only when it is ready and its sample does not cover its start
  (``recently_started``: taken less than ``SAMPLE_WINDOW`` after it); past that period every running
  replica's sample counts (HPA leaves out only replicas never ready, which Shoal does not track: a
  replica whose health check never passed is counted once the period is over);
* usage: ``cpu_usage_milli`` is cores * 1000 over the agent's last interval, ``memory_usage_bytes`` the
  working set; no sample (a host not reporting, a container just created) leaves the key out;
* a per-replica Prometheus sample belongs to the replica named by its ``per_replica_label`` label (several
  series of one replica are summed); samples naming no replica of the service are
  ``unmatched_samples_milli``; a service-level query's samples are summed (HPA does the same for External
  metrics); a query that failed gives the metric an ``error`` instead of values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.autoscale.prometheus import QueryResult
from scheduler.model import (
    AutoscaleStatus,
    MetricKind,
    MetricTarget,
    Replica,
    ReplicaPhase,
    ScalingRules,
    Service,
)
from scheduler.observed import ContainerUsage

CPU_INITIALIZATION_PERIOD = 15.0
SAMPLE_WINDOW = 2.0  # a cpu sample taken this soon after the start may cover start-up work

_STATE = {ReplicaPhase.PENDING: "pending", ReplicaPhase.STARTING: "pending",
          ReplicaPhase.RUNNING: "running", ReplicaPhase.FAILED: "exited",
          ReplicaPhase.STOPPING: "terminating"}


def milli(value: float) -> int:
    return round(value * 1000)


def decision_input(service: Service, replicas: Sequence[Replica], *, usage: Mapping[str, ContainerUsage],
                   queries: Mapping[str, QueryResult], history: AutoscaleStatus | None, now: float,
                   cpu_initialization_period: float = CPU_INITIALIZATION_PERIOD) -> dict[str, Any]:
    """The replay input for ``service`` now. ``queries`` maps each PromQL text to its answer."""
    policy = service.spec.autoscale
    assert policy is not None, "only autoscaled services are decided on"
    own = sorted((r for r in replicas if r.service == service.name), key=lambda r: r.id)
    metrics = [_metric(m, service, own, usage=usage, queries=queries, now=now,
                       init=cpu_initialization_period) for m in policy.metrics]
    behavior = policy.behavior
    return {
        "current_replicas": service.spec.replicas,
        "min_replicas": policy.min_replicas,
        "max_replicas": policy.max_replicas,
        "tolerance": {"scale_up": policy.tolerance_up, "scale_down": policy.tolerance_down},
        "metrics": metrics,
        "behavior": {"scale_up": _rules(behavior.scale_up), "scale_down": _rules(behavior.scale_down)},
        "history": _history(history, now),
    }


def _rules(rules: ScalingRules) -> dict[str, Any]:
    return {"stabilization_window_seconds": rules.stabilization_window_seconds,
            "select_policy": rules.select_policy,
            "policies": [{"type": p.type, "value": p.value, "period_seconds": p.period_seconds}
                         for p in rules.policies]}


def _history(history: AutoscaleStatus | None, now: float) -> dict[str, Any] | None:
    if history is None:
        return None

    def age(at: float) -> float:
        return round(max(0.0, now - at), 3)

    return {"recommendations": [{"replicas": r.replicas, "age_seconds": age(r.time)}
                                for r in history.recommendations],
            "scale_up_events": [{"change": e.change, "age_seconds": age(e.time)}
                                for e in history.scale_up_events],
            "scale_down_events": [{"change": e.change, "age_seconds": age(e.time)}
                                  for e in history.scale_down_events]}


def _replica(r: Replica) -> dict[str, Any]:
    return {"id": r.id, "state": _STATE[r.phase], "ready": r.ready and r.phase is ReplicaPhase.RUNNING}


def _metric(target: MetricTarget, service: Service, replicas: Sequence[Replica], *,
            usage: Mapping[str, ContainerUsage], queries: Mapping[str, QueryResult], now: float,
            init: float) -> dict[str, Any]:
    facts = service.spec.facts
    if target.kind is MetricKind.CPU:
        rows = []
        for r in replicas:
            row = {**_replica(r), "cpu_request_milli": facts.cpu_millis, "recently_started": False}
            sample = usage.get(r.id)
            if sample is not None and r.phase is ReplicaPhase.RUNNING:
                row["cpu_usage_milli"] = sample.cpu_milli
                if sample.started_at and now - sample.started_at >= init:
                    row["ready"] = True  # past start-up, HPA counts every replica's samples
                elif sample.started_at:
                    row["recently_started"] = sample.at - sample.started_at < SAMPLE_WINDOW
            rows.append(row)
        return {"type": "cpu", "target_utilization_percent": target.target_utilization_percent,
                "replicas": rows}
    if target.kind is MetricKind.MEMORY:
        rows = []
        for r in replicas:
            row = {**_replica(r), "memory_request_bytes": facts.memory_bytes}
            sample = usage.get(r.id)
            if sample is not None and r.phase is ReplicaPhase.RUNNING:
                row["memory_usage_bytes"] = sample.memory_bytes
            rows.append(row)
        return {"type": "memory", "target_utilization_percent": target.target_utilization_percent,
                "replicas": rows}
    answer = queries.get(target.query, QueryResult(error="not queried"))
    if target.per_replica_label:
        out: dict[str, Any] = {"type": "replica_average", "name": target.query,
                               "target_average_milli": target.target_average_value_milli}
        if answer.error:
            return {**out, "error": answer.error, "replicas": [_replica(r) for r in replicas]}
        known = {r.id for r in replicas}
        values: dict[str, float] = {}
        unmatched: list[int] = []
        for series in answer.samples:
            owner = series.labels.get(target.per_replica_label, "")
            if owner in known:
                values[owner] = values.get(owner, 0.0) + series.value
            else:
                unmatched.append(milli(series.value))
        rows = [{**_replica(r), **({"value_milli": milli(values[r.id])} if r.id in values else {})}
                for r in replicas]
        return {**out, "replicas": rows, "unmatched_samples_milli": unmatched}
    if target.target_value_milli:
        out = {"type": "value", "name": target.query, "target_milli": target.target_value_milli,
               "ready_replicas": sum(1 for r in replicas if r.ready and r.phase is ReplicaPhase.RUNNING)}
    else:
        out = {"type": "average_value", "name": target.query,
               "target_average_milli": target.target_average_value_milli}
    if answer.error:
        return {**out, "error": answer.error}
    return {**out, "value_milli": milli(sum(s.value for s in answer.samples))}


__all__ = ["CPU_INITIALIZATION_PERIOD", "SAMPLE_WINDOW", "decision_input", "milli"]
