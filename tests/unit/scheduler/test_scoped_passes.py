"""Scoped reconcile passes: a step over the services and hosts a change touched decides, for those, what a
step over everything decides; the controller scopes a pass to what changed since the last one, and still
runs a full pass on its period."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from proto.agent.v1 import agent_pb2 as pb
from scheduler import controller as controller_module
from scheduler import reconcile
from scheduler.agents import AgentSession
from scheduler.controller import Controller, ControllerSettings, Mirror
from scheduler.loop_stalls import LoopStalls
from scheduler.metrics import SchedulerMetrics
from scheduler.model import HostId, HostRecord, HostStatus, ReplicaId, ReplicaPhase, ServiceName
from scheduler.observed import ContainerState, HostObservation
from scheduler.placement.registry import default_profile
from scheduler.reconcile import AgentAction, Plan, Scope, WriteReplica
from scheduler.store import base
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord
from tests.unit.scheduler.test_reconcile import NOW, container, observe, replica, run, service, world

# -- the pure step ------------------------------------------------------------------------------------


def busy_world(**kw: Any) -> reconcile.World:
    """Services in every state at once: web (a container exited), api (short of 2 replicas), db (settled),
    old (a replica on a host that keeps failing starts), plus an orphan on h2 and one on h3."""
    web, api, db, old = service(3), service(4, name="api"), service(2, name="db"), service(1, name="old")
    replicas = [replica("web-1"), replica("web-2", host="h2"), replica("web-3", host="h3"),
                replica("api-1", service="api"), replica("api-2", host="h2", service="api"),
                replica("db-1", service="db", host="h2"), replica("db-2", service="db", host="h3"),
                replica("old-1", service="old", phase=ReplicaPhase.FAILED, ready=False,
                        reason="exited 1 (x)")]
    seen = observe(
        ("h1", [container("web-1"), container("api-1", service="api"),
                container("old-1", service="old", state=ContainerState.EXITED, exit_code=1, reason="x")]),
        ("h2", [container("web-2", state=ContainerState.EXITED, exit_code=2, reason="crash"),
                container("api-2", service="api"), container("db-1", service="db"),
                container("stray-2", service="gone")]),
        ("h3", [container("web-3"), container("db-2", service="db"), container("stray-3", service="gone")]))
    statuses = {HostId(h): HostStatus(id=HostId(h), ready=True) for h in ("h1", "h2", "h3")}
    statuses[HostId("h1")] = HostStatus(id=HostId("h1"), ready=True, start_failing=True, start_failures=3)
    return dataclasses.replace(world([web, api, db, old], replicas, observed=seen, **kw),
                               statuses=statuses)


def of_services(plan: Plan, names: set[str],
                w: reconcile.World) -> tuple[dict[ReplicaId, Any], list[AgentAction]]:
    """The writes and actions of a plan that concern ``names`` (by the replica they are about)."""
    def service_of(rid: str) -> str:
        known = w.replicas.get(ReplicaId(rid))
        return known.service if known is not None else rid.rsplit("-", 1)[0]
    writes = {w_.replica.id: w_.replica for w_ in plan.writes
              if isinstance(w_, WriteReplica) and w_.replica.service in names}
    actions = [a for a in plan.actions
               if service_of(a.replica if isinstance(a, reconcile.Launch) else a.container) in names]
    return writes, actions


@pytest.mark.parametrize("names", [{"web"}, {"api"}, {"old"}, {"web", "api"}, {"web", "api", "db", "old"}])
def test_a_scoped_step_decides_for_its_services_what_a_full_step_decides(names: set[str]) -> None:
    full_world = busy_world()
    # api is short of replicas: what it creates is pending until placed, so it is in every scope, as the
    # controller puts every service with a pending replica in scope (placement order is shared).
    scoped = names | {"api"}
    scoped_world = dataclasses.replace(
        full_world, scope=Scope(services=frozenset(ServiceName(n) for n in scoped), hosts=frozenset()))
    full, part = run(full_world), run(scoped_world)
    assert of_services(part, scoped, scoped_world) == of_services(full, scoped, full_world)
    # And nothing about the others.
    others = {"web", "api", "db", "old"} - scoped
    assert of_services(part, others, scoped_world) == ({}, [])
    assert of_services(full, scoped, full_world) != ({}, [])


def test_orphans_are_retired_on_the_hosts_in_scope_and_where_the_step_moved_a_replica_from() -> None:
    full_world = busy_world()
    full = run(full_world)
    full_retires = sorted((a.host, a.container) for a in full.actions if isinstance(a, reconcile.Retire))
    assert ("h2", "stray-2") in full_retires and ("h3", "stray-3") in full_retires
    # old-1 is moved off h1 (its host keeps failing starts): its container there has no owner now.
    assert ("h1", "old-1") in full_retires
    scoped_world = dataclasses.replace(full_world, scope=Scope(services=frozenset({ServiceName("old")}),
                                                               hosts=frozenset({HostId("h2")})))
    part = run(scoped_world)
    part_retires = sorted((a.host, a.container) for a in part.actions if isinstance(a, reconcile.Retire))
    # h2 (in scope) and h1 (the step moved old-1 from it); never h3, which nothing touched.
    assert part_retires == [r for r in full_retires if r[0] in ("h1", "h2") and r[1] != "web-2"]


def retires(plan: Plan) -> list[tuple[str, str]]:
    return sorted((a.host, a.container) for a in plan.actions if isinstance(a, reconcile.Retire))


def test_a_container_in_scope_is_checked_alone_and_its_hosts_others_are_not() -> None:
    """A change to one container (or its replica's record) can orphan only that container: the step checks
    it, and not every container of its host (most of the pass after a mass failure's marking pass)."""
    full_world = busy_world()

    def scoped(*containers: tuple[str, str], hosts: tuple[str, ...] = (),
               services: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        scope = Scope(services=frozenset(ServiceName(s) for s in services),
                      hosts=frozenset(HostId(h) for h in hosts),
                      containers=frozenset((HostId(h), c) for h, c in containers))
        return retires(run(dataclasses.replace(full_world, scope=scope)))

    assert scoped(("h3", "stray-3")) == [("h3", "stray-3")]
    assert scoped(("h3", "web-3"), ("h3", "gone-3"), ("h9", "stray-9")) == []  # owned; not there; no host
    assert scoped(("h3", "web-3"), hosts=("h2",)) == [("h2", "stray-2")]
    # The full step's retires: the strays, each found alone, and old-1, which the step moves off h1
    # when it looks at old (its container there is checked without being in scope).
    assert retires(run(full_world)) == [("h1", "old-1"), ("h2", "stray-2"), ("h3", "stray-3")]
    assert scoped(("h2", "stray-2")) == [("h2", "stray-2")]
    assert scoped(services=("old",)) == [("h1", "old-1")]


def test_the_step_groups_replicas_itself_or_takes_the_callers_index() -> None:
    w = busy_world()
    index: dict[ServiceName, set[ReplicaId]] = {}
    for r in w.replicas.values():
        index.setdefault(r.service, set()).add(r.id)
    assert run(dataclasses.replace(w, by_service=index)) == run(w)


def test_a_scoped_step_reads_the_worlds_replicas_through_and_leaves_them_as_they_were() -> None:
    """A scoped step does not copy the world's replicas (``reconcile._Latest``): what it replaced answers
    first, the world's records for the rest, and the world's stay as read."""
    w = dataclasses.replace(busy_world(), scope=Scope(services=frozenset({ServiceName("web")}),
                                                      hosts=frozenset()))
    before = dict(w.replicas)
    plan = run(w)
    assert w.replicas == before
    written = {x.replica.id: x.replica for x in plan.writes if isinstance(x, WriteReplica)}
    assert ReplicaId("web-2") in written  # its container exited: the step replaced its record
    latest = reconcile._Latest(w.replicas)
    latest[ReplicaId("web-2")] = written[ReplicaId("web-2")]
    assert latest[ReplicaId("web-2")] is written[ReplicaId("web-2")] is latest.get(ReplicaId("web-2"))
    assert latest[ReplicaId("db-1")] is w.replicas[ReplicaId("db-1")] is latest.get(ReplicaId("db-1"))
    assert latest.get(ReplicaId("nobody")) is None
    with pytest.raises(KeyError):
        latest[ReplicaId("nobody")]


def test_a_running_replica_as_recorded_is_what_the_inline_check_assumes() -> None:
    # reconcile.step skips, without calling _absorb, a running replica whose container runs without a
    # health check and whose record says "running", ready: that is what ObservedContainer says too.
    running = container("web-1")
    assert (running.phase(), running.ready) == ((ReplicaPhase.RUNNING, "running"), True)


# -- the controller -----------------------------------------------------------------------------------

class StandInSession:
    """What the controller reads of an agent session, without a connection."""

    def __init__(self, host: HostId, address: str, observation: HostObservation) -> None:
        self.host, self.address, self.observation = host, address, observation
        self.info = pb.HostInfo(host_id=host, cpu_allocatable_millis=4000, memory_allocatable_bytes=8 << 30)
        self.usage: dict[str, Any] = {}
        self.started_at = NOW - 3600
        self.heartbeat_timeout = 2.0
        self.error = ""
        self.agent_down = False

    async def close(self) -> None:
        return None


Sessions = dict[HostId, StandInSession]


async def settled_controller(scopes: list[reconcile.Scope | None], *, plans: list[Plan] | None = None,
                             store: MemoryStore | None = None, empty_hosts: int = 0
                             ) -> tuple[Controller, Sessions]:
    """A leader over web (2 replicas) and db (1), all running as recorded on h1 and h2, and ``empty_hosts``
    more (h3, ...) running nothing (in ``store``, a new ``MemoryStore`` by default); every pass's scope is
    appended to ``scopes`` (and its plan to ``plans``)."""
    store = store if store is not None else MemoryStore()
    hosts = {h: HostRecord(id=h, name=f"node-{h}", address=f"10.0.0.{i}:7070") for i, h in
             enumerate((HostId(f"h{n}") for n in range(1, 3 + empty_hosts)), start=1)}
    records: list[Any] = [service(2), service(1, name="db"), replica("web-1"), replica("web-2", host="h2"),
                          replica("db-1", service="db", host="h2"), *hosts.values(),
                          *(HostStatus(id=h, ready=True) for h in hosts)]
    await store.commit([base.Put(dataclasses.replace(r, revision=0)) for r in records])
    lease = await store.grant_lease(60)
    leader = await store.campaign(LeaderRecord(instance="one"), lease_id=lease.id)
    settings = ControllerSettings(epoch=leader.epoch, guard=base.LeaderGuard(leader.epoch), credentials=None,
                                  profile=default_profile())
    def on_pass(_seconds: float, plan: Plan, world: reconcile.World) -> None:
        scopes.append(world.scope)
        if plans is not None:
            plans.append(plan)

    ctl = Controller(store, settings, on_pass=on_pass)
    ctl.mirror = Mirror.of(await store.snapshot())
    seen = observe(("h1", [container("web-1")]),
                   ("h2", [container("web-2"), container("db-1", service="db")]),
                   *((f"h{n}", []) for n in range(3, 3 + empty_hosts)))
    sessions = {h: StandInSession(h, hosts[h].address, seen[h]) for h in hosts}
    ctl.sessions.update(cast(dict[HostId, AgentSession], sessions))
    return ctl, sessions


@contextlib.asynccontextmanager
async def running_loop(ctl: Controller) -> AsyncIterator[None]:
    """The controller's loop running, a sleeping task standing in for its watch; both ended after."""
    follow: asyncio.Task[None] = asyncio.create_task(asyncio.sleep(3600))
    looping = asyncio.create_task(ctl._loop(follow))
    try:
        yield
    finally:
        for task in (looping, follow):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_the_controller_scopes_a_pass_to_what_changed() -> None:
    async def go() -> list[reconcile.Scope | None]:
        scopes: list[reconcile.Scope | None] = []
        ctl, sessions = await settled_controller(scopes)
        await ctl.step()   # the first pass of a term looks at everything
        await ctl.step()   # nothing changed: looks at nothing
        # db-1's container restarts on h2: db, and h2 for orphans.
        h2 = sessions[HostId("h2")]
        containers = dict(h2.observation.containers)
        containers["db-1"] = dataclasses.replace(containers["db-1"], state=ContainerState.RESTARTING)
        h2.observation = dataclasses.replace(h2.observation, containers=containers)
        ctl._host_changed(HostId("h2"))
        await ctl.step()
        await ctl.step()   # its own write (db-1 starting) is followed by a pass over db
        # h1's session loses its connection: everything on h1.
        h1 = sessions[HostId("h1")]
        h1.observation = dataclasses.replace(h1.observation, connected=False, complete=False)
        ctl._host_changed(HostId("h1"))
        await ctl.step()
        return scopes

    scopes = asyncio.run(go())
    assert scopes[0] is None
    assert scopes[1] == Scope()
    # db-1's container changed on h2: that container is checked for orphans, not all of h2's.
    assert scopes[2] == Scope(services=frozenset({ServiceName("db")}),
                              containers=frozenset({(HostId("h2"), "db-1")}))
    assert scopes[3] is not None and scopes[3].services == {ServiceName("db")}
    assert scopes[4] is not None
    assert ServiceName("web") in scopes[4].services and HostId("h1") in scopes[4].hosts


def test_a_container_orphaned_by_a_change_is_retired_by_the_scoped_pass_after_it() -> None:
    """Each way a container loses its owner reaches the next scoped pass as that container: a container
    no replica owns appears on a host; a replica's record goes (another replica takes its place)."""
    async def go() -> tuple[list[reconcile.Scope | None], list[Plan]]:
        scopes: list[reconcile.Scope | None] = []
        plans: list[Plan] = []
        ctl, sessions = await settled_controller(scopes, plans=plans)
        ctl.actuator.submit = lambda actions: None  # type: ignore[method-assign]  # no agents here
        await ctl.step()
        h1 = sessions[HostId("h1")]
        h1.observation = dataclasses.replace(
            h1.observation, containers={**h1.observation.containers, "stray-1": container("stray-1")})
        ctl._host_changed(HostId("h1"))
        await ctl.step()
        assert ctl.mirror is not None
        gone = ctl.mirror.replicas[ReplicaId("db-1")]
        await ctl.store.commit([base.Delete(gone)])
        ctl.mirror.drop(gone)
        await ctl.step()
        return scopes, plans

    scopes, plans = asyncio.run(go())
    assert scopes[1] is not None and scopes[1].containers == {(HostId("h1"), "stray-1")}
    assert retires(plans[1]) == [("h1", "stray-1")]
    assert scopes[2] is not None and (HostId("h2"), "db-1") in scopes[2].containers
    assert ("h2", "db-1") in retires(plans[2])
    assert HostId("h2") not in scopes[2].hosts  # checked as that container, not as all of h2


def test_a_replica_a_scoped_pass_places_is_counted_by_the_placement_metric() -> None:
    """A scoped pass's world reads the mirror's replicas, which its own commit changes before the metric
    is fed: the plan says what it placed (``Plan.placed``)."""
    async def go() -> tuple[list[reconcile.Scope | None], SchedulerMetrics]:
        scopes: list[reconcile.Scope | None] = []
        ctl, _ = await settled_controller(scopes, empty_hosts=1)
        ctl.actuator.submit = lambda actions: None  # type: ignore[method-assign]  # no agents here
        metrics = SchedulerMetrics()
        passes = ctl._on_pass
        assert passes is not None

        def on_pass(seconds: float, plan: Plan, world: reconcile.World) -> None:
            passes(seconds, plan, world)
            metrics.record_pass(seconds, plan, world)

        ctl._on_pass = on_pass
        await ctl.step()
        assert ctl.mirror is not None
        web = ctl.mirror.services[ServiceName("web")]
        scaled = dataclasses.replace(web, spec=dataclasses.replace(web.spec, replicas=3))
        committed = await ctl.store.commit([base.Put(scaled)])
        for record in committed.written:
            ctl.mirror.put(record)
        await ctl.step()
        return scopes, metrics

    scopes, metrics = asyncio.run(go())
    assert scopes[1] is not None  # the scale-up was placed by a scoped pass
    counted = [m.value for m in metrics.placement.collect()[0].samples if m.name.endswith("_count")]
    assert counted == [1.0]


def test_a_full_pass_runs_when_its_period_is_up() -> None:
    async def go() -> list[reconcile.Scope | None]:
        scopes: list[reconcile.Scope | None] = []
        ctl, _ = await settled_controller(scopes)
        await ctl.step()
        await ctl.step()
        ctl._last_full -= controller_module.FULL_PASS_INTERVAL  # the period is up
        await ctl.step()
        await ctl.step()
        return scopes

    scopes = asyncio.run(go())
    assert [s is None for s in scopes] == [True, False, True, False]


class ShiftedClock:
    """The controller's ``time`` module with the wall clock moved on by ``ahead`` seconds."""

    def __init__(self) -> None:
        self.ahead = 0.0
        self.perf_counter, self.monotonic = time.perf_counter, time.monotonic

    def time(self) -> float:
        return time.time() + self.ahead


def test_a_pass_due_by_the_clock_looks_at_what_came_due_not_at_everything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lost host's grace ending, or a failed replica's backoff, makes a pass due: scoped to that host's
    services and the replica's service. Each was a full pass, and in a mass failure at 100,000 replicas
    the lost hosts' graces, ending over a few seconds, waited behind a chain of them (docs/scaling.md,
    part 10)."""
    clock = ShiftedClock()
    monkeypatch.setattr(controller_module, "time", clock)
    monkeypatch.setattr(controller_module, "FULL_PASS_INTERVAL", 3600.0)  # no safety net in between

    async def go() -> tuple[list[reconcile.Scope | None], list[Plan], Controller]:
        scopes: list[reconcile.Scope | None] = []
        plans: list[Plan] = []
        ctl, sessions = await settled_controller(scopes, plans=plans)
        monkeypatch.setattr(ctl.actuator, "submit", lambda actions: None)  # no agents to launch on
        await ctl.step()  # the term's first pass: everything
        h1 = sessions[HostId("h1")]  # web-1's host falls silent
        h1.observation = dataclasses.replace(h1.observation, connected=False)
        h1.error = "no report from the agent for 6.0 s (unreachable?)"
        ctl._host_changed(HostId("h1"))
        due = await ctl.step()  # h1 marked not ready; its grace ends later
        assert due is not None and due > clock.time()
        clock.ahead += due - clock.time() + 0.01
        await ctl.step()  # woken by the clock alone
        # db-1 fails on h2 and is retried after its backoff.
        assert ctl.mirror is not None
        failed = dataclasses.replace(ctl.mirror.replicas[ReplicaId("db-1")], phase=ReplicaPhase.FAILED,
                                     ready=False, next_attempt_at=clock.time() + 1)
        committed = await ctl.store.commit([base.Put(failed)])
        for record in committed.written:
            ctl.mirror.put(record)
        await ctl.step()  # the record's change: a pass over db
        clock.ahead += 2
        await ctl.step()  # the backoff ended: db again, and only db
        await ctl.step()  # nothing came due: nothing
        return scopes, plans, ctl

    scopes, plans, ctl = asyncio.run(go())
    assert scopes[0] is None
    assert scopes[2] == Scope(services=frozenset({ServiceName("web")}), hosts=frozenset({HostId("h1")}))
    stopped = [w.replica.id for w in plans[2].writes
               if isinstance(w, WriteReplica) and w.replica.phase is ReplicaPhase.STOPPING]
    assert stopped == [ReplicaId("web-1")]
    # (web's replacement, never launched here, keeps web in every scope: it is pending.)
    assert scopes[4] is not None and ServiceName("db") in scopes[4].services
    assert scopes[5] is not None and ServiceName("db") not in scopes[5].services
    assert ctl.passes["full"] == 1


def test_the_safety_net_stretches_with_what_a_full_pass_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full pass that finds nothing to place sets the safety net's period to ten times its cost (at
    least 5 s): at 5,000 hosts one took 1-3 s, and every 5 s was a third of a loaded leader's loop."""
    async def go(share: float) -> tuple[list[reconcile.Scope | None], float]:
        monkeypatch.setattr(controller_module, "FULL_PASS_SHARE", share)
        scopes: list[reconcile.Scope | None] = []
        ctl, _ = await settled_controller(scopes)
        await ctl.step()   # the term's first pass: full, nothing to place
        interval = ctl.full_interval
        ctl._last_full -= controller_module.FULL_PASS_INTERVAL  # 5 s are up
        await ctl.step()
        ctl._last_full -= interval  # the whole period is up
        await ctl.step()
        return scopes, interval

    share = controller_module.FULL_PASS_SHARE
    scopes, interval = asyncio.run(go(1e-9))  # any pass is long at this share
    assert interval > controller_module.FULL_PASS_INTERVAL
    assert [s is None for s in scopes] == [True, False, True]
    # At the real share a pass of milliseconds leaves the period at 5 s.
    scopes, interval = asyncio.run(go(share))
    assert interval == controller_module.FULL_PASS_INTERVAL
    assert [s is None for s in scopes] == [True, True, True]


def test_a_pass_over_hosts_followed_completely_asks_nothing_of_the_stall_history() -> None:
    """The leader's stalls matter for a host it cannot follow (its grace, a new session's borrowed
    status); asking for every host on every pass made passes at 5,000 hosts take seconds."""
    class Counted(LoopStalls):
        asked = 0

        def stalled_since(self, wall_time: float) -> float:
            type(self).asked += 1
            return super().stalled_since(wall_time)

    async def go() -> int:
        ctl, _ = await settled_controller([])
        ctl.stalls = Counted()
        await ctl.step()
        ctl._full_due = True
        await ctl.step()
        return Counted.asked

    assert asyncio.run(go()) == 0


def test_the_loop_runs_full_passes_on_its_period_with_nothing_changing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "FULL_PASS_INTERVAL", 0.05)

    async def go() -> int:
        scopes: list[reconcile.Scope | None] = []
        ctl, _ = await settled_controller(scopes)
        async with running_loop(ctl), asyncio.timeout(20):
            while sum(s is None for s in scopes) < 4:
                await asyncio.sleep(0.01)
        return sum(s is None for s in scopes)

    assert asyncio.run(go()) >= 4


def test_a_pass_places_up_to_its_budget_and_the_next_places_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "PLACE_BUDGET", 2)

    async def go() -> list[dict[str, int]]:
        scopes: list[reconcile.Scope | None] = []
        ctl, _ = await settled_controller(scopes)
        await ctl.step()
        assert ctl.mirror is not None
        committed = await ctl.store.commit([base.Put(dataclasses.replace(service(2, name=n), revision=0))
                                            for n in ("new-a", "new-b", "new-c")])
        for record in committed.written:  # as the watch would bring them
            ctl.mirror.put(record)
        placed: list[dict[str, int]] = []
        for _ in range(3):
            ctl._wake.clear()
            await ctl.step()
            counts: dict[str, int] = {}
            for r in ctl.mirror.replicas.values():
                if r.service.startswith("new-") and r.host is not None:
                    counts[r.service] = counts.get(r.service, 0) + 1
            placed.append(counts)
        return placed

    assert asyncio.run(go()) == [{"new-a": 2}, {"new-a": 2, "new-b": 2},
                                 {"new-a": 2, "new-b": 2, "new-c": 2}]


