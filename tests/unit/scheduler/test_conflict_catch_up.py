"""After a conflicted pass the loop waits, bounded, for the watch to bring its mirror up to the revision of
the writes the conflict met (``Controller._catching_up``), then runs the next pass at once: a pass decided
from a mirror still behind conflicted again on other keys the same writers had changed (docs/scaling.md,
part 33)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from scheduler import controller as controller_module
from scheduler.controller import Controller
from scheduler.model import Decision, Replica, ReplicaId, ReplicaPhase, ServiceName
from scheduler.store import base
from scheduler.store.errors import KeyConflict
from tests.unit.scheduler.test_conflict_landed import PENDING, ForeignWriteStore
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
    ctl._catch_up = (target, time.time() + until_s)
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
        assert ctl.caught_up == {"reached": 1, "timed out": 0}
        assert ctl._wake.is_set() and ctl._catch_up is None  # the next pass, at once
        ended.set()

    asyncio.run(go())


def test_the_wait_is_bounded() -> None:
    async def go() -> None:
        ctl, waiting, ended, _ = await _waiting(0.05)
        await asyncio.wait_for(waiting, 10)
        assert ctl.caught_up == {"reached": 0, "timed out": 1} and ctl._wake.is_set()
        ended.set()

    asyncio.run(go())


def test_a_watch_that_ends_meanwhile_ends_the_wait() -> None:
    async def go() -> None:
        _ctl, waiting, ended, _ = await _waiting(60.0)
        ended.set()  # a resync, say: the loop's check says so
        with pytest.raises(controller_module._Resync):
            await asyncio.wait_for(waiting, 10)

    asyncio.run(go())


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

    asyncio.run(go())


def test_the_conflict_log_says_whose_write_a_replica_met() -> None:
    now = dataclasses.replace(replica("web-1"), decisions=(
        Decision(time=1.0, action="placed", reason="placed on node-h1"),
        Decision(time=2.0, action="running", reason="running")), revision=20)
    conflict = KeyConflict("/replicas/web/web-1", 5, 20, current=now)
    assert controller_module._conflict_said(conflict) == (
        "/replicas/web/web-1 (expected at revision 5, is at revision 20) (running: running)")
    assert controller_module._conflict_said(KeyConflict("/services/web", 5, 0)) == (
        "/services/web (expected at revision 5, is absent)")
