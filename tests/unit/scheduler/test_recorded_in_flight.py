"""What the hosts report is recorded while a pass's writes are in flight (``scheduler.recorder``): a
replacement that started is recorded running before its pass's commit is done, never from a record the
pass has not landed yet, never one the pass deletes, and the next pass finds it as recorded."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Mapping, Sequence

import pytest

from scheduler import reconcile
from scheduler.mirror import Mirror
from scheduler.model import HostId, Replica, ReplicaId, ReplicaPhase, Service, ServiceName
from scheduler.observed import ContainerState, HostObservation
from scheduler.recorder import InFlightRecorder
from scheduler.store import base, txn
from scheduler.store.errors import StoreUnavailable
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord
from tests.unit.scheduler.test_launch_as_landed import HeldStore
from tests.unit.scheduler.test_reconcile import NOW, container, replica, service
from tests.unit.scheduler.test_scoped_passes import settled_controller

H1, H2 = HostId("h1"), HostId("h2")


# -- the rule alone ---------------------------------------------------------------------------------

def test_record_observed_writes_what_the_container_shows_and_nothing_else() -> None:
    starting = replica("web-1", phase=ReplicaPhase.STARTING, ready=False, reason="placed on node-h1")
    crashed = replica("web-2", restarts=2)
    as_recorded = replica("web-3")
    stopping = replica("web-4", phase=ReplicaPhase.STOPPING, ready=False)
    busy = replica("web-5", phase=ReplicaPhase.STARTING, ready=False)
    elsewhere = replica("web-6", host="h2", phase=ReplicaPhase.STARTING, ready=False)
    unplaced = replica("web-7", host=None, phase=ReplicaPhase.PENDING, ready=False)
    h1 = HostObservation(host=H1, connected=True, complete=True, containers={c.id: c for c in (
        container("web-1"), container("web-2", state=ContainerState.EXITED, exit_code=3, reason="error"),
        container("web-3"), container("web-4"), container("web-5"), container("web-6"))})
    writes = reconcile.record_observed(
        [starting, crashed, as_recorded, stopping, busy, elsewhere, unplaced], {H1: h1},
        busy={"web-5"}, now=NOW)
    by_id = {w.replica.id: w.replica for w in writes}
    assert set(by_id) == {"web-1", "web-2"}
    running = by_id[ReplicaId("web-1")]
    assert (running.phase, running.ready, running.reason, running.updated_at) == (
        ReplicaPhase.RUNNING, True, "running", NOW)
    assert running.decisions[-1].action == "running" and running.revision == starting.revision
    failed = by_id[ReplicaId("web-2")]
    assert failed.phase is ReplicaPhase.FAILED and failed.next_attempt_at == NOW + reconcile.backoff(2)
    # A step over the same world decides the same for them.
    world = reconcile.World(services={ServiceName("web"): service(7)},
                            replicas={r.id: r for r in (starting, crashed)},
                            hosts={}, statuses={}, observed={H1: h1}, now=NOW)
    plan = reconcile.step(world, placer=_NoPlacer(), new_id=lambda s: ReplicaId(f"{s}-new"))
    stepped = {w.replica.id: w.replica for w in plan.writes if isinstance(w, reconcile.WriteReplica)}
    assert {rid: (r.phase, r.reason) for rid, r in stepped.items() if rid in by_id} == {
        rid: (r.phase, r.reason) for rid, r in by_id.items()}


class _NoPlacer:
    def place(self, service: Service,
              replicas: Sequence[Replica]) -> Mapping[ReplicaId, tuple[HostId | None, str]]:
        return {}

    def removal_order(self, replicas: Sequence[Replica]) -> Sequence[Replica]:
        return replicas


# -- the recorder -----------------------------------------------------------------------------------

class Recording:
    """A recorder over a MemoryStore holding web-1 (on h1, starting) and web-2 (on h2, starting), for a
    pass whose ops are ``ops``; the sessions' observations are ``observed``."""

    def __init__(self, store: MemoryStore, mirror: Mirror, guard: base.LeaderGuard,
                 ops: list[base.Op], busy: Collection[str] = ()) -> None:
        self.store, self.mirror = store, mirror
        self.observed = {H1: HostObservation(host=H1, connected=True, complete=True),
                         H2: HostObservation(host=H2, connected=True, complete=True)}
        self.busy = set(busy)
        self.deposed: list[str] = []
        self.recorder = InFlightRecorder(store, guard, mirror=mirror, ops=ops, seen=dict(self.observed),
                                         observation=self.observed.get, busy=lambda: self.busy,
                                         on_deposed=self.deposed.append, coalesce=0.01)

    def start(self, host: HostId, rid: str) -> None:
        obs = self.observed[host]
        self.observed[host] = obs.with_container(rid, container(rid))
        self.recorder.heard(host)

    async def phase(self, rid: str) -> ReplicaPhase:
        record = await self.store.get(self.store.schema.replica("web", rid))
        assert isinstance(record, Replica)
        return record.phase


