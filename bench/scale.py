"""Shoal's scheduler at scale, by simulation: N simulated hosts, R replicas, one scheduler, a 3-member etcd.

One invocation, everything on loopback in a temp dir it removes:

* a real 3-member etcd 3.4 (``tests.fixtures.etcd.EtcdCluster``, fsync on as in production);
* one real, unchanged ``shoal-scheduler serve --insecure-tcp`` (plain TCP on loopback, to its API and to
  the agents), its log in the temp dir;
* ``--hosts`` simulated hosts (``bench.sim``) in 3 zones, spread over ``--procs`` simulator processes
  (default: one per 1,000 hosts), each host registering through ``RegisterHost`` and answering the agent
  API on 127.0.0.1:(``--base-port`` + i); containers go running ``--start-delay`` after their create.

Then it measures, printing a table and writing JSON (``--out``, default
``bench/results/scale-N-R.json``):

* **hosts ready**: from the simulators reporting every host registered to the scheduler's ``ListHosts``
  showing all N ``ready`` (every agent session listed and streaming);
* **placement**: ``ApplyService`` of R/``--per-service`` services (``--apply-batch`` YAML documents per
  call), the clock started just before the first apply; a watch on etcd's replica keys (from the revision
  before the first apply) stops it when every replica record has a host (*assigned*), then when every one
  is ``running``; replicas/s = R / time to assigned. Also the replica writes the watch saw (puts, and
  transactions by revision) — what the scheduler cost etcd;
* **raw etcd ceiling**, in the same run once the scheduler is idle: R replica-sized puts, then as many
  puts as the scheduler made, 128 per transaction in sequence, no scheduling (aetcd directly);
* **steady state**: the leader's cpu (cores, over ``--steady`` seconds) and RSS with every host streaming
  usage every second, the simulators' and etcd members' cpu beside it;
* **get services latency**: ``ListServices`` ``--api-calls`` times in sequence, p50/p99/max;
* ``--profile FILE``: py-spy (if installed) samples the scheduler from the first apply to all running, as
  collapsed stacks (``--format raw``) for ``bench/scale.py``'s reader or flamegraph tools.

Every wait is bounded (``--timeout`` per phase, ``--budget`` for the whole run); a phase that times out
is recorded as such and the run ends with what it has. Tear-down stops every process it started
(SIGTERM, then SIGKILL) and removes the temp dir, on success, failure, ^C or SIGTERM.

``python bench/scale.py --hosts 100 --replicas 2000`` (from the repository root, with the project's venv).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aetcd
import grpc

from proto.scheduler.v1 import scheduler_pb2 as spb
from proto.scheduler.v1 import scheduler_pb2_grpc as spb_grpc
from scheduler import model
from scheduler.store import base, records
from scheduler.store.factory import open_store
from scheduler.store.keys import DEFAULT_PREFIX, KeySchema
from tests.fixtures.etcd import EtcdCluster, free_port

ROOT = Path(__file__).resolve().parent.parent
TXN_OPS = 128
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def stop_process(proc: asyncio.subprocess.Process, *, grace: float = 10.0,
                       sig: signal.Signals = signal.SIGTERM) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@dataclass
class Simulator:
    """One ``python -m bench.sim`` process and its control pipe."""

    proc: asyncio.subprocess.Process
    first: int
    hosts: int
    ready: dict[str, Any] = field(default_factory=dict)

    async def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"simulator {self.first}+{self.hosts} exited ({await self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def command(self, line: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read(timeout)

    async def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()  # the simulator exits at end of stdin
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10.0)
        await stop_process(self.proc)


# -- what is measured --------------------------------------------------------------------------------

def services_yaml(names: list[str], per_service: int) -> str:
    docs = [f"""name: {name}
replicas: {per_service}
template:
  image: busybox:sim
  command: ["sleep", "3600"]
  resources: {{cpus: 0.1, memory: 64M}}
placement:
  strategy: spread
