"""The loop's bookkeeping (pure) and one tick against the in-memory store with a stand-in decision."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scheduler.autoscale.loop import (
    Autoscaler,
    AutoscalerSettings,
    Outcome,
    outcome_of,
    updated_status,
    worth_recording,
)
from scheduler.model import (
    Autoscale,
    AutoscaleDecision,
    AutoscaleStatus,
    MetricKind,
    MetricTarget,
    Recommendation,
    ScaleEvent,
    Service,
    ServiceName,
    ServiceSpec,
    TemplateFacts,
)
from scheduler.store import base
from scheduler.store.errors import NotLeader
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord

WEB = ServiceName("web")


def test_outcome_of_the_rendered_decision() -> None:
    assert outcome_of({"desired_replicas": 5, "reason": "cpu 120% → 5"}) == Outcome(5, 5, "cpu 120% → 5")
    assert outcome_of({"desired_replicas": 4, "recommendation": 6, "reason": "r"}).recommendation == 6
    assert outcome_of({"error": "no metric"}) == Outcome(None, None, "no metric", "no metric")


def test_the_status_remembers_recommendations_and_events_and_prunes_old_ones() -> None:
    old = AutoscaleStatus(service=WEB, recommendations=(Recommendation(0.0, 3), Recommendation(9000.0, 4)),
                          scale_down_events=(ScaleEvent(100.0, 1),))
    up = updated_status(old, now=10_000.0, current=3, outcome=Outcome(5, 6, "up"), input_json="{}",
                        record=True)
    assert up.recommendations == (Recommendation(9000.0, 4), Recommendation(10_000.0, 6))
    assert up.scale_up_events == (ScaleEvent(10_000.0, 2),) and up.scale_down_events == ()
    assert up.decisions == (AutoscaleDecision(10_000.0, 3, 5, "up", input_json="{}"),)
    down = updated_status(up, now=10_001.0, current=5, outcome=Outcome(2, 2, "down"), input_json="",
                          record=False)
    assert down.scale_down_events == (ScaleEvent(10_001.0, 3),) and down.decisions == up.decisions


def test_what_is_recorded() -> None:
    empty = AutoscaleStatus(service=WEB)
    assert worth_recording(empty, now=1, current=3, outcome=Outcome(3, 3, "steady"), every=10)
    last = AutoscaleStatus(service=WEB, decisions=(AutoscaleDecision(100.0, 3, 3, "steady"),))
    assert not worth_recording(last, now=200, current=3, outcome=Outcome(3, 3, "steady"), every=10)
    assert not worth_recording(last, now=105, current=3, outcome=Outcome(3, 3, "other"), every=10)
    assert worth_recording(last, now=111, current=3, outcome=Outcome(3, 3, "other"), every=10)
    assert worth_recording(last, now=101, current=3, outcome=Outcome(4, 4, "up"), every=10)  # a scale: always


def autoscaled(replicas: int) -> Service:
    policy = Autoscale(min_replicas=1, max_replicas=10,
                       metrics=(MetricTarget(MetricKind.CPU, target_utilization_percent=50),))
    spec = ServiceSpec(name=WEB, replicas=replicas, template_json="{}",
                       facts=TemplateFacts(image="x", cpu_millis=100), autoscale=policy)
    return Service(spec=spec, generation=2, template_generation=1)


def test_a_tick_writes_the_new_count_and_the_record_under_the_leaders_guard() -> None:
    async def go() -> None:
        store = MemoryStore()
        lease = await store.grant_lease(10)
        leader = await store.campaign(LeaderRecord(instance="me", address="", acquired_at=0.0),
                                      lease_id=lease.id)
        await store.commit([base.Put(autoscaled(2))])
        seen: list[dict[str, Any]] = []

        def decide(inp: dict[str, Any]) -> dict[str, Any]:
            seen.append(inp)
            return {"desired_replicas": 4, "reason": "cpu 100% of target 50% on 2 ready replicas -> 4"}

        async def state() -> base.Snapshot:
            return await store.snapshot()

        snap = await state()
        written: list[base.Committed] = []
        scaler = Autoscaler(store, AutoscalerSettings(guard=base.LeaderGuard(leader.epoch)), decide=decide,
                            services=lambda: snap.services, replicas=lambda: snap.replicas,
                            statuses=lambda: snap.autoscale, usage=lambda: {}, on_written=written.append)
        await scaler.tick()
        after = await state()
        assert after.services[WEB].spec.replicas == 4 and after.services[WEB].generation == 3
        status = after.autoscale[WEB]
        assert status.scale_up_events[0].change == 2
        assert status.decisions[-1].reason.endswith("-> 4")
        assert '"current_replicas":2' in status.decisions[-1].input_json
        assert seen[0]["current_replicas"] == 2 and written
        # A deposed leader's decision (its term's guard no longer holds) writes nothing.
        snap = after
        stale = Autoscaler(store, AutoscalerSettings(guard=base.LeaderGuard(leader.epoch + 99)),
                           decide=lambda inp: {"desired_replicas": 6, "reason": "late"},
                           services=lambda: snap.services, replicas=lambda: snap.replicas,
                           statuses=lambda: snap.autoscale, usage=lambda: {}, on_written=written.append)
        with pytest.raises(NotLeader):
            await stale.tick()
        assert (await state()).services[WEB].spec.replicas == 4

    asyncio.run(go())
