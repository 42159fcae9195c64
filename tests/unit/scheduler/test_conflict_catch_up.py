"""Before its next pass the loop waits, bounded, for the watch to bring its mirror up to a revision
(``Controller._catching_up``): after a conflicted pass, the revision of the writes the conflict met (a pass
decided from a mirror still behind meets the same writers' other changes); as a term begins from a
follower behind, the term's epoch (a pass that does not see the last term's new replicas creates them
again). docs/scaling.md, part 33."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from scheduler import controller as controller_module
from scheduler.controller import Controller
from scheduler.follower import Follower
from scheduler.model import Decision, Replica, ReplicaId, ReplicaPhase, ServiceName
from scheduler.store import base, txn
from scheduler.store.errors import KeyConflict, StoreUnavailable
from scheduler.store.keys import KeyRange
from scheduler.store.memory import MemoryStore
from tests.fixtures import scheduler_records as build
from tests.unit.scheduler.test_conflict_landed import PENDING, ForeignWriteStore
from tests.unit.scheduler.test_controller_follower import leader
from tests.unit.scheduler.test_follower import following, run, until
from tests.unit.scheduler.test_reconcile import replica
from tests.unit.scheduler.test_scoped_passes import settled_controller


def _change(revision: int) -> base.Change:
    record = dataclasses.replace(replica("web-1"), reason=f"at {revision}", revision=revision)
    return base.Change(kind=base.ChangeKind.PUT, key="/replicas/web/web-1", record_type=Replica,
                       ids=("web", "web-1"), value=record, revision=revision)


async def _waiting(until_s: float) -> tuple[Controller, asyncio.Task[None], asyncio.Event, int]:
    """A controller waiting to reach two revisions past its mirror's, and what ends its watch."""
    ctl, _ = await settled_controller([])
    assert ctl.mirror is not None
    target = ctl.mirror.revision + 2
    ctl._catch_up = (target, time.time() + until_s, "the conflict")
    ended = asyncio.Event()
    watcher: asyncio.Task[None] = asyncio.create_task(_watch(ended))  # a watch that runs until ``ended``
    watcher.add_done_callback(ctl.poke)  # as the loop's watcher does
    return ctl, asyncio.create_task(ctl._catching_up(watcher)), ended, target


async def _watch(ended: asyncio.Event) -> None:
    await ended.wait()


def test_the_next_pass_waits_for_the_watch_to_reach_the_conflicting_revision() -> None:
    async def go() -> None:
        ctl, waiting, ended, target = await _waiting(60.0)
        assert ctl.mirror is not None
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()
        ctl.mirror.apply(_change(target - 1))
        ctl.poke()  # as the watch does for a change a pass reads
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()  # not there yet
        ctl.mirror.apply(_change(target))
        ctl.poke()
        await asyncio.wait_for(waiting, 10)
        assert ctl.caught_up == {"reached": 1, "timed out": 0} and ctl._catch_up is None
        ended.set()

    run(go)


def test_the_wait_is_bounded() -> None:
    async def go() -> None:
        ctl, waiting, ended, _ = await _waiting(0.05)
        await asyncio.wait_for(waiting, 10)
        assert ctl.caught_up == {"reached": 0, "timed out": 1} and ctl._catch_up is None
        ended.set()

    run(go)


def test_a_watch_that_ends_meanwhile_ends_the_wait() -> None:
    async def go() -> None:
        _ctl, waiting, ended, _ = await _waiting(60.0)
        ended.set()  # a resync, say: the loop's check says so
        with pytest.raises(controller_module._Resync):
            await asyncio.wait_for(waiting, 10)

    run(go)


def test_a_conflicted_pass_asks_for_the_revision_of_the_write_it_met() -> None:
    async def go() -> None:
        store = ForeignWriteStore()
        ctl, _ = await settled_controller([], store=store, empty_hosts=4)
        await ctl.step()
        ctl.actuator.submit = lambda actions: None  # type: ignore[method-assign]
        assert ctl.mirror is not None
        web = ctl.mirror.services[ServiceName("web")]
        committed = await store.commit(
            [base.Put(web.scaled(6, now=0.0))]
            + [base.Put(dataclasses.replace(replica(rid, host=None, phase=ReplicaPhase.PENDING, ready=False),
                                            revision=0)) for rid in PENDING])
        for record in committed.written:
            ctl.mirror.put(record)
        store.armed = True
        await ctl.step()
        foreign = next(r for r in (await store.snapshot()).replicas.values()
                       if store.schema.key_of(r) == store.foreign)
        assert ctl._catch_up is not None and ctl._catch_up[0] == foreign.revision
        assert ctl.mirror.replicas[ReplicaId(foreign.id)] == foreign  # learned meanwhile

    run(go)


