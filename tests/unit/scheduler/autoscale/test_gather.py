"""The replay input the loop builds from what the scheduler knows (docs/autoscaling.md's format)."""

from __future__ import annotations

from scheduler.autoscale.gather import decision_input
from scheduler.autoscale.prometheus import QueryResult, Sample
from scheduler.model import (
    Autoscale,
    AutoscaleStatus,
    MetricKind,
    MetricTarget,
    Recommendation,
    Replica,
    ReplicaId,
    ReplicaPhase,
    ScaleEvent,
    Service,
    ServiceName,
    ServiceSpec,
    TemplateFacts,
)
from scheduler.observed import ContainerUsage

NOW = 1000.0
QUERY = "rate(jobs_total[30s])"


def service(*metrics: MetricTarget, replicas: int = 3) -> Service:
    policy = Autoscale(min_replicas=1, max_replicas=10, metrics=metrics, tolerance_up=0.2)
    spec = ServiceSpec(name=ServiceName("web"), replicas=replicas, template_json="{}",
                       facts=TemplateFacts(image="x", cpu_millis=500, memory_bytes=64 << 20),
                       autoscale=policy)
    return Service(spec=spec, generation=4, template_generation=1)


def replica(rid: str, phase: ReplicaPhase = ReplicaPhase.RUNNING, ready: bool = True,
            svc: str = "web") -> Replica:
    return Replica(id=ReplicaId(rid), service=ServiceName(svc), generation=1, phase=phase, ready=ready)


REPLICAS = [replica("web-1"), replica("web-2", ready=False), replica("web-3", ReplicaPhase.STARTING, False),
            replica("web-4", ReplicaPhase.STOPPING, False), replica("web-5", ReplicaPhase.FAILED, False),
            replica("api-1", svc="api")]
USAGE = {"web-1": ContainerUsage(cpu_milli=400, memory_bytes=30 << 20, started_at=NOW - 100, at=NOW),
         "web-2": ContainerUsage(cpu_milli=900, memory_bytes=10 << 20, started_at=NOW - 1, at=NOW)}


def test_cpu_rows_carry_state_readiness_start_and_usage() -> None:
    inp = decision_input(service(MetricTarget(MetricKind.CPU, target_utilization_percent=60)), REPLICAS,
                         usage=USAGE, queries={}, history=None, now=NOW)
    assert inp["current_replicas"] == 3 and (inp["min_replicas"], inp["max_replicas"]) == (1, 10)
    assert inp["tolerance"] == {"scale_up": 0.2, "scale_down": 0.1}
    assert inp["history"] is None
    assert inp["behavior"]["scale_down"]["stabilization_window_seconds"] == 300
    (cpu,) = inp["metrics"]
    assert cpu["type"] == "cpu" and cpu["target_utilization_percent"] == 60
    assert [(r["id"], r["state"], r["ready"], r["recently_started"], r.get("cpu_usage_milli"))
            for r in cpu["replicas"]] == [
        ("web-1", "running", True, False, 400),
        ("web-2", "running", False, True, 900),    # started 1 s ago: its sample covers its start
        ("web-3", "pending", False, False, None),  # no sample: the key is left out
        ("web-4", "terminating", False, False, None),
        ("web-5", "exited", False, False, None),
    ]
    assert all(r["cpu_request_milli"] == 500 for r in cpu["replicas"])


def test_memory_rows() -> None:
    inp = decision_input(service(MetricTarget(MetricKind.MEMORY, target_utilization_percent=80)), REPLICAS,
                         usage=USAGE, queries={}, history=None, now=NOW)
    rows = {r["id"]: r for r in inp["metrics"][0]["replicas"]}
    assert rows["web-1"]["memory_usage_bytes"] == 30 << 20
    assert rows["web-1"]["memory_request_bytes"] == 64 << 20
    assert "memory_usage_bytes" not in rows["web-3"]


def test_per_replica_prometheus_samples_go_to_their_replicas_and_the_rest_is_unmatched() -> None:
    target = MetricTarget(MetricKind.PROMETHEUS, query=QUERY, per_replica_label="replica",
                          target_average_value_milli=5000)
    answer = QueryResult(samples=(Sample({"replica": "web-1"}, 2.5), Sample({"replica": "web-1"}, 0.5),
                                  Sample({"replica": "gone-9"}, 7.0), Sample({}, 1.0)))
    inp = decision_input(service(target), REPLICAS, usage={}, queries={QUERY: answer}, history=None, now=NOW)
    metric = inp["metrics"][0]
    assert metric["type"] == "replica_average" and metric["target_average_milli"] == 5000
    values = {r["id"]: r.get("value_milli") for r in metric["replicas"]}
    assert values["web-1"] == 3000 and values["web-2"] is None
    assert sorted(metric["unmatched_samples_milli"]) == [1000, 7000]


def test_service_level_values_are_summed_and_errors_kept() -> None:
    value = MetricTarget(MetricKind.PROMETHEUS, query=QUERY, target_value_milli=100_000)
    average = MetricTarget(MetricKind.PROMETHEUS, query="other", target_average_value_milli=10_000)
    answers = {QUERY: QueryResult(samples=(Sample({"a": "1"}, 60.0), Sample({"a": "2"}, 90.5))),
               "other": QueryResult(error="prometheus at http://p: no answer within 0.8s")}
    inp = decision_input(service(value, average), REPLICAS, usage={}, queries=answers, history=None, now=NOW)
    first, second = inp["metrics"]
    assert first == {"type": "value", "name": QUERY, "target_milli": 100_000, "value_milli": 150_500,
                     "ready_replicas": 1}
    assert second == {"type": "average_value", "name": "other", "target_average_milli": 10_000,
                      "error": "prometheus at http://p: no answer within 0.8s"}


def test_history_times_become_ages() -> None:
    history = AutoscaleStatus(service=ServiceName("web"), recommendations=(Recommendation(NOW - 10, 4),),
                              scale_up_events=(ScaleEvent(NOW - 20, 2),))
    inp = decision_input(service(MetricTarget(MetricKind.CPU, target_utilization_percent=60)), [],
                         usage={}, queries={}, history=history, now=NOW)
    assert inp["history"] == {"recommendations": [{"replicas": 4, "age_seconds": 10.0}],
                              "scale_up_events": [{"change": 2, "age_seconds": 20.0}],
                              "scale_down_events": []}


def test_past_the_initialization_period_every_running_replica_counts() -> None:
    late = {"web-2": ContainerUsage(cpu_milli=900, memory_bytes=0, started_at=NOW - 20, at=NOW),
            "web-1": ContainerUsage(cpu_milli=400, memory_bytes=0, started_at=NOW - 5, at=NOW)}
    inp = decision_input(service(MetricTarget(MetricKind.CPU, target_utilization_percent=60)), REPLICAS,
                         usage=late, queries={}, history=None, now=NOW)
    rows = {r["id"]: r for r in inp["metrics"][0]["replicas"]}
    assert (rows["web-2"]["ready"], rows["web-2"]["recently_started"]) == (True, False)  # not ready, 20 s
    assert (rows["web-1"]["ready"], rows["web-1"]["recently_started"]) == (True, False)  # ready, 5 s, settled
