"""A pass's launches go out as their records' transactions land (``controller._Launching``): a host's
containers are created once their records are in etcd, in one call per host, without waiting for the rest
of the pass's batch; after a failed commit, only the hosts whose records all landed have had theirs."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from scheduler import reconcile
from scheduler.controller import _Launching
from scheduler.model import HostId, Replica, ReplicaId, ServiceName
from scheduler.reconcile import Plan
from scheduler.store import txn
from scheduler.store.errors import StoreUnavailable
from scheduler.store.memory import MemoryStore
from tests.unit.scheduler.test_reconcile import NOW, replica
from tests.unit.scheduler.test_scoped_passes import settled_controller


class HeldStore(MemoryStore):
    """Two writes a transaction (a guard takes the third slot); while ``holding``, every transaction after
    the first waits for ``release``, then fails when ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__(max_txn_ops=3)
        self.holding = False
        self.fail = False
        self.release = asyncio.Event()
        self._executed = 0

    async def _execute(self, plan: txn.TxnPlan) -> int:
        if self.holding:
            self._executed += 1
            if self._executed > 1:
                await self.release.wait()
                if self.fail:
                    raise StoreUnavailable("etcd went away (test)")
        return await super()._execute(plan)


async def recorded(store: MemoryStore, launches: list[reconcile.Launch]) -> set[str]:
    """The launched replicas whose records are in the store, placed on the launch's host."""
    found = set()
    for launch in launches:
        record = await store.get(store.schema.replica(launch.service, launch.replica))
        if isinstance(record, Replica) and record.host == launch.host:
            found.add(launch.replica)
    return found


@pytest.mark.parametrize("fail", [False, True], ids=["landed", "failed"])
def test_launches_go_as_their_records_land(fail: bool) -> None:
    async def go() -> None:
        store = HeldStore()
        plans: list[Plan] = []
        ctl, _ = await settled_controller([], plans=plans, store=store, empty_hosts=4)
        await ctl.step()  # the term's first pass: nothing to do
        sent: list[tuple[reconcile.AgentAction, ...]] = []
        ctl.actuator.submit = sent.append  # type: ignore[method-assign]
        assert ctl.mirror is not None
        # Four more, spread one to each empty host.
        ctl.mirror.put(ctl.mirror.services[ServiceName("web")].scaled(6, now=NOW))
        store.holding, store.fail = True, fail
        step = asyncio.create_task(ctl.step())
        for _ in range(200):  # bounded: until the first transaction's launches are handed over
            if sent or step.done():
                break
            await asyncio.sleep(0)
        assert not step.done() and len(sent) == 1
        first = [a for a in sent[0] if isinstance(a, reconcile.Launch)]
        assert first and len(first) == len(sent[0])
        assert await recorded(store, first) == {a.replica for a in first}  # their records landed first
        store.release.set()
        await step
        handed = [a for actions in sent for a in actions]
        web = {r.id for r in (await store.list(store.schema.replicas_of("web"))).items}
        if fail:  # the commit failed (and no plan was reported): only what landed went out
            assert handed == first and len(first) < 4
            assert web == {"web-1", "web-2"} | {a.replica for a in first}
        else:  # every launch once, each after its record
            launches = [a for a in plans[-1].actions if isinstance(a, reconcile.Launch)]
            assert len(launches) == 4 and len({a.host for a in launches}) == 4
            assert set(first) < set(launches)  # the rest had not landed yet
            assert sorted(a.replica for a in handed) == sorted(a.replica for a in launches)
            assert await recorded(store, launches) == {a.replica for a in launches}
            assert web == {"web-1", "web-2"} | {a.replica for a in launches}
        assert set(ctl._acting) >= {a.replica for a in handed}

    asyncio.run(go())