def test_the_conflict_log_says_whose_write_a_replica_met() -> None:
    now = dataclasses.replace(replica("web-1"), decisions=(
        Decision(time=1.0, action="placed", reason="placed on node-h1"),
        Decision(time=2.0, action="running", reason="running")), revision=20)
    conflict = KeyConflict("/replicas/web/web-1", 5, 20, current=now)
    assert controller_module._conflict_said(conflict) == (
        "/replicas/web/web-1 (expected at revision 5, is at revision 20) (running: running)")
    assert controller_module._conflict_said(KeyConflict("/services/web", 5, 0)) == (
        "/services/web (expected at revision 5, is absent)")


class HeldWatch(MemoryStore):
    """A store whose watches deliver nothing while ``held``: a follower running behind."""

    def __init__(self) -> None:
        super().__init__()
        self.released = asyncio.Event()
        self.released.set()

    async def watch(self, after_revision: int, *,
                    scope: KeyRange[Any] | None = None) -> AsyncGenerator[base.Change, None]:
        async for change in super().watch(after_revision, scope=scope):
            await self.released.wait()
            yield change


@pytest.mark.parametrize("bound", [controller_module.TERM_CATCH_UP, 0.0])
def test_a_term_begun_behind_its_epoch_waits_for_the_last_terms_replicas(
        monkeypatch: pytest.MonkeyPatch, bound: float) -> None:
    """The last term created web's two replicas; this instance's follower has not brought them when the
    next term begins. Its first pass waits for the term's epoch to arrive and creates none; without the
    wait (``bound`` 0, as before part 33) it created two more."""
    monkeypatch.setattr(controller_module, "FOLLOWER_READ_WAIT", 0.05)
    monkeypatch.setattr(controller_module, "TERM_CATCH_UP", bound)

    async def scenario() -> None:
        store = HeldWatch()
        await store.commit([base.Put(build.service("web", replicas=2))])
        async with following(Follower(store)) as follower:
            await until(lambda: follower.state is not None and "web" in follower.state.services, "web")
            store.released.clear()
            await store.commit([base.Put(build.replica("web", i)) for i in (1, 2)])  # the last term's
            controller = await leader(store, follower)
            term = asyncio.create_task(controller.run())
            try:
                await until(lambda: controller.mirror is not None, "the term started")
                assert controller.mirror is not None
                assert controller.mirror.revision < controller.settings.epoch
                if bound:
                    assert controller.passes == {"full": 0, "scoped": 0}  # waiting, not deciding
                else:  # the first pass decides from the follower's state, without the last term's two
                    await until(lambda: sum(controller.passes.values()) >= 1, "a pass")
                    assert len((await store.list(store.schema.replicas_of("web"))).items) == 4
                store.released.set()
                await until(lambda: sum(controller.passes.values()) >= 1, "a pass")
                await until(lambda: controller.mirror is not None and len(controller.mirror.replicas) >= 2,
                            "the replicas followed")
                for _ in range(3):  # the passes its own writes wake, if any
                    await controller.step()
            finally:
                term.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await term
            if bound:
                replicas = (await store.list(store.schema.replicas_of("web"))).items
                assert {r.id for r in replicas} == {"web-00001", "web-00002"}  # none created again
                assert controller.caught_up == {"reached": 1, "timed out": 0}

    run(scenario)


class LostReply(MemoryStore):
    """Once ``armed``, a transaction is applied and its reply lost: ``StoreUnavailable`` with the outcome
    unknown, as etcd failing as the request went out."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    async def _execute(self, plan: txn.TxnPlan) -> int:
        revision = await super()._execute(plan)
        if self.armed:
            self.armed = False
            raise StoreUnavailable("the reply was lost", outcome_unknown=True)
        return revision


def test_after_a_write_whose_outcome_is_unknown_the_next_pass_waits_for_etcds_revision() -> None:
    async def go() -> None:
        store = LostReply()
        ctl, _ = await settled_controller([], store=store, empty_hosts=1)
        await ctl.step()
        ctl.actuator.submit = lambda actions: None  # type: ignore[method-assign]
        assert ctl.mirror is not None
        web = ctl.mirror.services[ServiceName("web")]
        for record in (await store.commit([base.Put(web.scaled(3, now=0.0))])).written:
            ctl.mirror.put(record)
        store.armed = True
        await ctl.step()  # creates and places web's third replica: applied, the reply lost
        assert ctl._catch_up is not None and ctl._catch_up[0] == 0  # etcd's revision, read when waiting
        ended = asyncio.Event()
        watcher = asyncio.create_task(_watch(ended))
        waiting = asyncio.create_task(ctl._catching_up(watcher))
        await until(lambda: ctl._catch_up is not None and ctl._catch_up[0] > 0, "etcd's revision read")
        assert ctl._catch_up is not None and ctl._catch_up[0] == await store.current_revision()
        assert not waiting.done()
        async for change in store.watch(ctl.mirror.revision):  # the watch brings what landed
            ctl.mirror.apply(change)
            ctl.poke()
            if ctl.mirror.revision >= await store.current_revision():
                break
        await asyncio.wait_for(waiting, 10)
        assert ctl.caught_up == {"reached": 1, "timed out": 0}
        assert len([r for r in ctl.mirror.replicas.values() if r.service == "web"]) == 3
        ended.set()

    run(go)