""" for name in names]
    return "---\n".join(docs)


@dataclass
class ReplicaWatch:
    """Follows etcd's replica keys from a revision: how many have a host, how many run, and what it cost."""

    total: int
    assigned: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    puts: int = 0
    revisions: set[int] = field(default_factory=set)
    all_assigned: asyncio.Event = field(default_factory=asyncio.Event)
    all_running: asyncio.Event = field(default_factory=asyncio.Event)
    assigned_at: float = 0.0
    running_at: float = 0.0
    first_put_at: float = 0.0

    async def follow(self, store: base.Store, revision: int) -> None:
        async for change in store.watch(revision):
            replica = change.value
            if not isinstance(replica, model.Replica):
                continue
            self.puts += 1
            self.revisions.add(change.revision)
            if not self.first_put_at:
                self.first_put_at = time.perf_counter()
            if replica.host is not None:
                self.assigned.add(replica.id)
            if replica.phase is model.ReplicaPhase.RUNNING:
                self.running.add(replica.id)
            if len(self.assigned) >= self.total and not self.all_assigned.is_set():
                self.assigned_at = time.perf_counter()
                self.all_assigned.set()
            if len(self.running) >= self.total and not self.all_running.is_set():
                self.running_at = time.perf_counter()
                self.all_running.set()


def aetcd_client(endpoints: str) -> aetcd.Client:
    host, _, port = endpoints.split(",")[0].removeprefix("http://").rpartition(":")
    return aetcd.Client(host=host, port=int(port), timeout=30)


def sample_replicas(n: int) -> list[model.Replica]:
    """Replica records as the scheduler writes them once placed (a host, a decision)."""
    return [model.Replica(
        id=model.ReplicaId(f"s{i // 100:04d}-{secrets.token_hex(3)}"),
        service=model.ServiceName(f"s{i // 100:04d}"),
        generation=1, host=model.HostId(f"{i % 5000:032x}"), phase=model.ReplicaPhase.STARTING,
        created_at=1.7e9 + i, updated_at=1.7e9 + i,
        decisions=(model.Decision(1.7e9 + i, "placed", "sim-00042: least allocated (5000/5000 fit)"),),
    ) for i in range(n)]


async def raw_puts(endpoints: str, n: int) -> float:
    """Seconds for ``n`` replica-sized puts, 128 per transaction in sequence (bytes encoded beforehand)."""
    schema = KeySchema(f"/raw-{secrets.token_hex(4)}/shoal/v1/")
    pairs = [(schema.key_of(r).encode(), records.encode(r)) for r in sample_replicas(n)]
    client = aetcd_client(endpoints)
    await client.connect()
    try:
        start = time.perf_counter()
        for i in range(0, len(pairs), TXN_OPS):
            puts = [client.transactions.put(k, v) for k, v in pairs[i:i + TXN_OPS]]
            ok, _ = await client.transaction(compare=[], success=puts, failure=[])
            assert ok
        took = time.perf_counter() - start
        await client.delete_prefix(schema.prefix.encode())
        return took
    finally:
        await client.close()


WATCHED_METRICS = ("shoal_scheduler_reconcile_duration_seconds_count",
                   "shoal_scheduler_reconcile_duration_seconds_sum",
                   "shoal_scheduler_placement_duration_seconds_count",
                   "shoal_scheduler_placement_duration_seconds_sum")


def scrape(address: str) -> dict[str, float]:
    """The scheduler's own counters of reconcile passes and placements (summed over label sets)."""
    out = dict.fromkeys(WATCHED_METRICS, 0.0)
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        name = line.partition("{")[0].partition(" ")[0]
        if name in out:
            out[name] += float(line.rpartition(" ")[2])
    return out


def passes_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    passes = after[WATCHED_METRICS[0]] - before[WATCHED_METRICS[0]]
    seconds = after[WATCHED_METRICS[1]] - before[WATCHED_METRICS[1]]
    return {"passes": passes, "pass_seconds_total": round(seconds, 3),
            "pass_mean_s": round(seconds / passes, 4) if passes else 0.0}


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 5),
            "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 5),
            "max": round(ordered[-1], 5), "n": len(ordered)}


# -- one run -------------------------------------------------------------------------------------------