async def _setup(*rids_hosts: tuple[str, str]) -> tuple[MemoryStore, Mirror, base.LeaderGuard]:
    store = MemoryStore()
    await store.commit([base.Put(dataclasses.replace(
        replica(rid, host=host, phase=ReplicaPhase.STARTING, ready=False), revision=0))
        for rid, host in rids_hosts])
    lease = await store.grant_lease(60)
    leader = await store.campaign(LeaderRecord(instance="one"), lease_id=lease.id)
    return store, Mirror.of(await store.snapshot()), base.LeaderGuard(leader.epoch)


def test_a_start_is_recorded_once_its_record_landed_and_its_action_ended() -> None:
    async def go() -> None:
        store, mirror, guard = await _setup(("web-1", "h1"), ("web-2", "h2"), ("web-3", "h2"))
        web1, web3 = mirror.replicas[ReplicaId("web-1")], mirror.replicas[ReplicaId("web-3")]
        # The pass rewrites web-1 (not landed yet) and deletes web-3.
        moved = dataclasses.replace(web1, reason="placed on node-h1 again")
        rec = Recording(store, mirror, guard, [base.Put(moved), base.Delete(web3)], busy={"web-2"})
        for rid, host in (("web-1", H1), ("web-2", H2), ("web-3", H2)):
            rec.start(host, rid)
        assert rec.recorder.decide() == ()  # web-1 in flight, web-2 busy, web-3 being deleted
        commit: asyncio.Future[base.Committed] = asyncio.get_running_loop().create_future()
        running = asyncio.create_task(rec.recorder.run_until(commit))
        rec.busy.clear()
        rec.recorder.poke()  # web-2's launch answered
        for _ in range(200):  # bounded
            if rec.recorder.recorded:
                break
            await asyncio.sleep(0.01)
        assert await rec.phase("web-2") is ReplicaPhase.RUNNING
        in_store = await store.get(store.schema.replica("web", "web-2"))
        assert mirror.replicas[ReplicaId("web-2")] == in_store  # with its new revision
        # web-1's rewrite lands (the store has it now, as the pass's commit put it).
        landed = await store.commit([base.Put(moved)], guard=guard)
        rec.recorder.landed(landed.revisions[0], (moved,))
        for _ in range(200):  # bounded
            if rec.recorder.recorded == 2:
                break
            await asyncio.sleep(0.01)
        assert await rec.phase("web-1") is ReplicaPhase.RUNNING
        assert mirror.replicas[ReplicaId("web-1")].phase is ReplicaPhase.RUNNING
        commit.set_result(landed)
        await running
        assert await rec.phase("web-3") is ReplicaPhase.STARTING  # left to the pass that deletes it
        # The pass's commit put into the mirror afterwards does not take web-1 back.
        mirror.put(landed.written[0])
        assert mirror.replicas[ReplicaId("web-1")].phase is ReplicaPhase.RUNNING

    asyncio.run(go())


def test_containers_the_pass_already_read_are_left_to_it() -> None:
    async def go() -> None:
        store, mirror, guard = await _setup(("web-1", "h1"))
        rec = Recording(store, mirror, guard, [])
        rec.start(H1, "web-1")  # before the recorder was told: as if the pass had read it
        rec.recorder = InFlightRecorder(store, guard, mirror=mirror, ops=[], seen=dict(rec.observed),
                                        observation=rec.observed.get, busy=set,
                                        on_deposed=rec.deposed.append, coalesce=0.01)
        rec.recorder.heard(H1)  # h1 reports something else (its room)
        assert rec.recorder.decide() == ()

    asyncio.run(go())


