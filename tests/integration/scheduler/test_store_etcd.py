"""EtcdStore against real etcd: concurrent compare-and-swap writers, large guarded batches, a watch that
survives members of a 3-member cluster being killed (nothing missed, nothing repeated), a follower that
relists after a compaction, and bounded failures when etcd is dead or hung."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from scheduler import model
from scheduler.store.base import ChangeKind, Delete, LeaderGuard, Put
from scheduler.store.errors import Compacted, Conflict, StoreError, StoreUnavailable
from scheduler.store.etcd import EtcdSettings, EtcdStore
from scheduler.store.records import LeaderRecord
from tests.fixtures import scheduler_records as build
from tests.fixtures.etcd import EtcdCluster, require_etcd

pytestmark = pytest.mark.integration

HANG_GUARD_S = 120.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD_S))  # type: ignore[arg-type]


async def open_store(endpoints: str, prefix: str = "/shoal/v1/", **settings: Any) -> EtcdStore:
    return await EtcdStore.open(EtcdSettings(endpoints, prefix=prefix, **settings))


def test_of_concurrent_writers_on_one_revision_exactly_one_wins_each_round(etcd: EtcdCluster,
                                                                         etcd_prefix: str) -> None:
    writers, rounds = 4, 10

    async def scenario() -> None:
        stores = [await open_store(etcd.endpoints, etcd_prefix) for _ in range(writers)]
        await stores[0].commit([Put(build.service("web"))])
        barrier = asyncio.Barrier(writers)
        outcomes: list[list[str]] = [[] for _ in range(rounds)]

        async def writer(store: EtcdStore) -> None:
            for n in range(rounds):
                current = await store.get(store.schema.service("web"))
                assert current is not None
                await barrier.wait()  # every writer has read the same revision
                try:
                    await store.commit([Put(dataclasses.replace(current, generation=current.generation + 1))])
                    outcomes[n].append("won")
                except Conflict as err:
                    assert err.keys == (store.schema.service("web").key,)
                    outcomes[n].append("conflict")
                await barrier.wait()

        await asyncio.gather(*(writer(s) for s in stores))
        assert all(sorted(o) == ["conflict"] * (writers - 1) + ["won"] for o in outcomes)
        final = await stores[0].get(stores[0].schema.service("web"))
        assert final is not None and final.generation == 1 + rounds
        for store in stores:
            await store.close()

    run(scenario)


def test_a_thousand_replicas_go_in_guarded_transactions_and_read_back_in_pages(etcd: EtcdCluster,
                                                                               etcd_prefix: str) -> None:
    async def scenario() -> None:
        store = await open_store(etcd.endpoints, etcd_prefix, page_size=100)
        lease = await store.grant_lease(30)
        leader = await store.campaign(LeaderRecord("a"), lease_id=lease.id)
        replicas = [build.replica("web", i, host=f"h{i % 7}", reason="x" * 200) for i in range(1000)]
        committed = await store.commit([Put(r) for r in replicas], guard=LeaderGuard(leader.epoch))
        assert len(committed.revisions) == math.ceil(1000 / 127)
        snap = await store.snapshot()
        revisions = {r.id: r.revision for r in committed.written}
        assert {r.id: r.revision for r in snap.replicas.values()} == revisions
        listing = await store.list(store.schema.replicas_of("web"))
        assert [r.id for r in listing.items] == sorted(r.id for r in replicas)
        await store.revoke_lease(lease.id)
        await store.close()

    run(scenario)


def test_batches_go_in_as_many_operations_a_transaction_as_etcd_allows(tmp_path: Path) -> None:
    """``--etcd-max-txn-ops`` matched with etcd's ``--max-txn-ops``: fewer, larger transactions; set above
    what etcd allows, a clear error and nothing written."""
    require_etcd()

    async def scenario(endpoints: str, *, allowed: bool) -> None:
        store = await open_store(endpoints, max_txn_ops=1024)
        if allowed:
            await store.check_txn_ops()
        else:  # what shoal-scheduler asks as it starts
            with pytest.raises(StoreError, match="set the scheduler's --etcd-max-txn-ops to etcd's"):
                await store.check_txn_ops()
        lease = await store.grant_lease(30)
        leader = await store.campaign(LeaderRecord("a"), lease_id=lease.id)
        replicas = [build.replica("web", i, host=f"h{i % 7}") for i in range(2000)]
        if allowed:
            committed = await store.commit([Put(r) for r in replicas], guard=LeaderGuard(leader.epoch))
            assert len(committed.revisions) == math.ceil(2000 / 1023)
            assert len((await store.snapshot()).replicas) == 2000
        else:
            with pytest.raises(StoreError, match="too many operations"):
                await store.commit([Put(r) for r in replicas], guard=LeaderGuard(leader.epoch))
            assert not (await store.snapshot()).replicas
        await store.close()

    with EtcdCluster(tmp_path / "big", flags=("--max-txn-ops", "1024")) as big:
        run(lambda: scenario(big.endpoints, allowed=True))
    with EtcdCluster(tmp_path / "default") as default:
        run(lambda: scenario(default.endpoints, allowed=False))


def test_large_records_fit_under_etcds_request_size_limit(etcd: EtcdCluster, etcd_prefix: str) -> None:
    async def scenario() -> None:
        store = await open_store(etcd.endpoints, etcd_prefix)
        big = [dataclasses.replace(build.replica("web", i), reason="x" * 100_000) for i in range(25)]
        committed = await store.commit([Put(r) for r in big])  # 2.5 MB: over etcd's 1.5 MiB per request
        assert len(committed.revisions) == 3
        assert len((await store.snapshot()).replicas) == 25
        await store.close()

    run(scenario)


async def commit_until_in(store: EtcdStore, record: model.Replica) -> int:
    """Commits a new record through etcd failures; its revision once it is in (read back when a reply
    was lost for good)."""
    while True:
        try:
            return (await store.commit([Put(record)])).revision
        except StoreUnavailable:
            with contextlib.suppress(StoreUnavailable):
                got = await store.get(store.schema.replica(record.service, record.id))
                if got is not None:
                    return got.revision


def test_a_watch_misses_and_repeats_nothing_while_members_are_killed(etcd_cluster: EtcdCluster) -> None:
    per_phase = 30

    async def scenario() -> None:
        writer = await open_store(etcd_cluster.endpoints)
        watcher = await open_store(etcd_cluster.endpoints)
        schema = writer.schema
        start = await writer.current_revision()
        committed: list[int] = []
        seen: list[int] = []

        async def write() -> None:
            i = 0
            for member in range(3):  # kill each member once, so the watch's member is among them
                for _ in range(per_phase):
                    committed.append(await commit_until_in(writer, build.replica("w", i)))
                    i += 1
                await asyncio.to_thread(etcd_cluster.kill, member)
                for _ in range(per_phase):  # the cluster runs on two members meanwhile
                    committed.append(await commit_until_in(writer, build.replica("w", i)))
                    i += 1
                await asyncio.to_thread(etcd_cluster.restart, member)
            await commit_until_in(writer, build.replica("end", 0))

        async def watch() -> None:
            async with contextlib.aclosing(watcher.watch(start)) as changes:
                async for change in changes:
                    if change.ids == ("end", "end-00000"):
                        return
                    assert change.kind is ChangeKind.PUT and isinstance(change.value, model.Replica)
                    seen.append(change.revision)

        await asyncio.gather(write(), watch())
        assert seen == committed  # each commit once, in order
        assert len(committed) == 6 * per_phase
        assert watcher.stats.watch_resumes >= 1
        snap = await watcher.snapshot()
        assert len(snap.replicas) == 6 * per_phase + 1
        assert len((await watcher.list(schema.replicas_of("w"))).items) == 6 * per_phase
        await writer.close()
        await watcher.close()

    run(scenario)


def test_a_follower_behind_a_compaction_relists_and_converges(etcd_private: EtcdCluster) -> None:
    async def scenario() -> None:
        store = await open_store(etcd_private.endpoints)
        replicas = store.schema.replicas()
        await store.commit([Put(build.replica("web", i)) for i in range(5)])
        snap = await store.snapshot()
        state = dict(snap.replicas)
        position = snap.revision
        # The follower is away while replicas change and etcd compacts its history.
        web0, web1 = state[model.ReplicaId("web-00000")], state[model.ReplicaId("web-00001")]
        await store.commit([Delete(web0)])
        await store.commit([Put(dataclasses.replace(web1, reason="moved")), Put(build.replica("web", 7))])
        await store.compact(await store.current_revision())  # keeps the last revision, drops the one before
        done = await store.commit([Put(build.replica("web", 8))])
        relists = 0
        while position < done.revision:  # list + watch, relisting when the watch is told it is too late
            try:
                async with contextlib.aclosing(store.watch(position, scope=replicas)) as changes:
                    async for change in changes:
                        if change.kind is ChangeKind.DELETE:
                            state.pop(model.ReplicaId(change.ids[1]), None)
                        elif isinstance(change.value, model.Replica):
                            state[change.value.id] = change.value
                        position = change.revision
                        if position >= done.revision:
                            break
            except Compacted:
                relists += 1
                snap = await store.snapshot()
                state, position = dict(snap.replicas), snap.revision
        assert relists == 1
        assert state == dict((await store.snapshot()).replicas)
        assert state[model.ReplicaId("web-00001")].reason == "moved"
        assert model.ReplicaId("web-00000") not in state
        await store.close()

    run(scenario)


FAST = {"request_timeout_s": 0.5, "retry_deadline_s": 1.0, "watch_retry_s": 1.0}


async def every_call_is_unavailable(store: EtcdStore) -> list[StoreUnavailable]:
    """Runs each kind of call once; returns the errors (a call that answered fails the test)."""
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get(store.schema.service("web")),
        lambda: store.list(store.schema.replicas()),
        store.snapshot,
        store.current_revision,
        lambda: store.commit([Put(build.replica("web", 1))]),
        lambda: store.grant_lease(2),
        lambda: store.refresh_lease(1),
        lambda: store.campaign(LeaderRecord("a"), lease_id=1),
        lambda: store.compact(1),
    ]
    errors: list[StoreUnavailable] = []
    for call in calls:
        with pytest.raises(StoreUnavailable) as caught:
            await call()
        errors.append(caught.value)
    return errors


def test_a_dead_etcd_fails_every_call_with_store_unavailable(etcd_private: EtcdCluster) -> None:
    async def scenario() -> None:
        store = await open_store(etcd_private.endpoints, **FAST)
        await store.commit([Put(build.service("web"))])
        changes = store.watch(await store.current_revision())
        etcd_private.kill(0)
        errors = await every_call_is_unavailable(store)
        assert all(f"etcd at {etcd_private.endpoints} unreachable" in str(e) for e in errors)
        assert "Connection refused" in str(errors[0])
        commit_error = errors[4]
        assert not commit_error.outcome_unknown  # refused connections: nothing was sent
        with pytest.raises(StoreUnavailable, match="resuming the watch"):
            await changes.__anext__()
        await changes.aclose()
        await store.close()

    run(scenario)


def test_a_hung_etcd_fails_calls_at_their_deadline_and_works_again_after(etcd_private: EtcdCluster) -> None:
    async def scenario() -> None:
        store = await open_store(etcd_private.endpoints, **FAST)
        await store.commit([Put(build.service("web"))])
        etcd_private.pause(0)
        try:
            errors = await every_call_is_unavailable(store)
        finally:
            etcd_private.resume(0)
        assert all("DEADLINE_EXCEEDED" in str(e) for e in errors)
        assert errors[4].outcome_unknown and "may or may not have been applied" in str(errors[4])
        assert await store.get(store.schema.service("web")) is not None
        # The commit that timed out may well have been applied once etcd woke up (hence "outcome unknown").
        await store.commit([Put(build.replica("web", 2))])
        await store.close()

    run(scenario)


def test_a_dead_first_endpoint_is_passed_over(etcd_cluster: EtcdCluster) -> None:
    # A follower dies (killing raft's leader would test etcd's election, which the watch test covers), and
    # it comes first in --etcd.
    leader = etcd_cluster.leader_index()
    dead = next(i for i in range(3) if i != leader)
    etcd_cluster.kill(dead)
    urls = [m.client_url for m in etcd_cluster.members]
    endpoints = ",".join([urls[dead], *(url for i, url in enumerate(urls) if i != dead)])

    async def scenario() -> None:
        store = await open_store(endpoints, **FAST)
        committed = await store.commit([Put(build.host("h1"))])
        assert (await store.snapshot()).revision == committed.revision
        await store.close()

    run(scenario)
