"""A reconcile pass decides off the event loop: its cost grows with the cluster, and on the loop it
stalled the lease keepalive, the agents' streams and the API for as long (docs/scaling.md: at 100
hosts and 2,000 replicas the leader lost its term every few seconds)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from scheduler import reconcile
from scheduler.controller import Controller, ControllerSettings, Mirror
from scheduler.model import Service, ServiceName, ServiceSpec, TemplateFacts
from scheduler.placement.registry import default_profile
from scheduler.store import base
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord


def test_the_pass_decides_on_a_worker_thread_and_commits_its_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real_step = reconcile.step

    def step(world: reconcile.World, **kw: object) -> reconcile.Plan:
        threads.append(threading.get_ident())
        return real_step(world, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(reconcile, "step", step)  # the controller calls reconcile.step

    async def go() -> tuple[int, int]:
        store = MemoryStore()
        lease = await store.grant_lease(10)
        leader = await store.campaign(LeaderRecord(instance="one"), lease_id=lease.id)
        spec = ServiceSpec(name=ServiceName("web"), replicas=2, template_json="{}",
                           facts=TemplateFacts(image="busybox"))
        await store.commit([base.Put(Service(spec=spec, generation=1, template_generation=1))])
        settings = ControllerSettings(epoch=leader.epoch, guard=base.LeaderGuard(leader.epoch),
                                      credentials=None, profile=default_profile())
        controller = Controller(store, settings)
        controller.mirror = Mirror.of(await store.snapshot())
        await controller.step()
        await controller.actuator.close()
        return threading.get_ident(), len((await store.snapshot()).replicas)

    loop_thread, replicas = asyncio.run(asyncio.wait_for(go(), 30))
    assert threads and all(t != loop_thread for t in threads)
    assert replicas == 2  # the plan made off the loop was committed (two pending replicas, no hosts)
