"""Settled replicas carried between passes: a scoped pass counts, without a look, the replicas the last
pass found running as recorded and that nothing changed about since (``reconcile.World.settled``), so a
mass failure's passes cost what changed, not every replica of every service in scope (docs/scaling.md,
part 21). Each test here changes one thing about a settled replica and checks the next pass acts on it."""

from __future__ import annotations

import asyncio
import dataclasses

from scheduler import reconcile
from scheduler.controller import Controller
from scheduler.model import HostAdmin, HostId, HostStatus, ReplicaId, ReplicaPhase, ServiceName
from scheduler.observed import ContainerState
from scheduler.reconcile import Plan
from scheduler.store import base
from tests.unit.scheduler.test_reconcile import container, observe, replica, run, service, world, written
from tests.unit.scheduler.test_scoped_passes import Sessions, settled_controller

H1, H2 = HostId("h1"), HostId("h2")


async def after_the_first_pass() -> tuple[Controller, Sessions, list[Plan]]:
    plans: list[Plan] = []
    ctl, sessions = await settled_controller([], plans=plans)
    ctl.actuator.submit = lambda actions: None  # type: ignore[method-assign]  # no agents here
    await ctl.step()  # the term's first pass: everything, all settled
    assert plans[-1].settled == {"web": {"web-1", "web-2"}, "db": {"db-1"}}
    return ctl, sessions, plans


def test_a_settled_replica_whose_container_exits_is_looked_at_again() -> None:
    async def go() -> tuple[reconcile.Replica, frozenset[ReplicaId]]:
        ctl, sessions, _ = await after_the_first_pass()
        h2 = sessions[H2]
        containers = dict(h2.observation.containers)
        containers["db-1"] = dataclasses.replace(containers["db-1"], state=ContainerState.EXITED, exit_code=1,
                                                 reason="crash")
        h2.observation = dataclasses.replace(h2.observation, containers=containers)
        ctl._host_changed(H2)
        await ctl.step()
        await ctl.step()
        assert ctl.mirror is not None
        return ctl.mirror.replicas[ReplicaId("db-1")], ctl._settled[ServiceName("db")]

    db, settled = asyncio.run(go())
    assert db.phase is ReplicaPhase.FAILED and "exited 1" in db.reason
    assert settled == frozenset()


def test_a_settled_replica_whose_container_is_removed_behind_the_schedulers_back_is_recreated() -> None:
    """Nothing writes its record first (a missing container is not recorded ahead of the pass): only the
    host's changed containers say that this replica must be looked at again."""
    async def go() -> Plan:
        ctl, sessions, plans = await after_the_first_pass()
        h2 = sessions[H2]
        h2.observation = dataclasses.replace(
            h2.observation, containers={"web-2": h2.observation.containers["web-2"]})
        ctl._host_changed(H2)
        await ctl.step()
        return plans[-1]

    db = written(asyncio.run(go()))[ReplicaId("db-1")]
    assert db.phase is ReplicaPhase.STARTING and "recreating" in db.reason


def test_a_settled_replica_whose_container_vanished_while_its_host_was_away_is_recreated() -> None:
    """A session that reconnects changes its host wholly (nothing is compared container by container):
    every replica on it is looked at again."""
    async def go() -> Plan:
        ctl, sessions, plans = await after_the_first_pass()
        h2 = sessions[H2]
        before = h2.observation
        h2.observation = dataclasses.replace(before, connected=False, complete=False)
        ctl._host_changed(H2)
        await ctl.step()
        h2.observation = dataclasses.replace(before, containers={"web-2": before.containers["web-2"]})
        ctl._host_changed(H2)
        await ctl.step()
        return plans[-1]

    plan = asyncio.run(go())
    db = written(plan)[ReplicaId("db-1")]
    assert db.phase is ReplicaPhase.STARTING and "recreating" in db.reason


def test_settled_replicas_of_a_service_whose_template_changed_are_rolled() -> None:
    async def go() -> Plan:
        ctl, _, plans = await after_the_first_pass()
        assert ctl.mirror is not None
        web = ctl.mirror.services[ServiceName("web")]
        committed = await ctl.store.commit([base.Put(dataclasses.replace(
            web, template_generation=web.template_generation + 1))])
        for record in committed.written:
            ctl.mirror.put(record)
        await ctl.step()
        return plans[-1]

    plan = asyncio.run(go())
    # A surge replica of the new template (the old ones still count as live, not kept).
    assert [r.generation for r in written(plan).values() if r.phase is not ReplicaPhase.STOPPING] == [2]


# -- the pure step: what it never takes on trust ---------------------------------------------------------

def test_a_replica_carried_as_settled_on_a_lost_host_is_still_replaced() -> None:
    reps = [replica("a"), replica("b", host="h2")]
    w = dataclasses.replace(
        world([service(2)], reps, observed=observe(("h1", [container("a")]), ("h2", [container("b")]))),
        statuses={H1: HostStatus(id=H1, ready=False), H2: HostStatus(id=H2, ready=True),
                  HostId("h3"): HostStatus(id=HostId("h3"), ready=True)},
        unreachable_since={H1: 0.0}, by_host={H1: {"a"}, H2: {"b"}},
        settled={ServiceName("web"): frozenset({ReplicaId("a"), ReplicaId("b")})},
        scope=reconcile.Scope(services=frozenset({ServiceName("web")})))
    out = written(run(w))
    assert out[ReplicaId("a")].phase is ReplicaPhase.STOPPING
    assert len([r for r in out.values() if r.id not in ("a", "b")]) == 1  # its replacement


def test_a_replica_carried_as_settled_on_a_draining_host_is_still_moved() -> None:
    reps = [replica("a", host="h1"), replica("b", host="h2")]
    w = dataclasses.replace(
        world([service(2)], reps, observed=observe(("h1", [container("a")]), ("h2", [container("b")])),
              admin={"h1": HostAdmin.DRAINING}),
        by_host={H1: {"a"}, H2: {"b"}},
        settled={ServiceName("web"): frozenset({ReplicaId("a"), ReplicaId("b")})},
        scope=reconcile.Scope(services=frozenset({ServiceName("web")})))
    plan = run(w)
    new = [r for rid, r in written(plan).items() if rid not in ("a", "b")]
    assert len(new) == 1 and new[0].host != "h1"
    assert plan.settled[ServiceName("web")] == {"b"}


def test_carried_replicas_are_counted_and_not_looked_at() -> None:
    """A carried replica is not even read: one missing from the records would fail the step if it were."""
    reps = [replica("a"), replica("b", host="h2")]
    w = dataclasses.replace(
        world([service(2)], reps, observed=observe(("h1", [container("a")]), ("h2", [container("b")]))),
        by_service={ServiceName("web"): {ReplicaId("a"), ReplicaId("b")}}, by_host={},
        settled={ServiceName("web"): frozenset({ReplicaId("a"), ReplicaId("b")})},
        scope=reconcile.Scope(services=frozenset({ServiceName("web")})))
    w = dataclasses.replace(w, replicas={})
    plan = run(w)
    assert plan.empty and plan.settled[ServiceName("web")] == {"a", "b"}
