"""A pass whose commit conflicts part-way: what landed before the conflict is in the leader's mirror for
the next pass, as a successful commit's writes are, without waiting for the watch's echo. Before, the
next pass decided the same replicas again from their old revisions and conflicted on its first
transaction, pass after pass while the watch lagged, and took the containers launched for what had
landed for orphans and retired them (docs/scaling.md, part 32). No watch runs here: the
mirror hears only what the controller itself puts in it, as a leader whose watch is far behind does."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from scheduler import reconcile
from scheduler.model import HostId, Replica, ReplicaId, ReplicaPhase, ServiceName
from scheduler.reconcile import Plan
from scheduler.store import base, txn
from scheduler.store.memory import MemoryStore
from tests.unit.scheduler.test_reconcile import container, replica
from tests.unit.scheduler.test_scoped_passes import settled_controller

PENDING = ("web-3", "web-4", "web-5", "web-6")


class ForeignWriteStore(MemoryStore):
    """Two writes a transaction (a guard takes the third slot). Once ``armed``, just before the second
    transaction another writer (a host's report being recorded, say) rewrites that transaction's first
    key, so it conflicts; ``foreign`` is the key."""

    def __init__(self) -> None:
        super().__init__(max_txn_ops=3)
        self.armed = False
        self.foreign = ""
        self._seen = 0

    async def _execute(self, plan: txn.TxnPlan) -> int:
        if self.armed and plan.writes:
            self._seen += 1
            if self._seen == 2:
                self.armed = False
                self.foreign = plan.writes[0].key
                self._revision += 1
                self._put(self.foreign, self._kvs[self.foreign].value, 0)
        return await super()._execute(plan)


async def _pending_web(store: MemoryStore) -> list[Replica]:
    listing = await store.list(store.schema.replicas_of("web"))
    return [r for r in listing.items if r.host is None]


def test_the_next_pass_decides_from_what_landed_before_a_conflict(caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(asyncio.wait_for(_scenario(caplog, watch_brings_foreign=True), 30))


def test_the_next_pass_decides_from_what_the_conflicting_key_holds_without_the_watch(
        caplog: pytest.LogCaptureFixture) -> None:
    """The other writer's change learned from the failure itself (``Mirror.learn``, part 33): before, the
    next pass wrote that key again from its old revision, and conflicted again until the watch came."""
    asyncio.run(asyncio.wait_for(_scenario(caplog, watch_brings_foreign=False), 30))


async def _scenario(caplog: pytest.LogCaptureFixture, *, watch_brings_foreign: bool) -> None:
    store = ForeignWriteStore()
    plans: list[Plan] = []
    ctl, sessions = await settled_controller([], plans=plans, store=store, empty_hosts=4)
    await ctl.step()  # the term's first pass: nothing to do
    ctl.actuator.submit = lambda actions: None  # type: ignore[method-assign]
    assert ctl.mirror is not None
    # Four more web replicas, recorded pending (as the API or an earlier pass left them).
    web = ctl.mirror.services[ServiceName("web")]
    await store.commit([base.Put(web.scaled(6, now=0.0))]
                       + [base.Put(dataclasses.replace(replica(rid, host=None, phase=ReplicaPhase.PENDING,
                                                               ready=False), revision=0)) for rid in PENDING])
    for record in (await store.snapshot()).replicas.values():
        ctl.mirror.put(record)
    ctl.mirror.put((await store.snapshot()).services[ServiceName("web")])

    store.armed = True
    with caplog.at_level(logging.INFO, logger="scheduler.controller"):
        await ctl.step()
    assert "conflicted" in caplog.text
    placed_first = {r.id for r in (await store.snapshot()).replicas.values()
                    if r.id in PENDING and r.host is not None}
    assert placed_first  # the first transaction landed
    foreign = next(r for r in (await store.snapshot()).replicas.values()
                   if store.schema.key_of(r) == store.foreign)
    if watch_brings_foreign:
        # The watch brings the other writer's change (small, and near the head of a lagging watch); the
        # echoes of the pass's own landed writes have not come.
        ctl.mirror.put(foreign)
    else:
        assert ctl.mirror.replicas[foreign.id] == foreign  # learned from the conflict, at its revision
        assert f"etcd at {await store.current_revision()}" in caplog.text  # the log says how far behind
    for rid in placed_first:
        held = ctl.mirror.replicas[ReplicaId(rid)]
        assert held.host is not None  # the mirror holds what landed, at its revision
        # Its launch went as its record landed: the container now runs on its host.
        session = sessions[held.host]
        session.observation = dataclasses.replace(
            session.observation, containers={**session.observation.containers, rid: container(rid)})
        ctl._host_changed(HostId(held.host))

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scheduler.controller"):
        await ctl.step()
    assert "conflicted" not in caplog.text
    retired = [a.container for a in plans[-1].actions if isinstance(a, reconcile.Retire)]
    assert not set(retired) & placed_first  # owned by the records that landed, not orphans
    assert await _pending_web(store) == []
    # Nothing placed twice: every web replica is one record, the service has as many as it asks for.
    live = [r for r in (await store.snapshot()).replicas.values() if r.service == "web"
            and r.phase is not ReplicaPhase.STOPPING]
    assert len(live) == 6


class SecondDeleteConflicts(MemoryStore):
    """One write a transaction, one transaction at a time. Once ``armed``, the second transaction that
    deletes a key meets another writer's put of that key just before, so it conflicts after the first
    delete went in."""

    def __init__(self) -> None:
        super().__init__(max_txn_ops=2)
        self.armed = False
        self.deletes = 0

    async def _execute(self, plan: txn.TxnPlan) -> int:
        if self.armed and any(w.value is None for w in plan.writes):
            self.deletes += 1
            if self.deletes == 2:
                self.armed = False
                key = plan.writes[0].key
                self._revision += 1
                self._put(key, self._kvs[key].value, 0)
        return await super()._execute(plan)


def test_a_delete_that_went_in_before_a_conflict_is_not_made_again(caplog: pytest.LogCaptureFixture) -> None:
    """A pass drops two stopping replicas whose containers are gone; the second drop conflicts after the
    first went in. The next pass, with no watch delivering anything, neither deletes the first again (before
    part 33 it did, and conflicted on it as absent: its mirror still held it) nor conflicts on the second."""
    asyncio.run(asyncio.wait_for(_deletes(caplog), 30))


async def _deletes(caplog: pytest.LogCaptureFixture) -> None:
    store = SecondDeleteConflicts()
    ctl, _sessions = await settled_controller([], store=store, empty_hosts=1)
    ctl.settings = dataclasses.replace(ctl.settings, commit_in_flight=1)
    await ctl.step()  # the term's first pass: nothing to do
    assert ctl.mirror is not None
    stopping = [dataclasses.replace(replica(rid, host="h3", phase=ReplicaPhase.STOPPING, ready=False),
                                    revision=0) for rid in ("web-8", "web-9")]
    for record in (await store.commit([base.Put(r) for r in stopping])).written:
        ctl.mirror.put(record)

    store.armed = True
    with caplog.at_level(logging.INFO, logger="scheduler.controller"):
        await ctl.step()
    assert "conflicted" in caplog.text and store.deletes == 2
    left = {r.id for r in (await store.snapshot()).replicas.values() if r.id in ("web-8", "web-9")}
    assert len(left) == 1  # one drop went in, the other conflicted
    assert set(ctl.mirror.replicas) & {"web-8", "web-9"} == left
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scheduler.controller"):
        await ctl.step()
    assert "conflicted" not in caplog.text
    assert not {r.id for r in (await store.snapshot()).replicas.values()} & {"web-8", "web-9"}