def test_a_replica_heard_again_while_it_waited_is_written_once() -> None:
    async def go() -> None:
        store, mirror, guard = await _setup(("web-1", "h1"))
        rec = Recording(store, mirror, guard, [], busy={"web-1"})
        rec.start(H1, "web-1")
        assert rec.recorder.decide() == ()  # busy: it waits
        rec.busy.clear()
        obs = rec.observed[H1]  # its container changes again (a new restart count), and is heard
        rec.observed[H1] = obs.with_container("web-1", container("web-1", restart_count=1))
        rec.recorder.heard(H1)
        assert [w.replica.id for w in rec.recorder.decide()] == ["web-1"]

    asyncio.run(go())


def test_a_write_that_conflicts_leaves_the_mirror_holding_what_the_key_holds_now() -> None:
    """Another writer changed web-1 after the mirror read it: the recorder's write conflicts, and the
    mirror takes the record the failed transaction read (``Mirror.learn``), not waiting for the watch."""
    async def go() -> None:
        store, mirror, guard = await _setup(("web-1", "h1"))
        read = mirror.replicas[ReplicaId("web-1")]
        rec = Recording(store, mirror, guard, [])
        rec.start(H1, "web-1")
        writes = rec.recorder.decide()
        assert [w.replica.id for w in writes] == ["web-1"]
        theirs = await store.commit([base.Put(dataclasses.replace(read, reason="moved by another pass"))],
                                    guard=guard)
        await rec.recorder.write(writes)
        assert rec.recorder.recorded == 0
        assert mirror.replicas[ReplicaId("web-1")] == theirs.written[0]

    asyncio.run(go())


def test_a_write_whose_reply_is_lost_stops_recording_and_says_it_may_have_landed() -> None:
    """The controller's next pass then waits for etcd's revision (``Controller._catch_up_unknown``)."""
    async def go() -> None:
        store, mirror, guard = await _setup(("web-1", "h1"))
        rec = Recording(store, mirror, guard, [])
        rec.start(H1, "web-1")
        writes = rec.recorder.decide()
        execute = store._execute

        async def lost(plan: txn.TxnPlan) -> int:
            await execute(plan)
            raise StoreUnavailable("the reply was lost", outcome_unknown=True)

        store._execute = lost  # type: ignore[method-assign]
        await rec.recorder.write(writes)
        assert rec.recorder.outcome_unknown and await rec.phase("web-1") is ReplicaPhase.RUNNING

    asyncio.run(go())


def test_a_deposed_leader_stops_recording() -> None:
    async def go() -> None:
        store, mirror, guard = await _setup(("web-1", "h1"))
        rec = Recording(store, mirror, guard, [])
        stale = base.LeaderGuard(guard.epoch + 1000)
        rec.recorder = InFlightRecorder(store, stale, mirror=mirror, ops=[], seen=dict(rec.observed),
                                        observation=rec.observed.get, busy=set,
                                        on_deposed=rec.deposed.append, coalesce=0.01)
        commit: asyncio.Future[base.Committed] = asyncio.get_running_loop().create_future()
        running = asyncio.create_task(rec.recorder.run_until(commit))
        rec.start(H1, "web-1")
        await asyncio.wait_for(running, 5)  # it returns without the commit: the term is over
        assert rec.deposed and await rec.phase("web-1") is ReplicaPhase.STARTING

    asyncio.run(go())


# -- in the controller -------------------------------------------------------------------------------

class PassHeldStore(HeldStore):
    """HeldStore holding only the pass's transactions (placements), not the recorder's."""

    async def _execute(self, plan: txn.TxnPlan) -> int:
        if any(isinstance(w.record, Replica) and w.record.phase is ReplicaPhase.RUNNING for w in plan.writes):
            return await MemoryStore._execute(self, plan)
        return await super()._execute(plan)