def test_the_safety_net_keeps_the_placement_view_warm_for_the_next_placing_pass() -> None:
    """A full pass that places nothing still brings the view cache up to date (``ViewCache.refresh``, no
    view built): the next pass that places copies every host that did not change instead of counting
    its replicas again."""
    async def go() -> tuple[list[int], list[Plan]]:
        plans: list[Plan] = []
        ctl, sessions = await settled_controller([], plans=plans)
        rebuilt = []
        await ctl.step()  # the term's first pass: full, nothing to place, the cache refreshed all the same
        rebuilt.append(ctl.views.rebuilt)
        assert ctl.mirror is not None
        web = ctl.mirror.services[ServiceName("web")]
        ctl.mirror.put(web.scaled(3, now=NOW))  # one more web replica: a placing pass
        await ctl.step()
        rebuilt.append(ctl.views.rebuilt)
        h1 = sessions[HostId("h1")]  # h1's agent reports a change: h1 alone is counted again
        containers = dict(h1.observation.containers)
        containers["web-1"] = dataclasses.replace(containers["web-1"], state=ContainerState.EXITED)
        h1.observation = dataclasses.replace(h1.observation, containers=containers)
        ctl._host_changed(HostId("h1"))
        ctl.mirror.put(ctl.mirror.services[ServiceName("web")].scaled(4, now=NOW))
        await ctl.step()
        rebuilt.append(ctl.views.rebuilt)
        return rebuilt, plans

    rebuilt, plans = asyncio.run(go())
    placed = [w for w in plans[1].writes if isinstance(w, WriteReplica) and w.replica.host is not None
              and w.replica.phase is ReplicaPhase.STARTING]
    assert len(placed) == 1
    assert rebuilt == [2, 0, 1]


