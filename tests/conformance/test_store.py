"""Conformance suite for ``scheduler.store``: the same checks against ``MemoryStore`` and ``EtcdStore``.

The etcd variant runs against a real etcd (the session's shared member, each test under a prefix of its
own; marked ``integration``) with a page size of 50 keys, so snapshots and lists of a few hundred records
read several pages. "Another client" is a second ``EtcdStore`` on the same etcd, or the same
``MemoryStore``. Keys "written by hand" (unknown shapes, garbage) go through aetcd directly, or
``MemoryStore.put_raw``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import aetcd
import pytest

from scheduler import model
from scheduler.store.base import (
    MAX_TXN_OPS,
    Change,
    ChangeKind,
    Delete,
    LeaderGuard,
    Put,
    Store,
)
from scheduler.store.errors import Compacted, Conflict, CorruptRecord, LeaseExpired, NotLeader
from scheduler.store.etcd import EtcdSettings, EtcdStore
from scheduler.store.memory import MemoryStore
from scheduler.store.records import InstanceRecord, LeaderRecord, Record, encode
from tests.fixtures import scheduler_records as build
from tests.fixtures.etcd import EtcdCluster, etcd  # noqa: F401 - a fixture, found by name

HANG_GUARD_S = 60.0  # a scenario that has not finished by then hangs: fail it, do not wait for pytest


@dataclass
class Backend:
    """Opens stores on one backend for a test (see the module docstring)."""

    name: str
    prefix: str
    endpoints: str = ""
    memory: MemoryStore | None = None
    opened: list[Store] = field(default_factory=list)

    async def open(self) -> Store:
        if self.name == "memory":
            if self.memory is None:
                self.memory = MemoryStore(prefix=self.prefix)
            return self.memory
        store = await EtcdStore.open(EtcdSettings(self.endpoints, prefix=self.prefix, page_size=50))
        self.opened.append(store)
        return store

    async def put_raw(self, key: str, value: bytes) -> None:
        if self.memory is not None:
            self.memory.put_raw(key, value)
            return
        host, _, port = self.endpoints.removeprefix("http://").rpartition(":")
        async with aetcd.Client(host=host, port=int(port)) as client:
            await client.put(key.encode(), value)

    async def close(self) -> None:
        for store in self.opened:
            await store.close()
        if self.memory is not None:
            await self.memory.close()


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Backend:
    prefix = f"/t-{secrets.token_hex(4)}/shoal/v1/"  # tests share the session's etcd: keep apart
    if request.param == "memory":
        return Backend("memory", prefix)
    cluster: EtcdCluster = request.getfixturevalue("etcd")
    return Backend("etcd", prefix, endpoints=cluster.endpoints)


Scenario = Callable[[Store], Awaitable[None]]


def run(backend: Backend, scenario: Scenario) -> None:
    async def main() -> None:
        try:
            store = await backend.open()
            await asyncio.wait_for(scenario(store), HANG_GUARD_S)
        finally:
            await backend.close()

    asyncio.run(main())


async def take(changes: AsyncGenerator[Change, None], n: int) -> list[Change]:
    out: list[Change] = []
    async for change in changes:
        out.append(change)
        if len(out) == n:
            break
    return out


# -- reads and compare-and-swap writes ----------------------------------------------------------------


def test_a_put_record_reads_back_with_its_revision(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        assert await store.get(store.schema.service("web")) is None
        committed = await store.commit([Put(build.full_service())])
        assert len(committed.revisions) == 1
        got = await store.get(store.schema.service("web"))
        assert got == dataclasses.replace(build.full_service(), revision=committed.revision)
        assert committed.written == (got,)
        assert await store.current_revision() == committed.revision

    run(backend, scenario)


def test_creating_an_existing_key_conflicts(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        first = await store.commit([Put(build.host("h1"))])
        with pytest.raises(Conflict) as caught:
            await store.commit([Put(build.host("h1", zone="b"))])
        key = store.schema.host("h1").key
        assert caught.value.keys == (key,)
        assert (caught.value.conflicts[0].expected, caught.value.conflicts[0].actual) == (0, first.revision)
        assert key in str(caught.value)
        assert (await store.get(store.schema.host("h1"))) == dataclasses.replace(build.host("h1"),
                                                                                 revision=first.revision)

    run(backend, scenario)


def test_of_two_writers_that_read_the_same_revision_only_the_first_wins(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        other = await backend.open()
        await store.commit([Put(build.service("web", replicas=1))])
        mine = await store.get(store.schema.service("web"))
        theirs = await other.get(other.schema.service("web"))
        assert mine is not None and theirs is not None and mine.revision == theirs.revision
        won = await other.commit([Put(dataclasses.replace(theirs, spec=dataclasses.replace(theirs.spec,
                                                                                            replicas=5)))])
        with pytest.raises(Conflict) as caught:
            await store.commit([Put(dataclasses.replace(mine, spec=dataclasses.replace(mine.spec,
                                                                                        replicas=9)))])
        assert caught.value.conflicts[0].expected == mine.revision
        assert caught.value.conflicts[0].actual == won.revision
        now = await store.get(store.schema.service("web"))
        assert now is not None and now.spec.replicas == 5
        # The failure told what won, decoded, and what was written: no read needed to learn it.
        assert caught.value.conflicts[0].current == now == won.written[0]
        assert caught.value.conflicts[0].written.spec.replicas == 9
        assert caught.value.etcd_revision >= won.revision
        # Re-read and recompute: the retry on the fresh revision goes in.
        await store.commit([Put(dataclasses.replace(now, spec=dataclasses.replace(now.spec, replicas=9)))])
        final = await other.get(other.schema.service("web"))
        assert final is not None and final.spec.replicas == 9

    run(backend, scenario)


def test_a_conflict_on_a_key_damaged_by_hand_still_names_it(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        first = await store.commit([Put(build.host("h1"))])
        await backend.put_raw(store.schema.host("h1").key, b"not json")
        with pytest.raises(Conflict) as caught:
            await store.commit([Put(build.host("h1", zone="b", revision=first.revision))])
        conflict = caught.value.conflicts[0]
        assert conflict.key == store.schema.host("h1").key and conflict.actual > first.revision
        assert conflict.current is None  # not a record: nothing to learn from it (the watch says so)

    run(backend, scenario)


def test_a_delete_names_the_revision_it_read(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        put = await store.commit([Put(build.replica("web", 1))])
        stale = build.replica("web", 1, revision=put.revision)
        updated = await store.commit([Put(dataclasses.replace(stale, reason="updated"))])
        with pytest.raises(Conflict):
            await store.commit([Delete(stale)])
        await store.commit([Delete(stale, expected=updated.revision)])
        assert await store.get(store.schema.replica("web", stale.id)) is None
        with pytest.raises(Conflict) as caught:  # gone: nothing to delete at that revision
            await store.commit([Delete(stale, expected=updated.revision)])
        assert caught.value.conflicts[0].actual == 0
        assert caught.value.conflicts[0].current is None

    run(backend, scenario)


def test_a_transaction_applies_all_of_its_writes_or_none(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        existing = await store.commit([Put(build.replica("web", 2))])
        with pytest.raises(Conflict) as caught:
            await store.commit([Put(build.replica("web", 0)), Put(build.replica("web", 1)),
                                Put(build.replica("web", 2)), Put(build.host("h9"))])
        assert caught.value.keys == (store.schema.replica("web", "web-00002").key,)
        assert caught.value.applied == 0 and caught.value.revisions == ()
        listing = await store.list(store.schema.replicas())
        assert [r.id for r in listing.items] == ["web-00002"]
        assert await store.get(store.schema.host("h9")) is None
        assert listing.revision == existing.revision

    run(backend, scenario)


def test_a_batch_over_the_transaction_limit_is_split_in_order(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        replicas = [build.replica("web", i) for i in range(300)]
        committed = await store.commit([Put(r) for r in replicas])
        assert len(committed.revisions) == 3
        assert committed.revisions == tuple(sorted(committed.revisions))
        per_transaction = Counter(r.revision for r in committed.written)
        assert [per_transaction[rev] for rev in committed.revisions] == [MAX_TXN_OPS, MAX_TXN_OPS, 44]
        listing = await store.list(store.schema.replicas_of("web"))
        assert len(listing.items) == 300
        assert {r.id: r.revision for r in listing.items} == {r.id: r.revision for r in committed.written}

    run(backend, scenario)


def test_a_guarded_batch_leaves_one_slot_per_transaction_to_the_guard(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        lease = await store.grant_lease(30)
        leader = await store.campaign(build.full_leader(), lease_id=lease.id)
        committed = await store.commit([Put(build.replica("web", i)) for i in range(300)],
                                       guard=LeaderGuard(leader.epoch))
        per_transaction = Counter(r.revision for r in committed.written)
        assert [per_transaction[rev] for rev in committed.revisions] == [127, 127, 46]
        await store.revoke_lease(lease.id)

    run(backend, scenario)


def test_a_conflict_in_a_later_transaction_reports_what_went_in(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        await store.commit([Put(build.replica("web", 200))])
        with pytest.raises(Conflict) as caught:
            await store.commit([Put(build.replica("web", i)) for i in range(300)])
        assert caught.value.applied == MAX_TXN_OPS and len(caught.value.revisions) == 1
        assert caught.value.keys == (store.schema.replica("web", "web-00200").key,)
        ids = {r.id for r in (await store.list(store.schema.replicas_of("web"))).items}
        assert ids == {f"web-{i:05d}" for i in [*range(MAX_TXN_OPS), 200]}

    run(backend, scenario)


@pytest.mark.parametrize("in_flight", [1, 4])
def test_a_conflict_after_deletes_went_in_names_the_records_deleted(backend: Backend, in_flight: int) -> None:
    async def scenario(store: Store) -> None:
        written = (await store.commit([Put(build.replica("web", i)) for i in range(MAX_TXN_OPS)]
                                      + [Put(build.replica("web", 200))])).written
        deletes = [Delete(r) for r in written[:MAX_TXN_OPS]]
        with pytest.raises(Conflict) as caught:  # web-00200 exists: its creation conflicts
            await store.commit([*deletes, Put(build.replica("web", 200))], in_flight=in_flight)
        assert caught.value.applied == MAX_TXN_OPS
        assert caught.value.deleted == tuple(written[:MAX_TXN_OPS])
        ids = {r.id for r in (await store.list(store.schema.replicas_of("web"))).items}
        assert ids == {"web-00200"}

    run(backend, scenario)


def test_transactions_in_flight_together_land_every_write_once(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        lease = await store.grant_lease(30)
        leader = await store.campaign(build.full_leader(), lease_id=lease.id)
        replicas = [build.replica("web", i) for i in range(1000)]
        committed = await store.commit([Put(r) for r in replicas], guard=LeaderGuard(leader.epoch),
                                       in_flight=4)
        assert len(committed.revisions) == 8  # ceil(1000 / 127)
        assert committed.revisions == tuple(sorted(set(committed.revisions)))
        assert sorted(Counter(r.revision for r in committed.written).values()) == [111] + [127] * 7
        listing = await store.list(store.schema.replicas_of("web"))
        assert {r.id: r.revision for r in listing.items} == {r.id: r.revision for r in committed.written}
        assert len(listing.items) == 1000
        await store.revoke_lease(lease.id)

    run(backend, scenario)


def test_a_conflict_with_transactions_in_flight_counts_every_write_that_went_in(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        await store.commit([Put(build.replica("web", 300))])  # in the batch's third transaction
        with pytest.raises(Conflict) as caught:
            await store.commit([Put(build.replica("web", i)) for i in range(1000)], in_flight=4)
        assert caught.value.keys == (store.schema.replica("web", "web-00300").key,)
        ids = {r.id for r in (await store.list(store.schema.replicas_of("web"))).items}
        third = {f"web-{i:05d}" for i in range(2 * MAX_TXN_OPS, 3 * MAX_TXN_OPS)}
        assert not (ids & third) - {"web-00300"}  # the failed transaction wrote nothing
        assert {f"web-{i:05d}" for i in range(2 * MAX_TXN_OPS)} <= ids  # those before it all landed
        # What ``applied`` counts is exactly what went in (some of the later transactions may have).
        assert caught.value.applied == len(ids) - 1
        assert len(caught.value.revisions) == caught.value.applied // MAX_TXN_OPS + (
            1 if caught.value.applied % MAX_TXN_OPS else 0)

    run(backend, scenario)


def test_each_transaction_that_lands_is_told_with_its_puts(backend: Backend) -> None:
    """``on_landed``: every transaction that went in, once, with the records it put, in sequence and in
    flight; after a conflict, exactly those that landed."""
    async def scenario(store: Store) -> None:
        heard: list[tuple[str, ...]] = []

        told: dict[str, int] = {}

        def landed(revision: int, puts: tuple[Record, ...]) -> None:
            heard.append(tuple(r.id for r in puts if isinstance(r, model.Replica)))
            told.update((r.id, revision) for r in puts if isinstance(r, model.Replica))

        await store.commit([Put(build.replica("db", i)) for i in range(300)], on_landed=landed)
        assert heard == [tuple(f"db-{i:05d}" for i in range(j, min(j + MAX_TXN_OPS, 300)))
                         for j in range(0, 300, MAX_TXN_OPS)]  # in sequence: in order
        heard.clear()
        told.clear()
        committed = await store.commit([Put(build.replica("api", i)) for i in range(1000)], in_flight=4,
                                       on_landed=landed)
        assert sorted(len(puts) for puts in heard) == [1000 - 7 * MAX_TXN_OPS] + [MAX_TXN_OPS] * 7
        assert sorted(i for puts in heard for i in puts) == sorted(r.id for r in committed.written)
        assert told == {r.id: r.revision for r in committed.written}  # each told with its revision
        heard.clear()
        await store.commit([Put(build.replica("web", 300))])  # in the batch's third transaction
        with pytest.raises(Conflict):
            await store.commit([Put(build.replica("web", i)) for i in range(1000)], in_flight=4,
                               on_landed=landed)
        ids = {r.id for r in (await store.list(store.schema.replicas_of("web"))).items} - {"web-00300"}
        assert sorted(i for puts in heard for i in puts) == sorted(ids)

    run(backend, scenario)


def test_a_malformed_batch_is_refused_before_anything_is_written(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        before = await store.current_revision()
        with pytest.raises(ValueError, match="twice"):
            await store.commit([Put(build.replica("web", i % 200)) for i in range(300)])
        with pytest.raises(ValueError, match="names no revision"):
            await store.commit([Put(build.host("h1")), Delete(build.host("h2"))])
        with pytest.raises(ValueError, match="election"):
            await store.commit([Put(build.full_leader())])
        assert await store.current_revision() == before
        assert (await store.commit([])).revisions == ()

    run(backend, scenario)


def test_a_snapshot_holds_everything_at_one_revision(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        schema = store.schema
        lease = await store.grant_lease(30)
        leader = await store.campaign(build.full_leader(), lease_id=lease.id)
        committed = await store.commit(
            [Put(build.service("web")), Put(build.service("db"))]
            + [Put(build.replica("web", i, host="h1")) for i in range(120)]
            + [Put(build.replica("db", i)) for i in range(3)]
            + [Put(build.host("h1")), Put(build.host_status("h1"))])
        await backend.put_raw(schema.prefix + "future-kind/x", b"{}")   # a newer scheduler's key
        await backend.put_raw(schema.host("h-bad").key, b"not json")    # damaged by hand
        snap = await store.snapshot()
        assert snap.revision == await store.current_revision()
        assert set(snap.services) == {"web", "db"}
        assert len(snap.replicas) == 123 and len(snap.replicas_of("web")) == 120
        assert all(r.revision == committed.revision for r in snap.replicas.values())
        assert set(snap.hosts) == {"h1"} and set(snap.host_statuses) == {"h1"}
        assert snap.leader is not None and snap.leader.epoch == leader.epoch
        assert snap.leader.lease == lease.id and snap.leader.instance == "sched-a"
        assert [c.key for c in snap.corrupt] == [schema.host("h-bad").key]
        assert "not JSON" in snap.corrupt[0].reason
        with pytest.raises(CorruptRecord, match="h-bad"):
            await store.get(schema.host("h-bad"))
        hosts = await store.list(schema.hosts())
        assert [h.id for h in hosts.items] == ["h1"]
        assert [c.key for c in hosts.corrupt] == [schema.host("h-bad").key]
        await store.revoke_lease(lease.id)

    run(backend, scenario)


def test_lists_are_exact_ranges(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        await store.commit([Put(build.replica("web", 0)), Put(build.replica("web2", 0)),
                            Put(build.replica("we", 0)), Put(build.service("web")),
                            Put(build.host_status("h1")), Put(build.host("h1")), Put(build.host("h2"))])
        schema = store.schema
        assert [r.id for r in (await store.list(schema.replicas_of("web"))).items] == ["web-00000"]
        assert len((await store.list(schema.replicas())).items) == 3
        assert [h.id for h in (await store.list(schema.hosts())).items] == ["h1", "h2"]
        assert [s.id for s in (await store.list(schema.host_statuses())).items] == ["h1"]
        assert [s.name for s in (await store.list(schema.services())).items] == ["web"]

    run(backend, scenario)


def test_host_groups_and_their_statuses_are_in_snapshots_lists_and_watches(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        schema = store.schema
        start = await store.current_revision()
        await store.commit([Put(build.full_hostgroup()), Put(build.full_hostgroup_status()),
                            Put(build.host("h1")), Put(build.hostgroup("spare"))])
        snap = await store.snapshot()
        assert set(snap.hostgroups) == {"workers", "spare"} and set(snap.hostgroup_statuses) == {"workers"}
        stored = dataclasses.replace(build.full_hostgroup(), revision=snap.revision)
        assert snap.hostgroups["workers"] == stored
        assert snap.hostgroup_statuses["workers"].requests == build.full_hostgroup_status().requests
        assert set(snap.hosts) == {"h1"}  # "hostgroups/" is not inside "hosts/"
        assert [g.spec.name for g in (await store.list(schema.hostgroups())).items] == ["spare", "workers"]
        assert [s.group for s in (await store.list(schema.hostgroup_statuses())).items] == ["workers"]
        await store.commit([Delete(snap.hostgroups["spare"])])
        changes = await take(store.watch(start), 5)
        assert [(c.kind, c.record_type, c.ids) for c in changes] == [
            (ChangeKind.PUT, model.HostGroup, ("workers",)),
            (ChangeKind.PUT, model.HostGroupStatus, ("workers",)),
            (ChangeKind.PUT, model.HostRecord, ("h1",)), (ChangeKind.PUT, model.HostGroup, ("spare",)),
            (ChangeKind.DELETE, model.HostGroup, ("spare",))]

    run(backend, scenario)


# -- watches ------------------------------------------------------------------------------------------


def test_a_watch_yields_every_change_after_the_revision_once_in_order(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        schema = store.schema
        start = await store.current_revision()
        changes = store.watch(start)
        async with contextlib.aclosing(changes):
            first = await store.commit([Put(build.service("web")), Put(build.replica("web", 0))])
            svc = build.service("web", revision=first.revision)
            second = await store.commit([Put(dataclasses.replace(svc, generation=2))])
            await backend.put_raw(schema.prefix + "future-kind/x", b"{}")
            await backend.put_raw(schema.host("h-bad").key, b"\xff")
            third = await store.commit([Delete(build.replica("web", 0, revision=first.revision))])
            sentinel = await store.commit([Put(build.host("h1"))])
            seen = await take(changes, 6)
        assert [(c.kind, c.key, c.revision) for c in seen] == [
            (ChangeKind.PUT, schema.service("web").key, first.revision),
            (ChangeKind.PUT, schema.replica("web", "web-00000").key, first.revision),
            (ChangeKind.PUT, schema.service("web").key, second.revision),
            (ChangeKind.PUT, schema.host("h-bad").key, second.revision + 2),
            (ChangeKind.DELETE, schema.replica("web", "web-00000").key, third.revision),
            (ChangeKind.PUT, schema.host("h1").key, sentinel.revision),
        ]
        assert seen[0].value == svc and seen[0].ids == ("web",)
        assert seen[1].record_type is model.Replica and seen[1].ids == ("web", "web-00000")
        assert isinstance(seen[2].value, model.Service) and seen[2].value.generation == 2
        assert seen[3].value is None and seen[3].error  # undecodable: reported, not fatal
        assert seen[4].value is None and not seen[4].error
        assert seen[5].value == build.host("h1", revision=sentinel.revision)

    run(backend, scenario)


def test_a_watch_echoes_the_stores_own_writes_as_the_records_it_committed(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        schema = store.schema
        changes = store.watch(await store.current_revision())
        async with contextlib.aclosing(changes):
            mine = await store.commit([Put(build.full_service()), Put(build.full_replica())])
            # Another writer, at the same key: its bytes are decoded, not taken for this store's own.
            theirs = dataclasses.replace(build.full_replica(), reason="written by someone else")
            await backend.put_raw(schema.key_of(theirs), encode(theirs))
            seen = await take(changes, 3)
        assert [c.value for c in seen[:2]] == list(mine.written)
        assert all(c.value is written for c, written in zip(seen[:2], mine.written, strict=True))
        assert seen[2].value == dataclasses.replace(theirs, revision=seen[2].revision)
        # What the watch handed over equals what decoding the stored bytes gives.
        assert seen[0].value == await store.get(schema.service(build.full_service().name))

    run(backend, scenario)


def test_a_watch_hears_a_pipelined_commits_puts_as_the_records_written_even_before_its_reply(
        backend: Backend) -> None:
    """Several transactions in flight: the watch delivers the first ones' puts before the commit replies
    (it replies once the last has landed). Each is still the very record ``written`` holds, not a decode."""
    async def scenario(store: Store) -> None:
        n = 600  # five transactions of etcd's default 128 operations
        changes = store.watch(await store.current_revision())
        async with contextlib.aclosing(changes):
            heard = asyncio.create_task(take(changes, n))
            committed = await store.commit([Put(build.replica(f"s{i // 100}", i % 100)) for i in range(n)],
                                           in_flight=4)
            seen = await heard
        assert len(committed.revisions) > 1
        assert [c.revision for c in seen] == [r.revision for r in committed.written]
        assert all(c.value is written for c, written in zip(seen, committed.written, strict=True))

    run(backend, scenario)


def test_a_watch_from_the_past_replays_history_and_a_scope_filters(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        start = await store.current_revision()
        revisions = [(await store.commit([Put(build.replica(svc, i))])).revision
                     for i in range(3) for svc in ("web", "db")]
        async with contextlib.aclosing(store.watch(start, scope=store.schema.replicas_of("db"))) as db:
            seen = await take(db, 3)
        assert [c.ids for c in seen] == [("db", f"db-{i:05d}") for i in range(3)]
        assert [c.revision for c in seen] == revisions[1::2]
        async with contextlib.aclosing(store.watch(revisions[2])) as rest:
            assert [c.revision for c in await take(rest, 3)] == revisions[3:]

    run(backend, scenario)


def test_a_compacted_history_raises_and_a_relist_resumes(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        before = await store.current_revision()
        revisions = [(await store.commit([Put(build.replica("web", i))])).revision for i in range(4)]
        await store.compact(revisions[2])
        await store.compact(revisions[1])  # already compacted: nothing to do
        with pytest.raises(Compacted) as caught:
            await take(store.watch(before), 1)
        assert caught.value.compact_revision == revisions[2]
        # History from the compaction revision on is kept.
        async with contextlib.aclosing(store.watch(revisions[2] - 1)) as kept:
            assert [c.revision for c in await take(kept, 2)] == revisions[2:]
        snap = await store.snapshot()
        assert len(snap.replicas) == 4
        async with contextlib.aclosing(store.watch(snap.revision)) as resumed:
            later = await store.commit([Put(build.replica("web", 9))])
            assert [c.revision for c in await take(resumed, 1)] == [later.revision]

    run(backend, scenario)


# -- leases, the leader key and the guard -------------------------------------------------------------


def test_the_leader_key_is_won_once_and_epochs_grow(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        a, b = await store.grant_lease(30), await store.grant_lease(30)
        first = await store.campaign(LeaderRecord("a"), lease_id=a.id)
        assert first.lease == a.id and first.instance == "a" and first.epoch == first.revision > 0
        second = await store.campaign(LeaderRecord("b"), lease_id=b.id)
        assert second == first  # b learns who leads
        await store.revoke_lease(a.id)
        third = await store.campaign(LeaderRecord("b"), lease_id=b.id)
        assert third.lease == b.id and third.epoch > first.epoch
        assert await store.get(store.schema.leader()) == third
        await store.revoke_lease(b.id)
        await store.revoke_lease(b.id)  # idempotent
        assert await store.get(store.schema.leader()) is None

    run(backend, scenario)


def test_the_guard_refuses_writes_of_any_other_term(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        lease = await store.grant_lease(30)
        term = await store.campaign(LeaderRecord("a"), lease_id=lease.id)
        done = await store.commit([Put(build.replica("web", 0))], guard=LeaderGuard(term.epoch))
        with pytest.raises(NotLeader) as caught:
            await store.commit([Put(build.replica("web", 1))], guard=LeaderGuard(term.epoch + 1))
        assert caught.value.current_epoch == term.epoch
        await store.revoke_lease(lease.id)  # the term ends
        with pytest.raises(NotLeader) as caught:
            await store.commit([Put(build.replica("web", 1))], guard=LeaderGuard(term.epoch))
        assert caught.value.current_epoch == 0
        lease2 = await store.grant_lease(30)
        term2 = await store.campaign(LeaderRecord("b"), lease_id=lease2.id)
        # Deposed and stale at once: not being the leader is what the caller must learn.
        with pytest.raises(NotLeader) as caught:
            await store.commit([Put(build.replica("web", 0))], guard=LeaderGuard(term.epoch))
        assert caught.value.current_epoch == term2.epoch
        assert [r.revision for r in (await store.list(store.schema.replicas())).items] == [done.revision]
        await store.revoke_lease(lease2.id)

    run(backend, scenario)


def test_a_put_attached_to_a_lease_goes_with_it_and_a_gone_lease_fails_the_batch(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        lease = await store.grant_lease(2)
        record = InstanceRecord("s1", addresses=("127.0.0.1:7400",), http_address="127.0.0.1:9400",
                                started_at=1700000000.5, version="1.0")
        committed = await store.commit([Put(record, expected=0, lease=lease.id)])
        listing = await store.list(store.schema.scheduler_instances())
        assert listing.items == (dataclasses.replace(record, revision=committed.revision),)
        # Instance records are not part of a snapshot (the control loops never see them).
        snap = await store.snapshot()
        assert (snap.leader, snap.corrupt, dict(snap.hosts)) == (None, (), {})
        # The same key again, expecting absent: a conflict, as for any record.
        with pytest.raises(Conflict):
            await store.commit([Put(record, expected=0, lease=lease.id)])
        await store.revoke_lease(lease.id)
        assert await store.get(store.schema.scheduler_instance("s1")) is None
        with pytest.raises(LeaseExpired):
            await store.commit([Put(record, expected=0, lease=lease.id)])
        assert await store.get(store.schema.scheduler_instance("s1")) is None

    run(backend, scenario)


def test_a_lease_refreshes_until_revoked_and_expires_without_refresh(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        lease = await store.grant_lease(2)
        assert lease.ttl >= 2
        assert 0 < await store.refresh_lease(lease.id) <= lease.ttl
        await store.revoke_lease(lease.id)
        with pytest.raises(LeaseExpired):
            await store.refresh_lease(lease.id)
        with pytest.raises(LeaseExpired):
            await store.campaign(LeaderRecord("a"), lease_id=lease.id)
        short = await store.grant_lease(1)
        held = await store.campaign(LeaderRecord("a"), lease_id=short.id)
        async with contextlib.aclosing(store.watch(held.revision, scope=store.schema.leader_range())) as w:
            gone = await take(w, 1)  # nobody refreshes: the lease expires and takes the key along
        assert gone[0].kind is ChangeKind.DELETE and gone[0].ids == ()
        with pytest.raises(LeaseExpired):
            await store.refresh_lease(short.id)

    run(backend, scenario)
