"""The scheduler's store on etcd: committing N replica records through ``EtcdStore.commit`` beside raw
aetcd puts batched 128 per transaction, reading them back, and how long a leader's SIGKILL leaves the
scheduler without one.

One invocation starts a private single-member etcd 3.4 on loopback (``tests/fixtures/etcd.EtcdCluster``,
data dir in a temp dir, fsync on as in production) and, for each N, runs R rounds; each round runs every
contender once, in a freshly shuffled order, each under a new key prefix (so every write creates its
keys), and the etcd keyspace is compacted and defragmented between rounds. Rows:

* ``raw aetcd txn x128`` — ``aetcd.Client.transaction(compare=[], success=[put x128])`` in sequence, with
  the JSON bytes encoded beforehand: etcd's cost alone, the floor.
* ``raw CAS txn x128, prebuilt`` — the very requests ``EtcdStore.commit`` sends (comparisons and failure
  branch included), built before the clock starts and sent with aetcd's stub: etcd's cost of the
  compare-and-swap form, so the rows after it show what the Python side adds.
* ``EtcdStore.commit`` — ``commit([Put(replica) x N])``: JSON encoding, one compare-and-swap per key
  (expected absent), a failure branch reading every key back, 128 per transaction, in sequence.
* ``EtcdStore.commit guarded`` — the same under the leader guard (127 per transaction + the guard).
* ``encode only`` — ``records.encode`` of the N replicas, no I/O (the part of the difference that is
  Python, not etcd).
* ``snapshot`` — ``EtcdStore.snapshot()`` of the N replicas (pages of 1,000 at one revision, decoded).

Failover (``--failover-runs``, 0 to skip): a leader process (``tests.integration.scheduler.
election_process``, TTL 2 s) and a follower ``Election`` in this process; the time from SIGKILL of the
leader to the follower's ``lead`` starting, per run.

``python bench/etcd_store.py [--n 1000,10000] [--rounds 5] [--failover-runs 5] [--out FILE]``; prints a
table, writes JSON (under ``bench/results/``, gitignored, by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `scheduler` and `tests` importable
    sys.path.insert(0, str(REPO))

import aetcd  # noqa: E402

from scheduler import model  # noqa: E402
from scheduler.election import Election, ElectionSettings, Term  # noqa: E402
from scheduler.store import etcd as etcd_module  # noqa: E402
from scheduler.store import records, txn  # noqa: E402
from scheduler.store.base import LeaderGuard, Put  # noqa: E402
from scheduler.store.etcd import EtcdSettings, EtcdStore  # noqa: E402
from scheduler.store.keys import KeySchema  # noqa: E402
from scheduler.store.records import LeaderRecord  # noqa: E402
from tests.fixtures.etcd import EtcdCluster  # noqa: E402

RAW = "raw aetcd txn x128"
RAW_CAS = "raw CAS txn x128, prebuilt"
COMMIT = "EtcdStore.commit"
GUARDED = "EtcdStore.commit guarded"
ENCODE = "encode only"
SNAPSHOT = "snapshot"


def replicas(n: int) -> list[model.Replica]:
    """Replicas as the scheduler writes them once placed: a host, a port, one decision (≈ 380 bytes)."""
    return [model.Replica(
        id=model.ReplicaId(f"web-{i:06d}"), service=model.ServiceName("web"), generation=1,
        host=model.HostId(f"host-{i % 50:03d}"), phase=model.ReplicaPhase.STARTING, created_at=1.7e9 + i,
        updated_at=1.7e9 + i, ports=(model.HostPort(8080, 32768 + i % 20000),),
        decisions=(model.Decision(1.7e9 + i, "placed", f"host-{i % 50:03d}: least allocated (50/50 fit)"),),
    ) for i in range(n)]


def client_for(endpoints: str) -> aetcd.Client:
    host, _, port = endpoints.removeprefix("http://").rpartition(":")
    return aetcd.Client(host=host, port=int(port), timeout=30)


async def raw_puts(client: aetcd.Client, prefix: str, items: list[model.Replica]) -> float:
    """Seconds for the puts alone (the bytes are encoded before the clock starts)."""
    schema = KeySchema(prefix)
    pairs = [(schema.key_of(r).encode(), records.encode(r)) for r in items]
    start = time.perf_counter()
    for i in range(0, len(pairs), 128):
        ok, _ = await client.transaction(compare=[], success=[client.transactions.put(k, v)
                                                              for k, v in pairs[i:i + 128]], failure=[])
        assert ok
    return time.perf_counter() - start


async def one_round(endpoints: str, n: int, items: list[model.Replica]) -> dict[str, float]:
    store = await EtcdStore.open(EtcdSettings(endpoints, prefix=f"/b-{secrets.token_hex(4)}/shoal/v1/"))
    client = client_for(endpoints)
    await client.connect()
    lease = await store.grant_lease(60)
    leader = await store.campaign(LeaderRecord("bench"), lease_id=lease.id)
    out: dict[str, float] = {}

    async def commit(guarded: bool) -> float:
        target = await EtcdStore.open(EtcdSettings(endpoints, prefix=f"/b-{secrets.token_hex(4)}/shoal/v1/"))
        guard = None
        if guarded:  # the guard needs a leader key under the target's prefix
            held = await target.campaign(LeaderRecord("bench"), lease_id=lease.id)
            guard = LeaderGuard(held.epoch)
        start = time.perf_counter()
        await target.commit([Put(r) for r in items], guard=guard)
        elapsed = time.perf_counter() - start
        await target.close()
        return elapsed

    async def raw() -> float:
        return await raw_puts(client, f"/b-{secrets.token_hex(4)}/shoal/v1/", items)

    async def raw_cas() -> float:
        schema = KeySchema(f"/b-{secrets.token_hex(4)}/shoal/v1/")
        requests = [etcd_module._txn_request(plan) for plan in
                    txn.plan_transactions([Put(r) for r in items], schema=schema, guard=None)]
        start = time.perf_counter()
        for request in requests:
            assert (await client.kvstub.Txn(request, timeout=30)).succeeded
        return time.perf_counter() - start

    async def encode() -> float:
        start = time.perf_counter()
        for r in items:
            records.encode(r)
        return time.perf_counter() - start

    contenders: list[tuple[str, Callable[[], Awaitable[float]]]] = [
        (RAW, raw), (RAW_CAS, raw_cas), (COMMIT, lambda: commit(False)), (GUARDED, lambda: commit(True)),
        (ENCODE, encode)]
    random.shuffle(contenders)
    for name, run in contenders:
        out[name] = await run()
    # Snapshot: what the leader reads at start-up or after a compaction, N replicas under one prefix.
    await store.commit([Put(r) for r in items], guard=LeaderGuard(leader.epoch))
    start = time.perf_counter()
    snap = await store.snapshot()
    out[SNAPSHOT] = time.perf_counter() - start
    assert len(snap.replicas) == n
    await store.revoke_lease(lease.id)
    await store.close()
    await client.close()
    return out


async def tidy(endpoints: str) -> None:
    """Delete everything, compact and defragment, so each round starts from the same database size."""
    client = client_for(endpoints)
    async with client:
        await client.delete_prefix(b"/")
        revision = (await client.get_prefix(b"/", keys_only=True)).header.revision
        await client.compact(revision, physical=True)
        await client.defragment()


async def failover(endpoints: str, runs: int) -> list[float]:
    times: list[float] = []
    for _ in range(runs):
        prefix = f"/f-{secrets.token_hex(4)}/shoal/v1/"
        proc = subprocess.Popen([sys.executable, "-m", "tests.integration.scheduler.election_process",
                                 endpoints, prefix, "a", "2"], cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            await asyncio.to_thread(proc.stdout.readline)  # "LEADING ..."
            store = await EtcdStore.open(EtcdSettings(endpoints, prefix=prefix))
            started: asyncio.Queue[float] = asyncio.Queue()

            async def lead(term: Term, started: asyncio.Queue[float] = started) -> None:
                started.put_nowait(time.monotonic())
                await asyncio.Event().wait()

            election = Election(store, ElectionSettings("b", ttl_s=2))
            task = asyncio.create_task(election.run(lead))
            while election.leader is None:
                await asyncio.sleep(0.01)
            killed = time.monotonic()
            proc.kill()
            times.append(await started.get() - killed)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()
        finally:
            proc.kill()
            proc.wait()
    return times


def summary(samples: list[float], n: int) -> dict[str, float]:
    med = statistics.median(samples)
    return {"median_s": med, "min_s": min(samples), "max_s": max(samples), "records_per_s": n / med}


async def main_async(args: argparse.Namespace, cluster: EtcdCluster) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": {}}
    for n in args.n:
        items = replicas(n)
        samples: dict[str, list[float]] = {}
        await one_round(cluster.endpoints, min(n, 256), items[:min(n, 256)])  # warm-up
        for _ in range(args.rounds):
            await tidy(cluster.endpoints)
            for name, value in (await one_round(cluster.endpoints, n, items)).items():
                samples.setdefault(name, []).append(value)
        results["sizes"][str(n)] = {
            name: {"samples_s": s, **summary(s, n),
                   # per round against the raw puts of the same round, then the median: drift-proof
                   "paired_vs_raw": statistics.median(a / b for a, b in zip(s, samples[RAW], strict=True))}
            for name, s in samples.items()}
    if args.failover_runs:
        await tidy(cluster.endpoints)
        times = await failover(cluster.endpoints, args.failover_runs)
        results["failover_s"] = {"samples": times, "median": statistics.median(times), "min": min(times),
                                 "max": max(times), "ttl_s": 2}
    return results


def machine() -> dict[str, Any]:
    etcd_version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.splitlines()
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "etcd": etcd_version[0] if etcd_version else "?", "aetcd": "1.0",
            "loadavg_before": os.getloadavg(), "revision": revision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--failover-runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "etcd_store.json")
    args = parser.parse_args()
    random.seed(args.seed)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-etcd-") as tmp, EtcdCluster(Path(tmp)) as cluster:
        results = asyncio.run(main_async(args, cluster))
    info["loadavg_after"] = os.getloadavg()
    results["machine"] = info
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for n, rows in results["sizes"].items():
        print(f"\nN = {n} replicas, {args.rounds} rounds (median, min-max)")
        for name in (RAW, RAW_CAS, COMMIT, GUARDED, ENCODE, SNAPSHOT):
            row = rows[name]
            spread = f"({row['min_s'] * 1000:.1f}-{row['max_s'] * 1000:.1f})"
            print(f"  {name:28} {row['median_s'] * 1000:9.1f} ms  {spread}  {row['records_per_s']:10,.0f}/s"
                  f"  paired x{row['paired_vs_raw']:.2f}")
    if "failover_s" in results:
        f = results["failover_s"]
        print(f"\nfailover after SIGKILL (TTL 2 s): median {f['median']:.2f} s, "
              f"{min(f['samples']):.2f}-{max(f['samples']):.2f} s over {len(f['samples'])} runs")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