def test_a_hosts_status_is_judged_again_whenever_what_it_is_judged_from_changes() -> None:
    """Every pass asks every host's status; the leader keeps the last answer while the host's recorded
    status, its session's observation and its session's error are the same objects and no start
    failure is counted (``Controller._status``). Each of those changing is judged afresh, with the
    answer a judgment without the kept one gives."""
    def bare(status: HostStatus) -> HostStatus:
        return dataclasses.replace(status, since=0.0)

    async def go() -> list[tuple[HostStatus, HostStatus, bool]]:
        ctl, sessions = await settled_controller([])
        await ctl.step()
        host = HostId("h1")
        session = sessions[host]
        assert ctl.mirror is not None
        out: list[tuple[HostStatus, HostStatus, bool]] = []

        def judged() -> None:
            assert ctl.mirror is not None
            first = ctl._status(host)
            again = ctl._status(host)
            fresh = ctl._judge(host, ctl.mirror.statuses.get(host), cast(AgentSession, session))
            out.append((bare(first), bare(fresh), again is first))

        judged()                                      # ready, as recorded
        session.observation = dataclasses.replace(session.observation, connected=False, complete=False)
        judged()                                      # reconnecting: still ready as recorded
        session.error = "no usage report for 2.0 s"   # then its watchdog found it silent
        judged()
        session.error = ""
        ctl.mirror.put(dataclasses.replace(ctl.mirror.statuses[host], ready=False, reason="gone"))
        judged()                                      # a new recorded status
        for _ in range(3):
            ctl.start_health.failed(host, at=time.time(), reason="disk full")
        judged()                                      # start-failing: judged on every call
        ctl.start_health.succeeded(host)
        judged()
        return out

    out = asyncio.run(go())
    assert all(first == fresh for first, fresh, _ in out), out
    assert [again for _, _, again in out] == [True, True, True, True, False, True]
    ready, reconnecting, silent, recorded, failing, recovered = (first for first, _, _ in out)
    assert ready.ready
    assert not silent.ready and silent.reason == "no usage report for 2.0 s"
    assert reconnecting == ready  # still ready as recorded: nothing to write while it lists again
    assert not recorded.ready and recorded.reason == "connecting to its agent"
    assert failing.start_failing and failing.start_failures == 3
    assert not recovered.start_failing and recovered.start_failures == 0
