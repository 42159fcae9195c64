"""The leader's elastic loop against the in-memory store, with a stand-in step (the real one has its own
tests) and a fake provider: the plan committed in one guarded transaction, due requests delivered and
their outcomes written with a compare-and-swap (read again on conflict), backoff respected, attempts
bounded, a deposed leader refused, and a second leader delivering an undelivered request with its id."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import pytest

from scheduler.controller import Mirror
from scheduler.elastic.loop import AttemptRecord, ElasticLoop, ElasticSettings, due_requests, with_outcome
from scheduler.elastic.provider import Attempt
from scheduler.elastic.step import ElasticInputs, ElasticPlan
from scheduler.model import (
    DeliveryState,
    GroupDecision,
    GroupName,
    HostAdmin,
    HostGroup,
    HostGroupSpec,
    HostGroupStatus,
    HostId,
    HostRecord,
    HostShape,
    HostStatus,
    ProviderRequest,
    ProviderRequestKind,
    WebhookProvider,
)
from scheduler.placement.registry import default_profile
from scheduler.store import base
from scheduler.store.errors import NotLeader
from scheduler.store.memory import MemoryStore
from scheduler.store.records import LeaderRecord

WORKERS = GroupName("workers")
NOW = 1_000.0
WEBHOOK = WebhookProvider(url="https://provisioner.example/shoal")


class FakeProvider:
    """Answers from a script (the last answer repeats); with ``gate``, each attempt waits for it."""

    def __init__(self, *answers: Attempt, gate: asyncio.Event | None = None) -> None:
        self.answers = list(answers) or [Attempt(True)]
        self.calls: list[ProviderRequest] = []
        self.gate = gate
        self.started = asyncio.Event()

    async def deliver(self, request: ProviderRequest, *, group: HostGroupSpec,
                      hosts: Mapping[HostId, HostRecord]) -> Attempt:
        self.calls.append(request)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def group(name: GroupName = WORKERS, *, provider: bool = True) -> HostGroup:
    return HostGroup(spec=HostGroupSpec(name=name, max_hosts=5, webhook=WEBHOOK if provider else None))


def scale_out_request(number: int, *, now: float = NOW) -> ProviderRequest:
    return ProviderRequest(id=f"workers-{number}", kind=ProviderRequestKind.SCALE_OUT, created_at=now,
                           count=1, shape=HostShape(cpu_millis=1000, memory_bytes=1 << 30),
                           reason="1 replica of web pending", next_attempt_at=now)


def asks_once(inputs: ElasticInputs) -> ElasticPlan:
    """A stand-in step: a group whose status has no request asks for one host."""
    out = {}
    for name in inputs.groups:
        status = inputs.statuses.get(name) or HostGroupStatus(group=name)
        if not status.requests:
            request = scale_out_request(status.next_request_number, now=inputs.now)
            out[name] = dataclasses.replace(status, requests=(request,),
                                            next_request_number=status.next_request_number + 1)
    return ElasticPlan(statuses=out)


def does_nothing(inputs: ElasticInputs) -> ElasticPlan:
    return ElasticPlan(statuses={})


@dataclasses.dataclass
class Cluster:
    store: MemoryStore
    epoch: int
    lease: int
    mirror: Mirror

    async def refresh(self) -> None:
        self.mirror = Mirror.of(await self.store.snapshot())


async def cluster(*records: base.Record) -> Cluster:
    store = MemoryStore()
    lease = await store.grant_lease(10)
    leader = await store.campaign(LeaderRecord(instance="one"), lease_id=lease.id)
    if records:
        await store.commit([base.Put(r) for r in records])
    return Cluster(store, leader.epoch, lease.id, Mirror.of(await store.snapshot()))


def loop_for(c: Cluster, provider: FakeProvider, *, step: Callable[[ElasticInputs], ElasticPlan] = asks_once,
             clock: Callable[[], float] = lambda: NOW, epoch: int | None = None,
             attempts: list[AttemptRecord] | None = None, max_deliveries: int = 8) -> ElasticLoop:
    def committed(done: base.Committed, ops: Sequence[base.Op]) -> None:
        for record in done.written:
            c.mirror.put(record)
        for op in ops:
            if isinstance(op, base.Delete) and isinstance(op.record, HostRecord):
                c.mirror.hosts.pop(op.record.id, None)
            elif isinstance(op, base.Delete) and isinstance(op.record, HostStatus):
                c.mirror.statuses.pop(op.record.id, None)

    settings = ElasticSettings(guard=base.LeaderGuard(c.epoch if epoch is None else epoch),
                               profile=default_profile(), max_deliveries=max_deliveries)
    return ElasticLoop(c.store, settings, state=lambda: c.mirror, provider=provider, step=step,
                       on_committed=committed, on_attempt=(attempts if attempts is not None else []).append,
                       clock=clock)


async def stored_status(c: Cluster) -> HostGroupStatus:
    status = await c.store.get(c.store.schema.hostgroup_status(WORKERS))
    assert status is not None
    return status


def run(coro: Callable[[], object]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


# -- committing the plan --------------------------------------------------------------------------------

def test_a_plan_is_committed_in_one_guarded_transaction() -> None:
    member = HostRecord(id=HostId("h1"), name="w1", address="10.0.0.1:7070", labels=(("group", "workers"),))
    drained = HostRecord(id=HostId("h2"), name="w2", address="10.0.0.2:7070", labels=(("group", "workers"),))
    gone = HostRecord(id=HostId("h3"), name="w3", address="10.0.0.3:7070", labels=(("group", "workers"),))
    seen: list[ElasticInputs] = []

    def plan(inputs: ElasticInputs) -> ElasticPlan:
        seen.append(inputs)
        status = HostGroupStatus(group=WORKERS, desired_hosts=1,
                                 decisions=(GroupDecision(inputs.now, "drain", "w2 underused"),))
        return ElasticPlan(statuses={WORKERS: status}, drain=(HostId("h2"),), forget=(HostId("h3"),))

    async def go() -> None:
        c = await cluster(group(), member, drained, gone, HostStatus(id=HostId("h3"), reason="gone"))
        before = c.store.revision
        loop = loop_for(c, FakeProvider(), step=plan)
        await loop.tick()
        assert seen[0].now == NOW and set(seen[0].hosts) == {"h1", "h2", "h3"}
        assert seen[0].statuses == {}  # none yet: the step starts each group from a fresh status
        assert c.store.revision == before + 1  # one transaction
        snap = await c.store.snapshot()
        assert snap.hostgroup_statuses[WORKERS].decisions[0].reason == "w2 underused"
        assert snap.hosts[HostId("h2")].admin is HostAdmin.DRAINING
        assert snap.hosts[HostId("h1")].admin is HostAdmin.ACTIVE
        assert HostId("h3") not in snap.hosts and HostId("h3") not in snap.host_statuses
        # The mirror has the leader's own writes at once: the same plan again writes nothing new.
        assert HostId("h3") not in c.mirror.hosts
        assert c.mirror.hostgroup_statuses[WORKERS].revision == c.store.revision
        await loop.tick()
        assert c.store.revision == before + 2  # the status again; h2 already draining, h3 gone: left alone
        assert (await c.store.snapshot()).hosts[HostId("h2")].revision < c.store.revision

    run(go)


def test_a_deposed_leaders_plan_writes_nothing() -> None:
    async def go() -> None:
        c = await cluster(group())
        before = c.store.revision
        with pytest.raises(NotLeader):
            await loop_for(c, FakeProvider(), epoch=c.epoch + 99).tick()
        assert c.store.revision == before
        assert (await c.store.snapshot()).hostgroup_statuses == {}

    run(go)


def test_a_deleted_group_is_neither_decided_nor_delivered() -> None:
    async def go() -> None:
        orphan = HostGroupStatus(group=WORKERS, requests=(scale_out_request(1),), next_request_number=2)
        c = await cluster(orphan)
        provider = FakeProvider()
        loop = loop_for(c, provider)
        await loop.tick()
        await loop.wait_attempts()
        assert provider.calls == [] and (await stored_status(c)).requests[0].attempts == 0

    run(go)


# -- delivering -----------------------------------------------------------------------------------------

def test_a_new_request_is_stored_then_delivered_and_the_outcome_written() -> None:
    attempts: list[AttemptRecord] = []

    async def go() -> None:
        c = await cluster(group())
        provider = FakeProvider(Attempt(True))
        loop = loop_for(c, provider, attempts=attempts)
        await loop.tick()
        assert loop.inflight == {"workers-1"}
        await loop.wait_attempts()
        assert [r.id for r in provider.calls] == ["workers-1"]
        assert provider.calls[0].state is DeliveryState.PENDING  # stored before the first attempt
        status = await stored_status(c)
        [request] = status.requests
        assert (request.state, request.attempts, request.delivered_at) == (DeliveryState.DELIVERED, 1, NOW)
        assert status.next_request_number == 2
        await loop.tick()  # delivered: never attempted again
        await loop.wait_attempts()
        assert len(provider.calls) == 1

    run(go)
    assert attempts == [AttemptRecord(WORKERS, "scale_out", "delivered")]


def test_a_refused_attempt_backs_off_and_is_retried_with_the_same_id() -> None:
    attempts: list[AttemptRecord] = []
    clock = [NOW]

    async def go() -> None:
        c = await cluster(group())
        provider = FakeProvider(Attempt(False, "answered 503"), Attempt(True))
        loop = loop_for(c, provider, attempts=attempts, clock=lambda: clock[0])
        await loop.tick()
        await loop.wait_attempts()
        [request] = (await stored_status(c)).requests
        assert (request.state, request.attempts, request.last_error) == (DeliveryState.PENDING, 1,
                                                                         "answered 503")
        assert request.next_attempt_at == NOW + 0.5
        clock[0] = NOW + 0.4  # not due yet
        await loop.tick()
        await loop.wait_attempts()
        assert len(provider.calls) == 1
        clock[0] = NOW + 0.5
        await loop.tick()
        await loop.wait_attempts()
        assert [r.id for r in provider.calls] == ["workers-1", "workers-1"]
        [request] = (await stored_status(c)).requests
        assert (request.state, request.attempts, request.last_error) == (DeliveryState.DELIVERED, 2, "")

    run(go)
    assert [a.outcome for a in attempts] == ["failed", "delivered"]


def test_an_outcome_that_conflicts_is_applied_to_the_status_read_again() -> None:
    async def go() -> None:
        c = await cluster(group())
        gate = asyncio.Event()
        provider = FakeProvider(gate=gate)
        loop = loop_for(c, provider)
        await loop.tick()
        await provider.started.wait()
        # Meanwhile something else is recorded on the status (what a tick does); the mirror does not
        # know yet, so the outcome's first compare-and-swap fails.
        current = await stored_status(c)
        noted = dataclasses.replace(current, decisions=(GroupDecision(NOW, "wait", "expected hosts"),))
        await c.store.commit([base.Put(noted)], guard=base.LeaderGuard(c.epoch))
        gate.set()
        await loop.wait_attempts()
        status = await stored_status(c)
        assert status.requests[0].state is DeliveryState.DELIVERED
        assert status.decisions[0].reason == "expected hosts"  # kept

    run(go)


def test_a_request_being_attempted_is_not_attempted_twice_and_attempts_are_bounded() -> None:
    def three(inputs: ElasticInputs) -> ElasticPlan:
        status = inputs.statuses.get(WORKERS) or HostGroupStatus(group=WORKERS)
        if status.requests:
            return ElasticPlan(statuses={})
        return ElasticPlan(statuses={WORKERS: dataclasses.replace(
            status, requests=tuple(scale_out_request(n) for n in (1, 2, 3)), next_request_number=4)})

    async def go() -> None:
        c = await cluster(group())
        gate = asyncio.Event()
        provider = FakeProvider(gate=gate)
        loop = loop_for(c, provider, step=three, max_deliveries=2)
        await loop.tick()
        await loop.tick()  # the first two are still in flight: nothing more starts
        assert loop.inflight == {"workers-1", "workers-2"}
        gate.set()
        await loop.wait_attempts()
        await loop.tick()
        await loop.wait_attempts()
        assert sorted(r.id for r in provider.calls) == ["workers-1", "workers-2", "workers-3"]
        assert all(r.state is DeliveryState.DELIVERED for r in (await stored_status(c)).requests)

    run(go)


def test_a_group_without_a_provider_asks_nobody() -> None:
    async def go() -> None:
        c = await cluster(group(provider=False))
        provider = FakeProvider()
        loop = loop_for(c, provider)
        await loop.tick()
        await loop.wait_attempts()
        assert provider.calls == []
        assert (await stored_status(c)).requests[0].state is DeliveryState.PENDING

    run(go)


# -- a new leader ---------------------------------------------------------------------------------------

def test_a_new_leader_delivers_what_the_old_one_did_not_with_the_same_id() -> None:
    async def go() -> None:
        c = await cluster(group())
        gate = asyncio.Event()
        old_provider = FakeProvider(gate=gate)
        old = loop_for(c, old_provider)
        await old.tick()  # stored workers-1, attempt in flight
        await old_provider.started.wait()
        # The old leader's lease ends; another instance wins.
        await c.store.revoke_lease(c.lease)
        lease = await c.store.grant_lease(10)
        leader = await c.store.campaign(LeaderRecord(instance="two"), lease_id=lease.id)
        assert leader.instance == "two"
        # The old attempt ends now: its outcome is refused, and the old loop learns it is deposed.
        gate.set()
        await old.wait_attempts()
        assert (await stored_status(c)).requests[0].attempts == 0
        with pytest.raises(NotLeader):
            await old.tick()
        await old.close()
        # The new leader reads etcd afresh and delivers the stored request under its stored id.
        c.epoch = leader.epoch
        await c.refresh()
        new_provider = FakeProvider(Attempt(True))
        new = loop_for(c, new_provider, step=does_nothing)
        await new.tick()
        await new.wait_attempts()
        assert [r.id for r in new_provider.calls] == ["workers-1"]
        assert new_provider.calls[0].created_at == old_provider.calls[0].created_at
        [request] = (await stored_status(c)).requests
        assert (request.id, request.state, request.attempts) == ("workers-1", DeliveryState.DELIVERED, 1)

    run(go)


# -- the pure parts -------------------------------------------------------------------------------------

def test_due_requests_oldest_first_and_with_outcome_only_on_pending() -> None:
    late = dataclasses.replace(scale_out_request(2), next_attempt_at=NOW + 5)
    done = dataclasses.replace(scale_out_request(3), state=DeliveryState.DELIVERED)
    first = dataclasses.replace(scale_out_request(1), next_attempt_at=NOW - 1)
    status = HostGroupStatus(group=WORKERS, requests=(late, done, first))
    mirror = Mirror(revision=1, hostgroups={WORKERS: group()}, hostgroup_statuses={WORKERS: status})
    assert [r.id for _, r in due_requests(mirror, now=NOW)] == ["workers-1"]
    assert [r.id for _, r in due_requests(mirror, now=NOW + 5)] == ["workers-1", "workers-2"]
    assert due_requests(mirror, now=NOW + 5, busy=frozenset({"workers-1", "workers-2"})) == []
    assert with_outcome(status, "workers-3", ok=True, error="", now=NOW) is None  # delivered already
    assert with_outcome(status, "workers-9", ok=True, error="", now=NOW) is None  # gone
    updated = with_outcome(status, "workers-2", ok=False, error="refused", now=NOW)
    assert updated is not None and updated.requests[0].last_error == "refused"
    assert updated.requests[1:] == status.requests[1:]


def test_a_plan_that_conflicts_is_dropped_and_due_requests_are_still_delivered() -> None:
    member = HostRecord(id=HostId("h1"), name="w1", address="10.0.0.1:7070", labels=(("group", "workers"),))

    def drain(inputs: ElasticInputs) -> ElasticPlan:
        return ElasticPlan(statuses={}, drain=(HostId("h1"),))

    async def go() -> None:
        waiting = HostGroupStatus(group=WORKERS, requests=(scale_out_request(1),), next_request_number=2)
        c = await cluster(group(), member, waiting)
        # The agent re-registers behind the mirror's back: the drain's compare-and-swap loses.
        await c.store.commit([base.Put(dataclasses.replace(c.mirror.hosts[HostId("h1")], name="w1b"))])
        provider = FakeProvider()
        loop = loop_for(c, provider, step=drain)
        await loop.tick()
        await loop.wait_attempts()
        snap = await c.store.snapshot()
        assert snap.hosts[HostId("h1")].admin is HostAdmin.ACTIVE  # nothing of the plan landed
        assert [r.id for r in provider.calls] == ["workers-1"]
        assert snap.hostgroup_statuses[WORKERS].requests[0].state is DeliveryState.DELIVERED

    run(go)