@pytest.mark.parametrize("fail", [False, True], ids=["landed", "failed"])
def test_replacements_are_recorded_running_before_their_pass_is_done(fail: bool) -> None:
    async def go() -> None:
        store = PassHeldStore()
        plans: list[reconcile.Plan] = []
        ctl, sessions = await settled_controller([], plans=plans, store=store, empty_hosts=4)
        await ctl.step()  # the term's first pass: nothing to do
        started: list[ReplicaId] = []

        def submit(actions: tuple[reconcile.AgentAction, ...]) -> None:
            """Each launch starts at once, and its host says so (the agent's event)."""
            for action in actions:
                if isinstance(action, reconcile.Launch):
                    session = sessions[action.host]
                    session.observation = session.observation.with_container(
                        action.replica, container(action.replica))
                    started.append(action.replica)
                    ctl._host_changed(action.host)

        ctl.actuator.submit = submit  # type: ignore[method-assign]
        assert ctl.mirror is not None
        ctl.mirror.put(ctl.mirror.services[ServiceName("web")].scaled(6, now=NOW))
        store.holding, store.fail = True, fail
        step = asyncio.create_task(ctl.step())
        for _ in range(300):  # bounded: until the first launches are recorded running
            if (started and ctl._recorder is not None and ctl._recorder.recorded == len(started)) \
                    or step.done():
                break
            await asyncio.sleep(0.01)
        assert not step.done() and started
        first = list(started)
        for rid in first:  # in etcd, running, while the pass's later transactions are held
            record = await store.get(store.schema.replica("web", rid))
            assert isinstance(record, Replica) and record.phase is ReplicaPhase.RUNNING
        store.release.set()
        await step  # (a failed commit is the next pass's to decide again)
        assert ctl.recorded_in_flight >= len(first)
        for rid in first:  # the mirror kept the newer record, and the next pass has nothing to write
            assert ctl.mirror.replicas[rid].phase is ReplicaPhase.RUNNING
        if not fail:
            await ctl.step()
            assert not {w.replica.id for w in plans[-1].writes if isinstance(w, reconcile.WriteReplica)} \
                & set(first)

    asyncio.run(go())


def test_starts_heard_between_passes_are_recorded_ahead_while_the_pass_decides() -> None:
    """Heard before a pass: written as the pass begins, landing while it decides; the pass leaves those
    replicas alone (busy), so it writes nothing for them and nothing conflicts."""
    async def go() -> None:
        plans: list[reconcile.Plan] = []
        ctl, sessions = await settled_controller([], plans=plans, empty_hosts=4)
        store = ctl.store
        await ctl.step()
        launched: list[reconcile.Launch] = []
        ctl.actuator.submit = lambda actions: launched.extend(  # type: ignore[method-assign]
            a for a in actions if isinstance(a, reconcile.Launch))
        assert ctl.mirror is not None
        ctl.mirror.put(ctl.mirror.services[ServiceName("web")].scaled(6, now=NOW))
        await ctl.step()
        assert len(launched) == 4 and ctl.recorded_ahead == 0
        for launch in launched:  # they start, and their hosts say so before the next pass
            session = sessions[launch.host]
            seen = container(launch.replica)
            session.observation = session.observation.with_container(launch.replica, seen)
            ctl._host_changed(launch.host)
        await ctl.step()
        ids = {launch.replica for launch in launched}
        assert ctl.recorded_ahead == 4
        assert not {w.replica.id for w in plans[-1].writes if isinstance(w, reconcile.WriteReplica)} & ids
        for rid in ids:
            record = await store.get(store.schema.replica("web", rid))
            assert isinstance(record, Replica) and record.phase is ReplicaPhase.RUNNING
            assert ctl.mirror.replicas[rid] == record
        await ctl.step()
        assert not plans[-1].writes and ctl.recorded_ahead == 4

    asyncio.run(go())


def test_what_is_recorded_ahead_has_landed_before_the_pass_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The write goes out before the pass holds the loop to decide (``controller.sent``): on a store that
    answers at once, it has landed by then (before part 26 it had not even started)."""
    async def go() -> None:
        ctl, sessions = await settled_controller([], empty_hosts=4)
        await ctl.step()
        launched: list[reconcile.Launch] = []
        ctl.actuator.submit = lambda actions: launched.extend(  # type: ignore[method-assign]
            a for a in actions if isinstance(a, reconcile.Launch))
        assert ctl.mirror is not None
        mirror = ctl.mirror
        mirror.put(mirror.services[ServiceName("web")].scaled(6, now=NOW))
        await ctl.step()
        for launch in launched:
            session = sessions[launch.host]
            seen = container(launch.replica)
            session.observation = session.observation.with_container(launch.replica, seen)
            ctl._host_changed(launch.host)
        at_decide: list[set[ReplicaPhase]] = []
        real_step = reconcile.step

        def step(world: reconcile.World, **kwargs: object) -> reconcile.Plan:
            at_decide.append({mirror.replicas[launch.replica].phase for launch in launched})
            return real_step(world, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(reconcile, "step", step)
        await ctl.step()
        assert ctl.recorded_ahead == 4 and at_decide == [{ReplicaPhase.RUNNING}]

    asyncio.run(go())
