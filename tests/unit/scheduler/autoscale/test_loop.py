"""The loop's bookkeeping and one tick against the in-memory store, with the real rules."""

from __future__ import annotations

import asyncio
import json

import pytest

from scheduler.autoscale.loop import (
    Autoscaler,
    AutoscalerSettings,
    Outcome,
    evaluate,
    updated_status,
    worth_recording,
)
from scheduler.model import (
    Autoscale,
    AutoscaleDecision,
    AutoscaleStatus,
    MetricKind,
    MetricTarget,
    Replica,
    ReplicaId,
    ReplicaPhase,
    Service,
    ServiceName,
    ServiceSpec,
    TemplateFacts,
)
from scheduler.observed import ContainerUsage
from scheduler.store import base
from scheduler.store.errors import NotLeader
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord

WEB = ServiceName("web")
NOW = 10_000.0


def cpu_input(usage: list[int], current: int | None = None) -> dict[str, object]:
    rows = [{"id": f"r{i}", "cpu_request_milli": 100, "cpu_usage_milli": u} for i, u in enumerate(usage)]
    return {"current_replicas": current or len(usage), "min_replicas": 1, "max_replicas": 10,
            "metrics": [{"type": "cpu", "target_utilization_percent": 50, "replicas": rows}],
            "behavior": {"scale_up": {"stabilization_window_seconds": 0, "select_policy": "max", "policies": [
                {"type": "replicas", "value": 4, "period_seconds": 15}]}}}


def test_evaluate_decides_and_gives_the_history_after() -> None:
    up = evaluate(cpu_input([100, 100]))
    assert up.outcome.desired == 4 and up.output["desired_replicas"] == 4
    assert up.history is not None
    assert [r.replicas for r in up.history.recommendations] == [2, 4]  # seeded with the current count
    assert [e.change for e in up.history.scale_up_events] == [2]
    refused = evaluate({"current_replicas": 2, "max_replicas": 3, "metrics": [{"type": "cpu"}]})
    assert refused.outcome.desired is None and refused.history is None
    assert "metrics[0]" in refused.outcome.error


def test_the_status_takes_the_rules_history_with_absolute_times() -> None:
    evaluation = evaluate(cpu_input([100, 100]))
    status = updated_status(AutoscaleStatus(service=WEB), now=NOW, current=2, evaluation=evaluation,
                            input_json="{}", record=True)
    assert [(r.time, r.replicas) for r in status.recommendations] == [(NOW, 2), (NOW, 4)]
    assert [(e.time, e.change) for e in status.scale_up_events] == [(NOW, 2)]
    assert status.decisions[-1].desired_replicas == 4 and status.decisions[-1].input_json == "{}"
    quiet = updated_status(status, now=NOW + 1, current=4, evaluation=evaluate(cpu_input([50] * 4)),
                           input_json="", record=False)
    assert quiet.decisions == status.decisions  # (that input had no history: seeded again)
    assert [(r.time, r.replicas) for r in quiet.recommendations] == [(NOW + 1, 4), (NOW + 1, 4)]


def test_what_is_recorded() -> None:
    empty = AutoscaleStatus(service=WEB)
    assert worth_recording(empty, now=1, current=3, outcome=Outcome(3, "steady"), every=10)
    last = AutoscaleStatus(service=WEB, decisions=(AutoscaleDecision(100.0, 3, 3, "steady"),))
    assert not worth_recording(last, now=200, current=3, outcome=Outcome(3, "steady"), every=10)
    assert not worth_recording(last, now=105, current=3, outcome=Outcome(3, "other"), every=10)
    assert worth_recording(last, now=111, current=3, outcome=Outcome(3, "other"), every=10)
    assert worth_recording(last, now=101, current=3, outcome=Outcome(4, "up"), every=10)  # a scale: always


def autoscaled(replicas: int) -> Service:
    policy = Autoscale(min_replicas=1, max_replicas=10,
                       metrics=(MetricTarget(MetricKind.CPU, target_utilization_percent=50),))
    spec = ServiceSpec(name=WEB, replicas=replicas, template_json="{}",
                       facts=TemplateFacts(image="x", cpu_millis=100), autoscale=policy)
    return Service(spec=spec, generation=2, template_generation=1)


def running(rid: str) -> Replica:
    return Replica(id=ReplicaId(rid), service=WEB, generation=1, phase=ReplicaPhase.RUNNING, ready=True)


def test_a_tick_writes_the_new_count_and_the_record_under_the_leaders_guard() -> None:
    async def go() -> None:
        store = MemoryStore()
        lease = await store.grant_lease(10)
        leader = await store.campaign(LeaderRecord(instance="me", address="", acquired_at=0.0),
                                      lease_id=lease.id)
        await store.commit([base.Put(autoscaled(2)), base.Put(running("web-1")), base.Put(running("web-2"))])
        usage = {rid: ContainerUsage(cpu_milli=100, memory_bytes=0, started_at=1.0, at=2.0)
                 for rid in ("web-1", "web-2")}
        snap = await store.snapshot()
        written: list[base.Committed] = []

        def scaler(epoch: int) -> Autoscaler:
            return Autoscaler(store, AutoscalerSettings(guard=base.LeaderGuard(epoch)),
                              services=lambda: snap.services, replicas=lambda: snap.replicas,
                              statuses=lambda: snap.autoscale, usage=lambda: usage, on_written=written.append)

        await scaler(leader.epoch).tick()
        after = await store.snapshot()
        assert after.services[WEB].spec.replicas == 4 and after.services[WEB].generation == 3
        status = after.autoscale[WEB]
        assert [e.change for e in status.scale_up_events] == [2]
        decision = status.decisions[-1]
        assert (decision.current_replicas, decision.desired_replicas) == (2, 4)
        assert "cpu 100% of target 50% on 2 ready replicas" in decision.reason
        assert json.loads(decision.input_json)["current_replicas"] == 2  # replayable
        assert written
        # A deposed leader's decision (its term's guard no longer holds) writes nothing.
        snap = await store.snapshot()
        usage = {rid: ContainerUsage(cpu_milli=200, memory_bytes=0, started_at=1.0, at=3.0)
                 for rid in ("web-1", "web-2")}
        with pytest.raises(NotLeader):
            await scaler(leader.epoch + 99).tick()
        assert (await store.snapshot()).services[WEB].spec.replicas == 4

    asyncio.run(go())