class Run:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.etcd = EtcdCluster(workdir / "etcd", size=3)
        self.scheduler: asyncio.subprocess.Process | None = None
        self.sims: list[Simulator] = []
        self.profiler: asyncio.subprocess.Process | None = None
        self.result: dict[str, Any] = {}
        self.api = ""
        self.http = ""

    def note(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    async def start(self) -> None:
        args = self.args
        self.note("etcd: 3 members")
        await asyncio.to_thread(self.etcd.start)
        self.api = f"127.0.0.1:{free_port()}"
        self.http = http = f"127.0.0.1:{free_port()}"
        log = (self.workdir / "scheduler.log").open("ab")
        self.scheduler = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scheduler", "serve", "--etcd", self.etcd.endpoints, "--listen", self.api,
            *(["--election-ttl", str(args.election_ttl)] if args.election_ttl else []),
            "--insecure-tcp", "--http-listen", http, "--instance-id", "scale", "--log-level", "info",
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=args.scheduler_checkout or ROOT,
            start_new_session=True)
        await self.wait_leader()
        procs = args.procs or max(1, -(-args.hosts // 1000))
        per = -(-args.hosts // procs)
        self.note(f"{args.hosts} simulated hosts in {procs} processes")
        started = time.perf_counter()
        for first in range(0, args.hosts, per):
            count = min(per, args.hosts - first)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.sim", "--scheduler", self.api, "--hosts", str(count),
                "--first", str(first), "--base-port", str(args.base_port), "--start-delay",
                str(args.start_delay), "--register-timeout", str(args.timeout),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=(self.workdir / f"sim-{first}.log").open("ab"),
                cwd=ROOT, start_new_session=True)
            self.sims.append(Simulator(proc, first, count))
        for sim in self.sims:
            sim.ready = await sim.read(args.timeout + 30)
            if not sim.ready.get("ready"):
                raise RuntimeError(f"simulator {sim.first}: {sim.ready}")
        registered = time.perf_counter()
        self.result["hosts_registered_s"] = round(registered - started, 2)
        self.result["sim_rss_bytes_per_process_at_start"] = [s.ready["rss_bytes"] for s in self.sims]
        ready = await self.wait_hosts_ready(args.hosts, args.timeout)
        self.result["hosts_ready_s"] = round(ready - registered, 2) if ready else None
        self.note(f"hosts ready: {self.result['hosts_ready_s']} s after all registered")

    async def wait_leader(self) -> None:
        deadline = time.monotonic() + 30
        async with grpc.aio.insecure_channel(self.api) as channel:
            stub = spb_grpc.SchedulerStub(channel)
            while time.monotonic() < deadline:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.ListSchedulers(spb.ListSchedulersRequest(), timeout=2)
                    if reply.leader:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"no scheduler leader within 30 s; see {self.workdir / 'scheduler.log'}")

    async def wait_hosts_ready(self, n: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.api) as channel:
            stub = spb_grpc.SchedulerStub(channel)
            while time.monotonic() < deadline:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.ListHosts(spb.ListHostsRequest(), timeout=10)
                    if sum(h.state == spb.HOST_STATE_READY for h in reply.hosts) >= n:
                        return time.perf_counter()
                await asyncio.sleep(0.5)
        return None

    async def place(self) -> None:
        args = self.args
        store = await open_store(self.etcd.endpoints, prefix=DEFAULT_PREFIX)
        watch = ReplicaWatch(total=args.replicas)
        follower = asyncio.create_task(watch.follow(store, await store.current_revision()))
        names = [f"s{i:04d}" for i in range(-(-args.replicas // args.per_service))]
        leader_cpu = cpu_seconds(self.scheduler_pid)
        metrics_before = await asyncio.to_thread(scrape, self.http)
        terms_before = self.terms()
        if args.profile:
            self.profiler = await self.start_profiler(args.profile)
        try:
            async with grpc.aio.insecure_channel(self.api) as channel:
                stub = spb_grpc.SchedulerStub(channel)
                start = time.perf_counter()
                for i in range(0, len(names), args.apply_batch):
                    await stub.ApplyService(spb.ApplyServiceRequest(
                        yaml=services_yaml(names[i:i + args.apply_batch], args.per_service),
                        source="scale"), timeout=60)
                applied = time.perf_counter()
                self.note(f"applied {len(names)} services in {applied - start:.2f} s")
                for name, event in (("assigned", watch.all_assigned), ("running", watch.all_running)):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), args.timeout)
                    if not event.is_set():
                        self.note(f"timed out waiting for all {name}: {len(watch.assigned)} assigned, "
                                  f"{len(watch.running)} running")
                        break
                    self.note(f"all {name}: {time.perf_counter() - start:.2f} s")
            placement_s = watch.assigned_at - start if watch.all_assigned.is_set() else None
            running_s = watch.running_at - start if watch.all_running.is_set() else None
            self.result.update({
                "services": len(names), "apply_s": round(applied - start, 3),
                "assigned_s": round(placement_s, 3) if placement_s else None,
                "running_s": round(running_s, 3) if running_s else None,
                "placement_replicas_per_s": round(args.replicas / placement_s, 1) if placement_s else None,
                "assigned_at_end": len(watch.assigned), "running_at_end": len(watch.running),
                "replica_puts": watch.puts, "replica_txns": len(watch.revisions),
                "leader_cpu_s_during_placement": round(cpu_seconds(self.scheduler_pid) - leader_cpu, 2),
                "leader_terms_during_placement": self.terms() - terms_before,
                "reconcile_during_placement": passes_between(metrics_before,
                                                             await asyncio.to_thread(scrape, self.http)),
            })
        finally:
            if self.profiler is not None:
                await stop_process(self.profiler, grace=30, sig=signal.SIGINT)  # py-spy writes what it has
                self.profiler = None
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
            await store.close()

    async def start_profiler(self, out: str) -> asyncio.subprocess.Process | None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            self.note("py-spy is not installed (pip install py-spy): no profile")
            return None
        return await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(self.scheduler_pid), "--format", "raw", "--rate", "50",
            "--output", out, "--nonblocking", stdout=(self.workdir / "py-spy.log").open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True)

    def terms(self) -> int:
        """Terms this scheduler has begun so far (its log says "shoal.scheduler: leading (epoch N)" at each,
        and "no longer leading (epoch N)" at each end, which must not count)."""
        log = self.workdir / "scheduler.log"
        return log.read_text(errors="replace").count("shoal.scheduler: leading (epoch") if log.exists() else 0

    @property
    def scheduler_pid(self) -> int:
        assert self.scheduler is not None
        return self.scheduler.pid

    async def steady(self) -> None:
        args = self.args
        pids = {"leader": self.scheduler_pid, **{f"sim{s.first}": s.proc.pid for s in self.sims},
                **{f"etcd-{m.name}": m.pid for m in self.etcd.members if m.pid is not None}}
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        metrics_before = await asyncio.to_thread(scrape, self.http)
        terms_before = self.terms()
        t0 = time.perf_counter()
        await asyncio.sleep(args.steady)
        elapsed = time.perf_counter() - t0
        cores = {k: round((cpu_seconds(p) - before[k]) / elapsed, 3) for k, p in pids.items()}
        self.result["steady_cpu_cores"] = cores
        metrics_after = await asyncio.to_thread(scrape, self.http)
        self.result["steady_reconcile"] = passes_between(metrics_before, metrics_after)
        self.result["steady_leader_terms"] = self.terms() - terms_before
        self.result["steady_leader_rss_bytes"] = rss_bytes(self.scheduler_pid)
        self.result["steady_sim_rss_bytes"] = [rss_bytes(s.proc.pid) for s in self.sims]
        latencies = []
        async with grpc.aio.insecure_channel(self.api) as channel:
            stub = spb_grpc.SchedulerStub(channel)
            for _ in range(args.api_calls):
                start = time.perf_counter()
                reply = await stub.ListServices(spb.ListServicesRequest(), timeout=60)
                latencies.append(time.perf_counter() - start)
        self.result["get_services_s"] = quantiles(latencies)
        self.result["get_services_count"] = len(reply.services)
        self.note(f"steady: leader {cores['leader']} cores, "
                  f"{self.result['steady_leader_rss_bytes'] >> 20} MiB; "
                  f"ListServices p50 {self.result['get_services_s']['p50'] * 1000:.1f} ms")

    async def ceiling(self) -> None:
        n = self.args.replicas
        self.result["raw_puts_r_s"] = round(await raw_puts(self.etcd.endpoints, n), 3)
        self.result["raw_puts_r_per_s"] = round(n / self.result["raw_puts_r_s"], 1)
        puts = self.result.get("replica_puts") or 0
        if puts:
            self.result["raw_puts_same_count_s"] = round(await raw_puts(self.etcd.endpoints, puts), 3)
        self.note(f"raw etcd: {n} puts x128/txn in {self.result['raw_puts_r_s']} s")

    async def close(self) -> None:
        if self.profiler is not None:
            await stop_process(self.profiler)
        await asyncio.gather(*(s.close() for s in self.sims), return_exceptions=True)
        if self.scheduler is not None:
            await stop_process(self.scheduler)
        await asyncio.to_thread(self.etcd.close)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="shoal-scale-"))
    run = Run(args, workdir)
    run.result.update({
        "hosts": args.hosts, "replicas": args.replicas, "per_service": args.per_service,
        "scheduler_checkout": args.scheduler_checkout or str(ROOT), "start_delay_s": args.start_delay,
        "election_ttl": args.election_ttl or "default", "terms_counted": "begun",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    try:
        async with asyncio.timeout(args.budget):  # then tear down with what was measured
            await run.start()
            await run.place()
            await run.steady()
            await run.ceiling()
            with contextlib.suppress(Exception):
                run.result["sim_stats"] = [await s.command("stats") for s in run.sims]
    except (Exception, asyncio.CancelledError) as err:
        run.result["error"] = f"{type(err).__name__}: {err}"
        run.note(f"failed: {run.result['error']}")
        log = workdir / "scheduler.log"
        if log.exists():
            run.result["scheduler_log_tail"] = log.read_text(errors="replace")[-3000:]
    finally:
        await run.close()
        if args.keep_log and (workdir / "scheduler.log").exists():
            shutil.copyfile(workdir / "scheduler.log", args.keep_log)
        shutil.rmtree(workdir, ignore_errors=True)
    return run.result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=2000)
    parser.add_argument("--per-service", type=int, default=100)
    parser.add_argument("--apply-batch", type=int, default=20, help="services per ApplyService call")
    parser.add_argument("--procs", type=int, default=0,
                        help="simulator processes (default: 1 per 1,000 hosts)")
    parser.add_argument("--base-port", type=int, default=10000)
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=180.0, help="bound of each waiting phase, seconds")
    parser.add_argument("--budget", type=float, default=280.0,
                        help="the whole run's bound, seconds: past it, tear down and record what was "
                             "measured")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of the steady-state sample")
    parser.add_argument("--api-calls", type=int, default=20)
    parser.add_argument("--profile", default="", metavar="FILE", help="py-spy collapsed stacks of the leader")
    parser.add_argument("--election-ttl", type=int, default=0,
                        help="the scheduler's --election-ttl (default: the scheduler's own default)")
    parser.add_argument("--scheduler-checkout", default="", metavar="DIR",
                        help="run the scheduler of another checkout (e.g. a worktree of main), for a "
                             "before/after comparison; default: this one")
    parser.add_argument("--keep-log", default="", metavar="FILE",
                        help="copy the scheduler's log here at the end")
    parser.add_argument("--out", default="", help="JSON file (default bench/results/scale-N-R.json)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.hosts < 1 or args.replicas < 1 or args.per_service < 1:
        raise SystemExit("bench/scale.py: --hosts, --replicas and --per-service must be positive")
    if args.base_port + args.hosts > 32768:
        raise SystemExit("bench/scale.py: simulated hosts' ports must stay below the ephemeral range (32768)")
    # SIGTERM (an outer timeout) tears down like ^C: nothing is left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = asyncio.run(main_async(args))
    out = Path(args.out or ROOT / "bench" / "results" / f"scale-{args.hosts}-{args.replicas}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    shown = {k: v for k, v in result.items() if k not in ("scheduler_log_tail", "sim_stats")}
    print(json.dumps(shown, indent=2))
    print(f"written: {out}", file=sys.stderr)
    if "error" in result:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