def test_a_hosts_launches_go_together_once_all_their_records_landed() -> None:
    """One call per host, as after a whole commit: h1's two launches wait for both records; web-4 on h2 is
    launched again with no record written in the pass, so h2's other launch waits for the commit with
    it; nothing goes twice."""
    def launch(rid: str, host: str) -> reconcile.Launch:
        return reconcile.Launch(host=HostId(host), replica=ReplicaId(rid), service=ServiceName("web"),
                                generation=1)

    written = {rid: replica(rid, host=host) for rid, host in
               (("web-1", "h1"), ("web-2", "h1"), ("web-3", "h2"), ("web-5", "h3"))}
    actions = (launch("web-1", "h1"), launch("web-2", "h1"), launch("web-3", "h2"), launch("web-4", "h2"),
               launch("web-5", "h3"), reconcile.Retire(host=HostId("h3"), container="old", reason="orphan"))
    plan = Plan(writes=tuple(reconcile.WriteReplica(r) for r in written.values()), actions=actions)
    sent: list[tuple[reconcile.AgentAction, ...]] = []
    launching = _Launching(plan, sent.append)
    launching.landed((written["web-1"], written["web-3"]))
    assert sent == []  # h1 waits for web-2; h2 waits for the commit
    launching.landed((written["web-2"], written["web-5"]))
    assert [sorted(a.replica for a in batch if isinstance(a, reconcile.Launch)) for batch in sent] == [
        ["web-1", "web-2", "web-5"]]
    assert launching.rest() == (actions[2], actions[3], actions[5])


def test_the_records_launches_wait_for_are_committed_first_each_hosts_together() -> None:
    """The step decides service by service: a replacement's record follows the lost replica it replaces,
    and a host's launches come from several services. Committed in that order, a host's launches were
    ready only once its last record landed, late in the commit; ``first`` puts the records each host's
    launches wait for first, host by host, and keeps the rest (marks, a host whose launch has no record
    in the pass, drops) in the order decided."""
    def launch(rid: str, host: str) -> reconcile.Launch:
        return reconcile.Launch(host=HostId(host), replica=ReplicaId(rid), service=ServiceName(rid[:3]),
                                generation=1)

    old_a, old_b = replica("aaa-0", host="lost"), replica("bbb-0", host="lost")
    new = {rid: replica(rid, host=host) for rid, host in
           (("aaa-1", "h1"), ("bbb-1", "h2"), ("ccc-1", "h1"), ("ddd-1", "h3"), ("eee-1", "h2"))}
    dropped = reconcile.DropReplica(replica("fff-0", host="h4"))
    writes = (reconcile.WriteReplica(old_a), reconcile.WriteReplica(new["aaa-1"]),
              reconcile.WriteReplica(old_b), reconcile.WriteReplica(new["bbb-1"]), dropped,
              reconcile.WriteReplica(new["ccc-1"]), reconcile.WriteReplica(new["ddd-1"]),
              reconcile.WriteReplica(new["eee-1"]))
    actions = (launch("aaa-1", "h1"), launch("bbb-1", "h2"), launch("ccc-1", "h1"), launch("ddd-1", "h3"),
               launch("ggg-1", "h3"), launch("eee-1", "h2"))  # ggg-1: launched again, no record written
    plan = Plan(writes=writes, actions=actions)
    launching = _Launching(plan, lambda _: None)
    ordered = launching.first(plan.writes)
    assert sorted(map(id, ordered)) == sorted(map(id, writes))  # the same writes, each once
    assert [w.replica.id for w in ordered] == [
        "aaa-1", "ccc-1", "bbb-1", "eee-1",   # h1's, then h2's: the hosts whose launches all have records
        "aaa-0", "bbb-0", "fff-0", "ddd-1"]   # as decided: h3 waits for the whole commit anyway
    sent: list[tuple[reconcile.AgentAction, ...]] = []
    launching = _Launching(plan, sent.append)
    assert launching.spread(0.0) == ""  # nothing went early (yet): the log line says nothing of it
    since = time.perf_counter()
    launching.landed((new["aaa-1"], new["ccc-1"]))  # the first transaction of two writes: h1 is ready
    assert [[a.replica for a in batch] for batch in sent] == [["aaa-1", "ccc-1"]]
    said = launching.spread(since)
    assert re.fullmatch(r"; 2 launches went [0-9.]+/[0-9.]+/[0-9.]+s into the commit", said)
    assert _Launching(Plan(writes=writes), sent.append).first(writes) == list(writes)  # no launch: as is
