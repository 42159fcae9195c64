"""API read latency at 2,000 / 10,000 / 100,000 replicas: a snapshot per read (before) against the
follower's consistent reads (after), over real etcd and real gRPC.

One invocation starts a private single-member etcd 3.4 on loopback (``tests/fixtures/etcd.EtcdCluster``,
fsync on) and, for each size N, writes a cluster directly under a fresh prefix (raw aetcd transactions of
128 puts: no scheduler, no simulator): N/100 services of 100 replicas each, N/20 hosts with a ready status,
every replica running on a host with a published port and one placement decision (≈ 380 bytes, as the
leader writes them). Then, for each variant, the scheduler's API (``scheduler.server``) is served in this
process on 127.0.0.1 over an ``EtcdStore`` and called through the generated stubs, in sequence:

* ``snapshot`` — ``add_services`` without a follower: every read decodes the whole prefix. For
  ``ListServices`` and ``ListReplicas`` that is the API before consistent reads; ``GetService`` read one
  key and one service's replica range before, so its "snapshot" row is not the old figure;
* ``follower`` — with a ``Follower`` (``scheduler.follower``) run beside it, as ``shoal-scheduler serve``
  runs it: each read asks etcd for its revision, waits for the follower (no waiting: nothing changes),
  and answers from its state. Its sync time (snapshot + indexes) is reported too, and the fallbacks it
  counted (expected: none).

Calls: ``ListServices`` (``shoal get services``), ``ListReplicas --service X`` and ``GetService X``,
``--calls`` each (a snapshot variant stops a method after ``--budget`` seconds, with at least 3 calls).
p50/p99/max in ms. The client's decoding of the answer is inside the time (as for ``shoal get``).

``python bench/api_reads.py [--n 2000,10000,100000] [--calls 50] [--budget 60] [--variants snapshot,follower]
[--out FILE]``;
prints a table, writes JSON (``bench/results/api_reads.json`` by default; gitignored, add with -f).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
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
import grpc  # noqa: E402

from proto.scheduler.v1 import scheduler_pb2 as pb  # noqa: E402
from proto.scheduler.v1 import scheduler_pb2_grpc as pb_grpc  # noqa: E402
from scheduler import model, server  # noqa: E402
from scheduler.follower import Follower  # noqa: E402
from scheduler.placement import registry  # noqa: E402
from scheduler.store import records  # noqa: E402
from scheduler.store.etcd import EtcdSettings, EtcdStore  # noqa: E402
from scheduler.store.keys import KeySchema  # noqa: E402
from scheduler.store.records import Record  # noqa: E402
from tests.fixtures import scheduler_records as build  # noqa: E402
from tests.fixtures.etcd import EtcdCluster  # noqa: E402

PER_SERVICE = 100
REPLICAS_PER_HOST = 20
MESSAGE_LIMIT = 64 * 1024 * 1024


def cluster(n: int) -> list[Record]:
    """The records of a cluster of ``n`` replicas (see the module docstring)."""
    hosts = max(1, n // REPLICAS_PER_HOST)
    out: list[Record] = []
    for h in range(hosts):
        host_id = f"{h:032x}"
        out.append(build.host(host_id, zone="abc"[h % 3]))
        out.append(build.host_status(host_id))
    for s in range(max(1, n // PER_SERVICE)):
        name = f"svc-{s:04d}"
        out.append(build.service(name, replicas=PER_SERVICE))
        for i in range(PER_SERVICE):
            k = s * PER_SERVICE + i
            host = model.HostId(f"{k % hosts:032x}")
            out.append(model.Replica(
                id=model.ReplicaId(f"{name}-{i:05d}"), service=model.ServiceName(name), generation=1,
                host=host, phase=model.ReplicaPhase.RUNNING, ready=True, created_at=1.7e9 + k,
                updated_at=1.7e9 + k,
                ports=(model.HostPort(8080, 32768 + k % 20000),),
                decisions=(model.Decision(1.7e9 + k, "placed", f"{host[:8]}: least allocated (50/50 fit)"),)))
    return out


async def write(endpoints: str, prefix: str, items: list[Record]) -> float:
    host, _, port = endpoints.removeprefix("http://").rpartition(":")
    client = aetcd.Client(host=host, port=int(port), timeout=60)
    schema = KeySchema(prefix)
    pairs = [(schema.key_of(r).encode(), records.encode(r)) for r in items]
    started = time.perf_counter()
    try:
        for i in range(0, len(pairs), 128):
            ok, _ = await client.transaction(compare=[], success=[client.transactions.put(k, v)
                                                                  for k, v in pairs[i:i + 128]], failure=[])
            assert ok
    finally:
        await client.close()
    return time.perf_counter() - started


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)
    return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 2)}


async def timed_calls(call: Callable[[], Awaitable[Any]], *, calls: int, budget: float) -> dict[str, float]:
    samples: list[float] = []
    stop = time.perf_counter() + budget
    for i in range(calls):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
        if i >= 2 and time.perf_counter() > stop:
            break
    return percentiles(samples)


async def variant(endpoints: str, prefix: str, *, follow: bool, calls: int, budget: float) -> dict[str, Any]:
    store = await EtcdStore.open(EtcdSettings(endpoints, prefix=prefix, request_timeout_s=60,
                                              retry_deadline_s=120))
    fallbacks: list[str] = []
    follower = Follower(store, on_fallback=fallbacks.append) if follow else None
    following = asyncio.create_task(follower.run()) if follower is not None else None
    out: dict[str, Any] = {"variant": "follower" if follow else "snapshot"}
    if follower is not None:
        started = time.perf_counter()
        while not follower.synced:
            await asyncio.sleep(0.01)
        out["follower_sync_s"] = round(time.perf_counter() - started, 3)
    grpc_server = grpc.aio.server(options=[("grpc.max_send_message_length", MESSAGE_LIMIT)])
    server.add_services(grpc_server, store=store, profile=registry.default_profile(), reads=follower)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
                ("grpc.max_receive_message_length", MESSAGE_LIMIT)]) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            listed = await stub.ListServices(pb.ListServicesRequest(), timeout=300)
            out["services"] = len(listed.services)
            out["replicas_counted"] = sum(s.status.replicas for s in listed.services)
            name = listed.services[len(listed.services) // 2].spec.name
            out["list_services"] = await timed_calls(
                lambda: stub.ListServices(pb.ListServicesRequest(), timeout=300), calls=calls, budget=budget)
            out["list_replicas_of_one_service"] = await timed_calls(
                lambda: stub.ListReplicas(pb.ListReplicasRequest(service=name), timeout=300),
                calls=calls, budget=budget)
            out["get_service"] = await timed_calls(
                lambda: stub.GetService(pb.GetServiceRequest(name=name), timeout=300),
                calls=calls, budget=budget)
    finally:
        await grpc_server.stop(None)
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await store.close()
    out["fallbacks"] = len(fallbacks)
    out["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


async def size(endpoints: str, n: int, *, calls: int, budget: float, variants: list[str]) -> dict[str, Any]:
    prefix = f"/b-{secrets.token_hex(4)}/shoal/v1/"
    items = cluster(n)
    wrote = await write(endpoints, prefix, items)
    result: dict[str, Any] = {"replicas": n, "records": len(items), "write_s": round(wrote, 2),
                              "variants": []}
    for follow in (v == "follower" for v in variants):
        result["variants"].append(await variant(endpoints, prefix, follow=follow, calls=calls, budget=budget))
    return result


def machine() -> dict[str, Any]:
    etcd_version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.splitlines()
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "etcd": etcd_version[0] if etcd_version else "?", "loadavg_before": os.getloadavg(),
            "revision": revision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=[2000, 10000, 100000])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per method in a variant")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["snapshot", "follower"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api_reads.json")
    args = parser.parse_args()
    info = machine()
    results: dict[str, Any] = {"command": " ".join(sys.argv), "machine": info, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="shoal-api-reads-") as tmp, \
            EtcdCluster(Path(tmp) / "etcd") as etcd:  # started by entering, killed and removed by leaving
        for n in args.n:
            row = asyncio.run(size(etcd.endpoints, n, calls=args.calls, budget=args.budget,
                                   variants=args.variants))
            results["sizes"].append(row)
            for v in row["variants"]:
                print(f"{n:>7} replicas  {v['variant']:<9} " + "  ".join(
                    f"{m} p50 {v[m]['p50_ms']} / p99 {v[m]['p99_ms']} ms (n={v[m]['n']})"
                    for m in ("list_services", "list_replicas_of_one_service", "get_service"))
                    + (f"  sync {v['follower_sync_s']} s, fallbacks {v['fallbacks']}"
                       if "follower_sync_s" in v else ""), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
