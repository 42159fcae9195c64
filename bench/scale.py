"""Shoal's scheduler at scale, by simulation: N simulated hosts, R replicas, one scheduler, a 3-member etcd.

One invocation, everything on loopback in a temp dir it removes:

* a real 3-member etcd 3.4 (``tests.fixtures.etcd.EtcdCluster``, fsync on as in production; its
  niceness ``--etcd-nice``, 0 by default; its ``--max-txn-ops`` and the scheduler's
  ``--etcd-max-txn-ops`` both ``--etcd-max-txn-ops``, etcd's 128 by default);
* one real, unchanged ``shoal-scheduler serve --insecure-tcp`` (plain TCP on loopback, to its API and to
  the agents), its log in the temp dir;
* ``--hosts`` simulated hosts (``bench.sim``) in 3 zones, spread over ``--procs`` simulator processes
  (default: one per 1,000 hosts), each host registering through ``RegisterHost`` and answering the agent
  API on 127.0.0.1:(``--base-port`` + i); containers go running ``--start-delay`` after their create;
  ``--sim-gc`` sets their garbage collector (``bench.sim.collector``: ``tuned``, the scheduler's
  thresholds, or ``cpython``, as every run before part 32), and their collections' total time is recorded
  while placing, in the steady state and through the mass failure (``sim_gc_pause_s…``).

Then it measures, printing a table and writing JSON (``--out``, default
``bench/results/scale-N-R.json``):

* **hosts ready**: from the simulators reporting every host registered to the scheduler's ``ListHosts``
  showing all N ``ready`` (every agent session listed and streaming);
* **placement**: ``ApplyService`` of R/``--per-service`` services (``--apply-batch`` YAML documents per
  call), the clock started just before the first apply; a watch on etcd's replica keys (from the revision
  before the first apply) stops it when every replica record has a host (*assigned*), then when every one
  is ``running``; replicas/s = R / time to assigned. Also the replica writes the watch saw (puts, and
  transactions by revision) — what the scheduler cost etcd — and the launches the simulators answered
  until all running (``create_calls_until_running``: containers created, batched and unary calls);
* **raw etcd ceiling**, in the same run once the scheduler is idle: R replica-sized puts, then as many
  puts as the scheduler made, 128 per transaction in sequence, no scheduling (aetcd directly);
* **steady state**: the leader's cpu (cores, over ``--steady`` seconds) and RSS with every host streaming
  usage every second, the simulators' and etcd members' cpu beside it;
* **get services latency**: ``ListServices`` ``--api-calls`` times in sequence, p50/p99/max;
* **lease renewals**, the whole run long: a lease of the bench's own renewed every second through the
  scheduler's store client, in a process of its own (``bench.sim.lease_probe``): p50/p99/max, how
  many took over 1 s and 3.3 s (a keeper's deadline at TTL 10), and the slowest with their clock time;
* **what etcd says**, beside it (``bench.sim.etcd_watch``): every member's ``/metrics`` every 5 s (apply
  backlog, pending proposals, puts/s, slow applies, heartbeat failures, leader changes, backend commit
  time) and, at the end, its log's elections, late heartbeats and slow applies; every renewal of 3.3 s
  or more is lined up with what etcd did from 10 s before it began until it ended (``etcd.slow_renewals``);
* ``--profile FILE``: py-spy (if installed) samples the scheduler from the first apply to all running, as
  collapsed stacks (``--format raw``) for ``bench/scale.py``'s reader or flamegraph tools;
* **mass failure** (``--no-mass-failure`` skips it): ``fail cut`` on ``--kill`` hosts at once (100,
  spread over the simulator processes and zones: ``bench.sim.recovery.pick_victims``): their packets
  dropped, as a dead machine's are, in a network namespace the run makes for itself (``--kill-mode
  silent``: agents that answer nothing while their gRPC core still answers pings); for every replica
  that was on them, the time from the kill until a replacement of its service is recorded running on
  another host (p50/p99/max), when the leader marked the killed hosts not ready and their replicas
  stopping, when each replacement was placed and created and started at its host (the simulators'
  clocks: what the service's traffic sees before the record says so), the leader's own stage histograms
  over the phase (``stages``: ``scheduler.timings``' launch, session worker call and delay, placement to
  running; quantiles estimated within their buckets, ``bench.sim.histograms``), the leader's placing passes
  that held its loop a second or more, from its log (``placing_passes``: deciding, and the hosts their
  view counted again; ``term_age_s``: how long the leader had led), and an
  audit (``bench.sim.audit``) that every service has exactly its declared live replicas (a ready host,
  not stopping) and no replica id runs on two hosts, from etcd and the simulators' container lists.
  Then the hosts reboot (``recover … reboot``: back empty), and the time until all are ready and no
  stopping record is left, and the audit again;
* **failover at size** (``--no-failover`` skips it and the standby): a second scheduler instance, same
  flags, its own API port, runs from the start as a standby. The phase SIGKILLs whichever instance leads
  and measures, from the kill, when the survivor holds the leader key (etcd), when its log says its term
  began, when its first reconcile pass completed (its own ``/metrics``: **the moment it acts**, the
  earliest it could place or replace anything) and when it first wrote a record; after
  ``--failover-settle`` seconds it counts replica records whose host changed or that were replaced, the
  ``CreateContainer`` calls the simulators answered after the kill (0 for a settled cluster), the
  survivor's planned actions, and audits (and counts the moved replicas again once the audit is done,
  ``replicas_moved_by_the_audits_end``). The killed instance is restarted as a standby.
  ``--failover-first`` runs it before the mass failure, without its own audit (the mass failure's two
  follow): a zone lost soon after the leader was, the failure meeting a term about
  ``--failover-settle`` seconds old;
* **a hung leader** (``--hung-leader``, before the failover): the leader's process is stopped (SIGSTOP)
  while its lease keeper and session workers run on, as a loop that never runs again; the same figures
  as the failover, from the stop (the standby leads once the keeper lets the term go after the
  scheduler's ``--leader-hang-limit``, 60 s by default); then SIGCONT, and the time until the stopped
  instance's log says it lost its term (and why), and its memory ``--hang-rss-at`` seconds after.

Every wait is bounded (``--timeout`` per phase, ``--budget`` for the whole run); a phase that times out
is recorded as such and the run ends with what it has. At thousands of hosts: the hosts' ports must be
free and below the ephemeral range (checked first), the run raises its soft file-descriptor limit to the
hard one for itself and its children and refuses to start when that cannot cover the scheduler's two
sockets per host, and hosts start registering ``--join-rate`` a second (in waves) so the registration
storm is bounded; placement starts only once every host is registered and ready. Tear-down stops every
process it started (SIGTERM, then SIGKILL) and removes the temp dir, on success, failure, ^C or SIGTERM.

``python bench/scale.py --hosts 100 --replicas 2000`` (from the repository root, with the project's venv).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aetcd
import grpc

from bench.procstat import cpu_seconds, rss_bytes
from bench.sim import collector, histograms, netcut
from bench.sim.audit import Audit, ReplicaRow, audit
from bench.sim.etcd_watch import EtcdSampler, line_up, log_events, summarize_events
from bench.sim.host import host_id_of
from bench.sim.recovery import pick_victims, replacement_times
from bench.sim.scheduler_log import election_lines, log_time, long_passes
from bench.sim.summary import summarize
from proto.scheduler.v1 import scheduler_pb2 as spb
from proto.scheduler.v1 import scheduler_pb2_grpc as spb_grpc
from scheduler import model
from scheduler.store import base, records
from scheduler.store.factory import open_store
from scheduler.store.keys import DEFAULT_PREFIX, KeySchema
from scheduler.store.records import LeaderRecord
from tests.fixtures.etcd import EtcdCluster, free_port

ROOT = Path(__file__).resolve().parent.parent
TXN_OPS = 128
SIM_LINE_LIMIT = 64 << 20  # a simulator's answer to "containers" lists every replica id it runs

_T = TypeVar("_T")

APPLY_ATTEMPTS = 5  # an ApplyService answered UNAVAILABLE (nothing written) is tried again


# -- processes ------------------------------------------------------------------------------------------

def session_workers_of(pid: int) -> list[int]:
    """The session worker processes of a scheduler (``--session-workers``): its children running
    ``scheduler.session_worker`` (not its lease keeper)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rpartition(")")[2].split()[1]) == pid and b"scheduler.session_worker" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


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
    # What each put changed: "new STARTING", "STARTING -> RUNNING", "RUNNING (reason: ...)" for a put
    # in the same phase (its reason cut at the first digit, so hosts and counts do not split it).
    puts_by_change: Counter[str] = field(default_factory=Counter)
    _last: dict[str, model.Replica] = field(default_factory=dict)
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
            before = self._last.get(replica.id)
            self._last[replica.id] = replica
            if before is None:
                what = f"new {replica.phase.name}"
            elif before.phase is not replica.phase:
                what = f"{before.phase.name} -> {replica.phase.name}"
            else:
                what = f"{replica.phase.name} (reason: {re.split(r'[0-9]', replica.reason, maxsplit=1)[0]})"
            self.puts_by_change[what] += 1
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
        # Unique by construction: random 6-hex ids collided (a duplicate key in one transaction) about
        # one time in three at 100,000.
        id=model.ReplicaId(f"s{i // 100:04d}-{i:06x}"),
        service=model.ServiceName(f"s{i // 100:04d}"),
        generation=1, host=model.HostId(f"{i % 5000:032x}"), phase=model.ReplicaPhase.STARTING,
        created_at=1.7e9 + i, updated_at=1.7e9 + i,
        decisions=(model.Decision(1.7e9 + i, "placed", "sim-00042: least allocated (5000/5000 fit)"),),
    ) for i in range(n)]


TOO_MANY_RETRIES = 100  # a batch etcd refuses as overloaded is tried again (about 90 s in all)
# etcd's backpressure: its applies 5,000 entries behind its commits, or a proposal not applied in time.
BACKPRESSURE = ("too many requests", "request timed out")
# Keys a flood's clean-up deletes per request. One delete of a whole flood (up to ~200,000 keys, one raft
# entry) failed the ceiling in six of the thirteen runs of parts 23 to 28 that lost it: etcd timed it out
# (its apply of that entry outlasting the request's deadline on the loaded machine), and nothing retried
# it (docs/scaling.md, part 29).
DELETE_CHUNK = 4096


async def patiently(call: Callable[[], Awaitable[_T]], what: str) -> _T:
    """``call()``, again after a pause while etcd pushes back (slowing down, as a client should; the
    call must be idempotent), at most ``TOO_MANY_RETRIES`` times."""
    delay = 0.05
    for _ in range(TOO_MANY_RETRIES):
        try:
            return await call()
        except aetcd.exceptions.ClientError as err:
            if not any(why in str(err) for why in BACKPRESSURE):
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise RuntimeError(f"etcd refused {what} {TOO_MANY_RETRIES} times (too many requests or timed out)")


async def delete_keys(client: aetcd.Client, keys: Sequence[bytes]) -> None:
    """Deletes ``keys`` (which must be all the keys between the least and the greatest of them) as
    ranges of at most ``DELETE_CHUNK``, each retried under backpressure."""
    ordered = sorted(keys)
    for i in range(0, len(ordered), DELETE_CHUNK):
        first, last = ordered[i], ordered[min(i + DELETE_CHUNK, len(ordered)) - 1]
        await patiently(functools.partial(client.delete_range, first, last + b"\0"), "a clean-up delete")


async def raw_puts(endpoints: str, n: int) -> float:
    """Seconds for ``n`` replica-sized puts, 128 per transaction in sequence (bytes encoded beforehand);
    the keys are deleted afterwards, untimed."""
    schema = KeySchema(f"/raw-{secrets.token_hex(4)}/shoal/v1/")
    pairs = [(schema.key_of(r).encode(), records.encode(r)) for r in sample_replicas(n)]
    client = aetcd_client(endpoints)
    await client.connect()
    try:
        start = time.perf_counter()
        for i in range(0, len(pairs), TXN_OPS):
            puts = [client.transactions.put(k, v) for k, v in pairs[i:i + TXN_OPS]]
            # Puts are idempotent: a batch etcd pushed back is put again; the time it costs is part of
            # the ceiling.
            batch = functools.partial(client.transaction, compare=[], success=puts, failure=[])
            ok, _ = await patiently(batch, "a batch")
            assert ok
        took = time.perf_counter() - start
        await delete_keys(client, [k for k, _ in pairs])  # the prefix is this flood's alone
        return took
    finally:
        await client.close()


WATCHED_METRICS = ("shoal_scheduler_reconcile_duration_seconds_count",
                   "shoal_scheduler_reconcile_duration_seconds_sum",
                   "shoal_scheduler_placement_duration_seconds_count",
                   "shoal_scheduler_placement_duration_seconds_sum",
                   "shoal_scheduler_gc_pause_seconds_total",
                   "shoal_scheduler_session_workers_gc_pause_seconds_total")


def metrics_url(address: str, names: Sequence[str]) -> str:
    """An instance's ``/metrics`` restricted to ``names`` (``?name[]=``): the takeover's poll for the
    survivor's first pass asked for the whole page every 50 ms, and at 5,000 hosts rendering it kept the
    survivor's HTTP thread busy, competing for the GIL with its loop, for most of the time it was being
    measured (part 39 of docs/scaling.md). An instance from before part 39 ignores the query and answers
    the whole page."""
    return f"http://{address}/metrics?" + urllib.parse.urlencode([("name[]", name) for name in names])


def scrape(address: str) -> dict[str, float]:
    """The scheduler's own counters of reconcile passes, placements and collector pauses (its own and its
    session workers', each summed over label sets)."""
    out = dict.fromkeys(WATCHED_METRICS, 0.0)
    try:
        with urllib.request.urlopen(metrics_url(address, WATCHED_METRICS), timeout=10) as reply:
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
            "pass_mean_s": round(seconds / passes, 4) if passes else 0.0,
            # what the leader's collections held its loop for meanwhile (every generation), and its
            # session workers' theirs (summed; 0 from a scheduler from before they reported them)
            "gc_pause_s": round(after[WATCHED_METRICS[4]] - before[WATCHED_METRICS[4]], 3),
            "workers_gc_pause_s": round(after[WATCHED_METRICS[5]] - before[WATCHED_METRICS[5]], 3)}


def scrape_counter(address: str, name: str) -> dict[str, float]:
    """Every sample of one metric on an instance's ``/metrics``, by its label text ("" when unlabelled);
    empty when the instance does not answer."""
    try:
        with urllib.request.urlopen(metrics_url(address, [name]), timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        metric, _, rest = line.partition("{")
        if line.startswith(name) and (metric == name or line.partition(" ")[0] == name):
            labels = rest.partition("}")[0] if rest else ""
            out[labels] = float(line.rpartition(" ")[2])
    return out


# The leader's histograms of a replica's way from placement to running (``scheduler.timings``), with the
# labels each is read for: ``mass_failure``'s ``stages``.
STAGES = {"launch_s": ("shoal_scheduler_launch_duration_seconds", {"outcome": "created"}),
          "worker_call_s": ("shoal_scheduler_session_worker_call_duration_seconds", {}),
          "worker_delay_s": ("shoal_scheduler_session_worker_delay_seconds", {}),
          "start_s": ("shoal_scheduler_replica_start_duration_seconds", {})}


def scrape_stages(address: str) -> dict[str, dict[float, float]]:
    """Each of ``STAGES``' cumulative bucket counts on an instance's ``/metrics`` now."""
    return {stage: histograms.buckets(scrape_counter(address, f"{name}_bucket"), **labels)
            for stage, (name, labels) in STAGES.items()}


def stages_between(before: dict[str, dict[float, float]],
                   after: dict[str, dict[float, float]]) -> dict[str, dict[str, float | int | None]]:
    """``STAGES``' quantiles over what they counted between two scrapes."""
    return {stage: histograms.summary(histograms.between(before.get(stage, {}), counts))
            for stage, counts in after.items()}


def ports_in_use(first: int, count: int) -> list[int]:
    """Ports of ``first`` … ``first + count - 1`` that cannot be bound on 127.0.0.1 now (with
    SO_REUSEADDR, as grpc binds: connections of an earlier run in TIME_WAIT do not count)."""
    busy = []
    for port in range(first, first + count):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def raise_fd_limit(hosts: int, procs: int) -> dict[str, int]:
    """Raise this process's soft open-file limit to the hard one (children inherit it) and check it covers
    the scheduler (a channel per host's agent session and transient registration calls: about two sockets
    per host) and each simulator process (a listener and an accepted connection per host, plus its
    registration calls). CAP_SYS_RESOURCE may be missing: the hard limit is what there is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    scheduler_needs = 2 * hosts + 1000
    sim_needs = 3 * -(-hosts // procs) + 500
    if limit != resource.RLIM_INFINITY and max(scheduler_needs, sim_needs) > limit:
        raise SystemExit(f"bench/scale.py: open-file limit {limit} is below what {hosts} hosts need "
                         f"(scheduler ≈ {scheduler_needs}, each simulator ≈ {sim_needs})")
    return {"nofile_limit": limit, "scheduler_fds_needed": scheduler_needs, "sim_fds_needed": sim_needs}


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# -- one run -------------------------------------------------------------------------------------------

@dataclass
class SchedulerProcess:
    """One ``shoal-scheduler serve`` instance: its id, its API and metrics addresses, its log."""

    instance: str
    api: str
    http: str
    log: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


LEADING = "shoal.scheduler: leading (epoch"


class Run:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.etcd = EtcdCluster(workdir / "etcd", size=3, nice=args.etcd_nice,
                                flags=("--max-txn-ops", str(args.etcd_max_txn_ops)))
        self.schedulers: dict[str, SchedulerProcess] = {}
        self.sims: list[Simulator] = []
        self.profiler: asyncio.subprocess.Process | None = None
        self.result: dict[str, Any] = {}
        self.store: base.Store | None = None
        # A lease renewed beside the run, in a process of its own (how long etcd takes to renew).
        self.probe: asyncio.subprocess.Process | None = None
        self.sampler: EtcdSampler | None = None  # etcd's own figures beside the probe
        self._sampler_task: asyncio.Task[None] | None = None
        self._started_wall = time.time()

    def note(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    # -- starting ---------------------------------------------------------------------------------

    async def start(self) -> None:
        args = self.args
        self.note("etcd: 3 members")
        await asyncio.to_thread(self.etcd.start)
        # The bench's own reads are big at 100,000 replicas (a snapshot is tens of MB): generous deadlines.
        self.store = await open_store(self.etcd.endpoints, prefix=DEFAULT_PREFIX, request_timeout_s=60,
                                      retry_deadline_s=120)
        self.probe = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.sim.lease_probe", "--etcd", self.etcd.endpoints, cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(self.workdir / "probe.log").open("ab"))
        self.sampler = EtcdSampler({m.name: m.client_url for m in self.etcd.members})
        self._sampler_task = asyncio.create_task(self.sampler.run(), name="etcd-sampler")
        first = await self.start_scheduler("scale-a")
        await self.wait_leader(first)
        if args.failover:
            await self.start_scheduler("scale-b")  # follows as a standby from the start
        procs = args.procs or max(1, -(-args.hosts // 1000))
        per = -(-args.hosts // procs)
        self.note(f"{args.hosts} simulated hosts in {procs} processes")
        started = time.perf_counter()
        apis = ",".join(s.api for s in self.schedulers.values())
        for first_index in range(0, args.hosts, per):
            count = min(per, args.hosts - first_index)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.sim", "--scheduler", apis, "--hosts", str(count),
                "--first", str(first_index), "--base-port", str(args.base_port), "--start-delay",
                str(args.start_delay), "--register-timeout", str(args.timeout),
                "--join-rate", str(args.join_rate / procs if args.join_rate > 0 else 0), "--gc", args.sim_gc,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=(self.workdir / f"sim-{first_index}.log").open("ab"),
                cwd=ROOT, start_new_session=True, limit=SIM_LINE_LIMIT)
            self.sims.append(Simulator(proc, first_index, count))
        # A simulator answers once all its hosts registered or its --register-timeout (after its servers
        # started and its join waves went out) ran out. Meanwhile, etcd says how far registration got.
        rate = args.join_rate / procs if args.join_rate > 0 else 0
        bound = args.timeout + (per / rate if rate else 0) + 120
        progress = asyncio.create_task(self.follow_registration(started))
        try:
            answers = await asyncio.wait_for(asyncio.gather(*(sim.read(bound) for sim in self.sims)), bound)
        except TimeoutError:
            raise RuntimeError(f"the simulators did not report within {bound:.0f} s; registration so far: "
                               f"{self.result.get('registration_progress', [])[-1:]}") from None
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await progress
        for sim, answer in zip(self.sims, answers, strict=True):
            sim.ready = answer
        self.result["hosts_registered"] = sum(int(s.ready.get("registered", 0)) for s in self.sims)
        short = [s.ready for s in self.sims if not s.ready.get("ready")]
        if short:
            raise RuntimeError(f"{self.result['hosts_registered']} of {args.hosts} hosts registered within "
                               f"{args.timeout} s: {short}")
        registered = time.perf_counter()
        self.result["hosts_registered_s"] = round(registered - started, 2)
        self.result["sim_rss_bytes_per_process_at_start"] = [s.ready["rss_bytes"] for s in self.sims]
        ready = await self.wait_hosts_ready(args.hosts, args.timeout)
        self.result["hosts_ready_s"] = round(ready - registered, 2) if ready else None
        self.note(f"hosts ready: {self.result['hosts_ready_s']} s after all registered")
        if ready is None:
            raise RuntimeError(f"not every host ready within {args.timeout} s: placement would measure "
                               "the registration storm, not scheduling")

    async def follow_registration(self, started: float) -> None:
        """Every 10 s while hosts register: (seconds, host records, hosts ready) from etcd, so a storm that
        does not finish shows how far it got."""
        progress: list[tuple[float, int, int]] = []
        self.result["registration_progress"] = progress
        while True:
            await asyncio.sleep(10.0)
            with contextlib.suppress(Exception):
                hosts = await self.the_store.list(self.the_store.schema.hosts())
                ready = await self.ready_hosts()
                progress.append((round(time.perf_counter() - started, 1), len(hosts.items), len(ready)))

    async def start_scheduler(self, instance: str) -> SchedulerProcess:
        """Start (or restart, same id and ports) one scheduler instance with the run's flags."""
        args = self.args
        known = self.schedulers.get(instance)
        sched = known or SchedulerProcess(instance, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                                          self.workdir / f"scheduler-{instance}.log")
        log = sched.log.open("ab")
        sched.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scheduler", "serve", "--etcd", self.etcd.endpoints, "--listen", sched.api,
            *(["--election-ttl", str(args.election_ttl)] if args.election_ttl else []),
            *(["--etcd-max-txn-ops", str(args.etcd_max_txn_ops)] if args.etcd_max_txn_ops != base.MAX_TXN_OPS
              else []),
            *(["--registration-refresh", str(args.registration_refresh)]
              if args.registration_refresh else []),
            *args.scheduler_arg,
            "--insecure-tcp", "--http-listen", sched.http, "--instance-id", instance, "--log-level", "info",
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=args.scheduler_checkout or ROOT,
            start_new_session=True)
        self.schedulers[instance] = sched
        return sched

    async def wait_leader(self, sched: SchedulerProcess) -> None:
        deadline = time.monotonic() + 30
        async with grpc.aio.insecure_channel(sched.api) as channel:
            stub = spb_grpc.SchedulerStub(channel)
            while time.monotonic() < deadline:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.ListSchedulers(spb.ListSchedulersRequest(), timeout=2)
                    if reply.leader:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"no scheduler leader within 30 s; see {sched.log}")

    async def wait_hosts_ready(self, n: int, timeout: float) -> float | None:
        """When etcd's host statuses (the leader's judgement) say ``n`` hosts are ready: a host not ready
        before (new, or lost) is ready once the leader's session has listed it. Read from etcd, not the
        scheduler's API, so that waiting costs the leader nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if len(await self.ready_hosts()) >= n:
                    return time.perf_counter()
            await asyncio.sleep(1.0)
        return None

    async def ready_hosts(self) -> set[str]:
        listing = await self.the_store.list(self.the_store.schema.host_statuses())
        return {s.id for s in listing.items if s.ready}

    @property
    def the_store(self) -> base.Store:
        assert self.store is not None
        return self.store

    async def leader(self) -> SchedulerProcess:
        """The instance holding the leader key now (it may have changed hands under load)."""
        for _ in range(60):
            record = await self.the_store.get(self.the_store.schema.leader())
            if record is not None and record.instance in self.schedulers:
                return self.schedulers[record.instance]
            await asyncio.sleep(0.5)
        raise RuntimeError("no scheduler holds the leader key")

    def standby(self, leader: SchedulerProcess) -> SchedulerProcess | None:
        return next((s for s in self.schedulers.values() if s is not leader and s.alive), None)

    def terms(self) -> int:
        """Terms begun so far by any instance (each log says "shoal.scheduler: leading (epoch N)" at each,
        and "no longer leading (epoch N)" at each end, which must not count)."""
        return sum(s.log.read_text(errors="replace").count(LEADING) for s in self.schedulers.values()
                   if s.log.exists())

    # -- placement --------------------------------------------------------------------------------

    async def place(self) -> None:
        args = self.args
        store = self.the_store
        watch = ReplicaWatch(total=args.replicas)
        follower = asyncio.create_task(watch.follow(store, await store.current_revision()))
        names = [f"s{i:04d}" for i in range(-(-args.replicas // args.per_service))]
        leader = await self.leader()
        leader_cpu = cpu_seconds(leader.pid)
        pids = self.processes(leader)
        cpu_before = {k: cpu_seconds(p) for k, p in pids.items()}
        metrics_before = await asyncio.to_thread(scrape, leader.http)
        terms_before = self.terms()
        stats = await self.sim_stats()
        creates_before = await self.create_calls(stats)
        sim_gc_before = await self.sim_gc_pause_s(stats)
        if args.profile:
            self.profiler = await self.start_profiler(args.profile, leader.pid)
        try:
            async with grpc.aio.insecure_channel(leader.api) as channel:
                stub = spb_grpc.SchedulerStub(channel)
                start = time.perf_counter()
                retries = 0
                for i in range(0, len(names), args.apply_batch):
                    request = spb.ApplyServiceRequest(
                        yaml=services_yaml(names[i:i + args.apply_batch], args.per_service), source="scale")
                    for attempt in range(1, APPLY_ATTEMPTS + 1):  # bounded
                        try:
                            await stub.ApplyService(request, timeout=max(60.0, args.timeout))
                            break
                        except grpc.aio.AioRpcError as err:
                            # "nothing was written: retry shortly", as a user's script would
                            if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == APPLY_ATTEMPTS:
                                raise
                            retries += 1
                            await asyncio.sleep(0.5 * attempt)
                applied = time.perf_counter()
                self.result["apply_retries"] = retries
                self.note(f"applied {len(names)} services in {applied - start:.2f} s")
                for name, event in (("assigned", watch.all_assigned), ("running", watch.all_running)):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), args.timeout)
                    if not event.is_set():
                        self.note(f"timed out waiting for all {name}: {len(watch.assigned)} assigned, "
                                  f"{len(watch.running)} running")
                        break
                    self.note(f"all {name}: {time.perf_counter() - start:.2f} s")
                    if name == "assigned":  # where the machine's cpu went while placing, by process
                        self.result["cpu_s_during_placement"] = {
                            k: round(cpu_seconds(p) - cpu_before[k], 1) for k, p in pids.items()
                            if Path(f"/proc/{p}").exists()}
                        self.result["sim_gc_pause_s_during_placement"] = round(
                            await self.sim_gc_pause_s() - sim_gc_before, 3)
            placement_s = watch.assigned_at - start if watch.all_assigned.is_set() else None
            running_s = watch.running_at - start if watch.all_running.is_set() else None
            self.result.update({
                "services": len(names), "apply_s": round(applied - start, 3),
                "assigned_s": round(placement_s, 3) if placement_s else None,
                "running_s": round(running_s, 3) if running_s else None,
                "placement_replicas_per_s": round(args.replicas / placement_s, 1) if placement_s else None,
                "assigned_at_end": len(watch.assigned), "running_at_end": len(watch.running),
                "replica_puts": watch.puts, "replica_txns": len(watch.revisions),
                "replica_puts_by_change": dict(watch.puts_by_change.most_common(12)),
                "leader_cpu_s_during_placement": round(cpu_seconds(leader.pid) - leader_cpu, 2)
                if leader.alive else None,
                "leader_terms_during_placement": self.terms() - terms_before,
                "create_calls_until_running": {k: v - creates_before[k]
                                               for k, v in (await self.create_calls()).items()},
                "reconcile_during_placement": passes_between(metrics_before,
                                                             await asyncio.to_thread(scrape, leader.http)),
            })
        finally:
            if self.profiler is not None:
                await stop_process(self.profiler, grace=30, sig=signal.SIGINT)  # py-spy writes what it has
                self.profiler = None
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower

    def processes(self, leader: SchedulerProcess) -> dict[str, int]:
        """The run's processes by role: the schedulers, the leader's session workers, simulators, etcd."""
        standby = self.standby(leader)
        return {"leader": leader.pid, **({"standby": standby.pid} if standby is not None else {}),
                **{f"session-worker{i}": p for i, p in enumerate(session_workers_of(leader.pid))},
                **{f"sim{s.first}": s.proc.pid for s in self.sims},
                **{f"etcd-{m.name}": m.pid for m in self.etcd.members if m.pid is not None}}

    async def start_profiler(self, out: str, pid: int) -> asyncio.subprocess.Process | None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            self.note("py-spy is not installed (pip install py-spy): no profile")
            return None
        return await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
            "--output", out, "--nonblocking", stdout=(self.workdir / "py-spy.log").open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True)

    # -- the steady state -------------------------------------------------------------------------

    async def steady(self) -> None:
        args = self.args
        leader = await self.leader()
        standby = self.standby(leader)
        workers = session_workers_of(leader.pid)
        pids = self.processes(leader)
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        metrics_before = await asyncio.to_thread(scrape, leader.http)
        terms_before = self.terms()
        sim_gc_before = await self.sim_gc_pause_s()
        t0 = time.perf_counter()
        await asyncio.sleep(args.steady)
        elapsed = time.perf_counter() - t0
        self.result["steady_sim_gc_pause_s"] = round(await self.sim_gc_pause_s() - sim_gc_before, 3)
        cores = {k: round((cpu_seconds(p) - before[k]) / elapsed, 3) for k, p in pids.items()
                 if Path(f"/proc/{p}").exists()}  # a term lost meanwhile ends the leader's session workers
        self.result["steady_cpu_cores"] = cores
        metrics_after = await asyncio.to_thread(scrape, leader.http)
        self.result["steady_reconcile"] = passes_between(metrics_before, metrics_after)
        self.result["steady_leader_terms"] = self.terms() - terms_before
        self.result["steady_leader_rss_bytes"] = rss_bytes(leader.pid)
        # With --session-workers the hosts' sessions live there: their memory is recorded beside the
        # leader's, never left out of it silently.
        self.result["steady_session_workers_rss_bytes"] = [rss_bytes(p) for p in workers
                                                           if Path(f"/proc/{p}").exists()]
        if standby is not None:
            self.result["steady_standby_rss_bytes"] = rss_bytes(standby.pid)
        self.result["steady_sim_rss_bytes"] = [rss_bytes(s.proc.pid) for s in self.sims]
        latencies = []
        failed: dict[str, int] = {}
        reply = spb.ListServicesResponse()
        async with grpc.aio.insecure_channel(leader.api) as channel:
            stub = spb_grpc.SchedulerStub(channel)
            for _ in range(args.api_calls):
                start = time.perf_counter()
                try:
                    reply = await stub.ListServices(spb.ListServicesRequest(), timeout=args.api_timeout)
                except grpc.aio.AioRpcError as err:  # counted, not fatal: a slow answer is what is measured
                    failed[err.code().name] = failed.get(err.code().name, 0) + 1
                    continue
                latencies.append(time.perf_counter() - start)
        self.result["get_services_s"] = summarize(latencies)
        self.result["get_services_failed"] = failed
        self.result["get_services_count"] = len(reply.services)
        self.note(f"steady: leader {cores['leader']} cores, "
                  f"{self.result['steady_leader_rss_bytes'] >> 20} MiB"
                  + (f" (session workers {[r >> 20 for r in self.result['steady_session_workers_rss_bytes']]}"
                     " MiB)" if workers else "") + "; "
                  f"ListServices p50 {self.result['get_services_s']['p50']} s, failed {failed or 'none'}")

    # -- what the cluster holds -------------------------------------------------------------------

    async def audit(self) -> Audit:
        """etcd's records against the containers the reachable simulated hosts run."""
        snap = await self.the_store.snapshot()
        running: dict[str, list[str]] = {}
        for sim in self.sims:
            answer = await sim.command("containers", timeout=self.args.timeout)
            running.update(answer["running"])
        return audit(declared={s: svc.spec.replicas for s, svc in snap.services.items()},
                     replicas=[ReplicaRow(r.id, r.service, r.host, r.phase.value)
                               for r in snap.replicas.values()],
                     ready_hosts={h for h, st in snap.host_statuses.items() if st.ready},
                     running=running)

    async def settled(self, timeout: float) -> float | None:
        """Seconds until etcd holds, for every service, its declared count of running replicas on ready
        hosts and no record in any other phase (nothing stopping, pending or starting); None on timeout."""
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = await self.the_store.snapshot()
            ready = {h for h, st in snap.host_statuses.items() if st.ready}
            counts: dict[str, int] = {}
            other = 0
            for r in snap.replicas.values():
                if r.phase is model.ReplicaPhase.RUNNING and r.host in ready:
                    counts[r.service] = counts.get(r.service, 0) + 1
                else:
                    other += 1
            if not other and all(counts.get(s, 0) == svc.spec.replicas for s, svc in snap.services.items()):
                return time.perf_counter() - start
            await asyncio.sleep(1.0)
        return None

    async def started_at_hosts(self, since_wall: float, ids: set[str]) -> list[tuple[float, float]]:
        """For each of ``ids`` running at a simulated host: when it was created and started there, in
        seconds after ``since_wall``."""
        found: list[tuple[float, float]] = []
        for sim in self.sims:
            answer = await sim.command(f"started {since_wall!r}", timeout=self.args.timeout)
            found += [(created - since_wall, started - since_wall)
                      for cid, (created, started) in answer.get("started", {}).items() if cid in ids]
        return found

    async def sim_stats(self) -> list[dict[str, Any]]:
        """One ``stats`` of each simulator: what the helpers below read, asked once for all of them."""
        return [await s.command("stats") for s in self.sims]

    async def sim_calls(self, *methods: str, stats: list[dict[str, Any]] | None = None) -> list[int]:
        """The calls of each of ``methods`` the simulators answered, from ``stats`` (asked now if None)."""
        stats = stats if stats is not None else await self.sim_stats()
        return [sum(int(st.get("calls", {}).get(m, 0)) for st in stats) for m in methods]

    async def sim_gc_pause_s(self, stats: list[dict[str, Any]] | None = None) -> float:
        """What the simulators' garbage collections took so far, in all (``bench.sim.collector``), from
        ``stats`` (asked now if None)."""
        stats = stats if stats is not None else await self.sim_stats()
        return sum(float(st.get("gc_pause_s", 0.0)) for st in stats)

    async def create_calls(self, stats: list[dict[str, Any]] | None = None) -> dict[str, int]:
        """The launches the simulators answered: containers, batched calls, unary calls."""
        containers, batches, items = await self.sim_calls(
            "CreateContainer", "CreateContainers", "CreateContainers.items", stats=stats)
        return {"containers": containers, "batched_calls": batches, "unary_calls": containers - items}

    # -- mass failure -----------------------------------------------------------------------------

    async def mass_failure(self) -> None:
        args = self.args
        out: dict[str, Any] = {"killed": args.kill, "kill_mode": args.kill_mode}
        self.result["mass_failure"] = out
        victims = [f"sim-{i:05d}" for i in pick_victims(args.hosts, args.kill)]
        victim_ids = {host_id_of(n) for n in victims}
        store = self.the_store
        snap = await store.snapshot()
        before = set(snap.replicas)
        lost: dict[str, int] = {}
        lost_ids: set[str] = set()
        for r in snap.replicas.values():
            if r.host in victim_ids and r.phase is not model.ReplicaPhase.STOPPING:
                lost[r.service] = lost.get(r.service, 0) + 1
                lost_ids.add(r.id)
        out["replicas_lost"] = len(lost_ids)
        out["services_hit"] = len(lost)
        out["zones"] = sorted({("a", "b", "c")[int(n[4:]) % 3] for n in victims})
        stats = await self.sim_stats()
        creates_before = (await self.sim_calls("CreateContainer", stats=stats))[0]
        sim_gc_before = await self.sim_gc_pause_s(stats)
        leader = await self.leader()
        metrics_before = await asyncio.to_thread(scrape, leader.http)
        stages_before = await asyncio.to_thread(scrape_stages, leader.http)
        running_new: dict[str, tuple[str, float]] = {}
        decided_running: dict[str, float] = {}  # the leader's clock when it decided each was running
        noticed: dict[str, float] = {}
        placed: dict[str, float] = {}
        done = asyncio.Event()
        killed_at = killed_wall = 0.0

        def replaced() -> bool:
            got: dict[str, int] = {}
            for service, _ in running_new.values():
                got[service] = got.get(service, 0) + 1
            return all(got.get(s, 0) >= n for s, n in lost.items())

        async def follow() -> None:
            async for change in store.watch(snap.revision, scope=store.schema.replicas()):
                r = change.value
                if not isinstance(r, model.Replica):
                    continue
                now = time.perf_counter()
                if r.id in lost_ids and r.phase is model.ReplicaPhase.STOPPING and r.id not in noticed:
                    noticed[r.id] = now - killed_at
                if r.id not in before and r.id not in placed and r.host is not None:
                    placed[r.id] = now - killed_at
                if (r.id not in before and r.id not in running_new and r.phase is model.ReplicaPhase.RUNNING
                        and r.host is not None and r.host not in victim_ids):
                    running_new[r.id] = (r.service, now)
                    decided_running[r.id] = next((d.time for d in reversed(r.decisions)
                                                  if d.action == "running"), 0.0)
                    if replaced():
                        done.set()

        not_ready: dict[str, float] = {}

        async def follow_hosts() -> None:
            # When the leader marked each killed host not ready: the heartbeat's share of the time to
            # replace, apart from the grace and the passes that follow it.
            async for change in store.watch(snap.revision, scope=store.schema.host_statuses()):
                status = change.value
                if isinstance(status, model.HostStatus) and status.id in victim_ids and not status.ready \
                        and status.id not in not_ready:
                    not_ready[status.id] = time.perf_counter() - killed_at

        follower = asyncio.create_task(follow())
        host_follower = asyncio.create_task(follow_hosts())
        try:
            by_sim: dict[int, list[str]] = {}
            for name in victims:
                index = int(name[4:])
                sim = next(s for s in self.sims if s.first <= index < s.first + s.hosts)
                by_sim.setdefault(sim.first, []).append(name)
            sims = {s.first: s for s in self.sims}
            killed_at, killed_wall = time.perf_counter(), time.time()
            answers = await asyncio.gather(*(sims[f].command(f"fail {','.join(names)} {args.kill_mode}")
                                             for f, names in by_sim.items()))
            if not all(a.get("ok") for a in answers):
                raise RuntimeError(f"fail: {answers}")
            out["processes_hit"] = len(by_sim)
            self.note(f"mass failure: {len(victims)} hosts {args.kill_mode}, "
                      f"{len(lost_ids)} replicas to replace")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), args.timeout)
            # The leader's passes from before the kill to all replaced (or the timeout).
            out["reconcile"] = passes_between(metrics_before, await asyncio.to_thread(scrape, leader.http))
            # The leader's own stage histograms over the same time (their buckets' estimates)
            out["stages"] = stages_between(stages_before, await asyncio.to_thread(scrape_stages, leader.http))
            out["sim_gc_pause_s"] = round(await self.sim_gc_pause_s() - sim_gc_before, 3)
            result = replacement_times(lost, running_new.values(), killed_at=killed_at)
            out["replaced_s"] = summarize(result.seconds, digits=3)
            out["not_replaced"] = result.missing
            out["all_replaced_s"] = round(result.seconds[-1], 3) if result.seconds and not result.missing \
                else None
            out["hosts_not_ready_s"] = summarize(list(not_ready.values()), digits=3)
            out["marked_stopping_s"] = summarize(list(noticed.values()), digits=3)
            # The replacements' way from placed to recorded running: each one's record created on its
            # new host (the pass that marked the lost ones placed it), its container created and started
            # there (the simulators' clocks: same machine), then recorded running (replaced_s).
            replacements = set(running_new)
            out["placed_s"] = summarize([placed[rid] for rid in replacements if rid in placed], digits=3)
            at_hosts = await self.started_at_hosts(killed_wall, replacements)
            out["created_at_hosts_s"] = summarize([created for created, _ in at_hosts], digits=3)
            out["started_at_hosts_s"] = summarize([started for _, started in at_hosts], digits=3)
            # When the leader decided each was running (its clock, the same machine's), before its write
            # went through etcd and reached this benchmark's watch (replaced_s).
            out["decided_running_s"] = summarize([at - killed_wall for rid in replacements
                                                  if (at := decided_running.get(rid, 0.0)) > 0], digits=3)
            out["creates_during"] = (await self.sim_calls("CreateContainer"))[0] - creates_before
            # The leader's placing passes that held its loop a second or more (its log): the marking
            # pass's view, warm or counted again for many hosts, and how long into the term it came.
            text = leader.log.read_text(errors="replace")
            out["placing_passes"] = long_passes(text, since=killed_wall, placing_only=True)
            began = [at for line in text.splitlines() if LEADING in line
                     and (at := log_time(line)) is not None and at <= killed_wall]
            out["term_age_s"] = round(killed_wall - began[-1], 1) if began else None
        finally:
            for task in (follower, host_follower):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        took = out["replaced_s"]
        self.note(f"mass failure: hosts not ready p50 {out['hosts_not_ready_s']['p50']} s, replicas marked "
                  f"stopping p50 {out['marked_stopping_s']['p50']} s, started at their hosts p50 "
                  f"{out['started_at_hosts_s']['p50']} s, decided running p50 "
                  f"{out['decided_running_s']['p50']} s, replaced p50 {took['p50']} s, "
                  f"p99 {took['p99']} s, {out['not_replaced']} not replaced")
        self.note(f"mass failure, {out['term_age_s']} s into the leader's term; its placing passes: " + (
            ", ".join(f"{p['decide_s']} s deciding, view {p.get('rebuilt')} hosts rebuilt"
                      for p in out["placing_passes"]) or "none over a second"))
        self.note("mass failure, the leader's stages p50/p90 (s): " + ", ".join(
            f"{stage} {q['p50']}/{q['p90']} ({q['n']})" for stage, q in out["stages"].items()))
        found = await self.audit()
        out["audit_after_replacement"] = found.as_json()
        # Bring them back as rebooted machines: empty, a new boot id; what the scheduler still had on
        # them (stopping records) is retired when it reaches them again.
        recovering = time.perf_counter()
        answers = await asyncio.gather(*(sims[f].command(f"recover {','.join(names)} reboot")
                                         for f, names in by_sim.items()))
        if not all(a.get("ok") for a in answers):
            raise RuntimeError(f"recover: {answers}")
        ready = await self.wait_hosts_ready(args.hosts, args.timeout)
        out["recovered_ready_s"] = round(ready - recovering, 2) if ready else None
        settled = await self.settled(args.timeout)
        out["recovered_settled_s"] = round(time.perf_counter() - recovering, 2) if settled is not None \
            else None
        found = await self.audit()
        out["audit_after_recovery"] = found.as_json()
        self.note(f"mass failure: hosts back, settled after {out['recovered_settled_s']} s, "
                  f"audit {'ok' if found.ok else 'NOT ok'}")

    # -- failover at size, and a hung leader ----------------------------------------------------------

    async def failover(self) -> None:
        out: dict[str, Any] = {"acts_means": "its first reconcile pass completed (its /metrics)"}
        self.result["failover"] = out
        leader, _ = await self.leader_and_standby(out)

        async def kill() -> None:
            assert leader.proc is not None
            leader.proc.kill()
            await leader.proc.wait()
            self.note(f"failover: SIGKILLed the leader {leader.instance}")

        # Failover first, the audit is left to the mass failure's, which then meets the term about
        # --failover-settle seconds old rather than after the audit's minute or more.
        await self.takeover(out, "failover", kill, audit=not self.args.failover_first)
        if self.args.restart_killed:
            await self.start_scheduler(leader.instance)  # back as a standby

    async def hung_leader(self) -> None:
        """The leader's process stopped (SIGSTOP: as a loop that never runs again; its lease keeper and
        session workers, processes of their own, run on): the other instance leads once the keeper lets
        the term go (``--leader-hang-limit``), nothing already running is re-placed; then the stopped
        one runs again (SIGCONT), and is timed until it says it lost its term, its memory sampled."""
        args = self.args
        out: dict[str, Any] = {"acts_means": "its first reconcile pass completed (its /metrics)"}
        self.result["hung_leader"] = out
        leader, _ = await self.leader_and_standby(out)
        workers = session_workers_of(leader.pid)
        out["rss_before_bytes"] = {"leader": rss_bytes(leader.pid),
                                   "workers": [rss_bytes(p) for p in workers]}
        lines_before = len(leader.log.read_text(errors="replace").splitlines())

        async def stop() -> None:
            os.kill(leader.pid, signal.SIGSTOP)
            self.note(f"hung leader: SIGSTOPped the leader {leader.instance} (its keeper runs on)")

        try:
            await self.takeover(out, "hung leader", stop)
        finally:
            os.kill(leader.pid, signal.SIGCONT)
        resumed = time.perf_counter()
        self.note(f"hung leader: SIGCONT to {leader.instance}")
        lost: list[str] = []
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and not lost:  # bounded
            lines = leader.log.read_text(errors="replace").splitlines()[lines_before:]
            lost = [line for line in lines if "lost leadership" in line]
            if not lost:
                await asyncio.sleep(0.1)
        out["lost_term_after_resume_s"] = round(time.perf_counter() - resumed, 3) if lost else None
        out["lost_term_why"] = lost[0].split("): ", 1)[-1] if lost else None
        keeper = [line for line in leader.log.read_text(errors="replace").splitlines()[lines_before:]
                  if "no sign of life" in line and "ERROR" in line]
        out["keeper_said"] = keeper[0].split(": ", 2)[-1] if keeper else None
        samples: list[dict[str, Any]] = []
        for at in args.hang_rss_at:  # the resumed instance's memory: is the lost term's state let go?
            await asyncio.sleep(max(0.0, resumed + at - time.perf_counter()))
            samples.append({"s": at, "leader": rss_bytes(leader.pid),
                            "workers": [rss_bytes(p) for p in session_workers_of(leader.pid)]})
        out["rss_after_resume_bytes"] = samples
        out["leads_after"] = (await self.leader()).instance
        self.note(f"hung leader: {leader.instance} said it lost its term "
                  f"{out['lost_term_after_resume_s']} s after it ran again; its RSS "
                  + ", ".join(f"{x['leader'] >> 20} MiB at {x['s']:g} s" for x in samples))

    async def leader_and_standby(self, out: dict[str, Any]) -> tuple[SchedulerProcess, SchedulerProcess]:
        settled = await self.settled(self.args.timeout)
        out["settled_before"] = settled is not None
        leader = await self.leader()
        survivor = self.standby(leader)
        if survivor is None:
            raise RuntimeError("no standby instance to take over")
        out["killed"], out["survivor"] = leader.instance, survivor.instance
        return leader, survivor

    async def takeover(self, out: dict[str, Any], what: str, act: Callable[[], Awaitable[None]], *,
                       audit: bool = True) -> None:
        """``act`` on the leader (``out["killed"]``), then time the standby's election, term and first
        pass and first write, watch ``--failover-settle`` seconds, count what was re-placed, and audit
        (unless not ``audit``: the mass failure that follows audits twice)."""
        args = self.args
        store = self.the_store
        survivor = self.schedulers[out["survivor"]]
        snap = await store.snapshot()
        creates_before = (await self.sim_calls("CreateContainer"))[0]
        passes_before = sum(scrape_counter(survivor.http, WATCHED_METRICS[0]).values())
        actions_before = scrape_counter(survivor.http, "shoal_scheduler_planned_actions_total")
        marks: dict[str, float] = {}
        acted_at = 0.0

        async def follow() -> None:
            async for change in store.watch(snap.revision):
                now = time.perf_counter()
                value = change.value
                if isinstance(value, LeaderRecord):
                    if value.instance == survivor.instance and "elected_s" not in marks:
                        marks["elected_s"] = now - acted_at
                        out["epoch"] = value.epoch
                elif ("elected_s" in marks and "first_write_s" not in marks
                      and isinstance(value, model.Replica | model.HostStatus)):
                    marks["first_write_s"] = now - acted_at
                    out["first_write"] = type(value).__name__

        follower = asyncio.create_task(follow())
        try:
            acted_at = time.perf_counter()
            acted_wall = time.time()
            await act()
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                passes = sum((await asyncio.to_thread(scrape_counter, survivor.http,
                                                      WATCHED_METRICS[0])).values())
                if passes > passes_before:
                    marks["first_pass_s"] = time.perf_counter() - acted_at
                    break
                await asyncio.sleep(0.05)
            self.note(f"{what}: {survivor.instance} acted after {marks.get('first_pass_s')} s; "
                      f"watching {args.failover_settle} s for re-placements")
            await asyncio.sleep(args.failover_settle)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
        out.update({k: round(v, 3) for k, v in marks.items()})
        leading = [line for line in survivor.log.read_text(errors="replace").splitlines() if LEADING in line]
        at = log_time(leading[-1]) if leading else None
        # (a term begun before the act, e.g. one it held earlier in the run, is not this one)
        out["log_leading_s"] = round(at - acted_wall, 3) if at is not None and at >= acted_wall - 1 \
            else None
        after = await store.snapshot()
        moved = _moved(snap, after)
        out["replicas_moved_or_replaced"] = len(moved)
        out["moved_examples"] = moved[:10]
        # Why, as the survivor recorded it on each moved replica (its newest decision): the reasons live
        # in etcd, which is gone once the run ends (part 23's base2 moved 124 with no reason on record).
        out["moved_why"] = dict(Counter(_newest_decision(after.replicas.get(rid)) for rid in moved)
                                .most_common(5))
        out["replicas_new"] = len(set(after.replicas) - set(snap.replicas))
        if audit:
            out["audit"] = (await self.audit()).as_json()
            # Again once the audit (a minute or more at 5,000 hosts) is done: a takeover that re-places
            # what was running may do it after the settle (part 34's hung leaders: 66 s after the first
            # pass).
            end = await store.snapshot()
            out["replicas_moved_by_the_audits_end"] = len(_moved(snap, end))
        out["creates_after_kill"] = (await self.sim_calls("CreateContainer"))[0] - creates_before
        actions_after = scrape_counter(survivor.http, "shoal_scheduler_planned_actions_total")
        out["survivor_planned_actions"] = {k: v - actions_before.get(k, 0.0) for k, v in actions_after.items()
                                           if v - actions_before.get(k, 0.0)}
        self.note(f"{what}: {out['replicas_moved_or_replaced']} replicas moved, "
                  f"{out['creates_after_kill']} creates after it")

    # -- etcd alone -------------------------------------------------------------------------------

    async def ceiling(self) -> None:
        n = self.args.replicas
        self.result["raw_puts_r_s"] = round(await raw_puts(self.etcd.endpoints, n), 3)
        self.result["raw_puts_r_per_s"] = round(n / self.result["raw_puts_r_s"], 1)
        puts = self.result.get("replica_puts") or 0
        if puts:
            self.result["raw_puts_same_count_s"] = round(await raw_puts(self.etcd.endpoints, puts), 3)
        self.note(f"raw etcd: {n} puts x128/txn in {self.result['raw_puts_r_s']} s")

    async def stop_probe(self) -> list[tuple[float, float]]:
        """Ends the probe (its stdin closed) and records its result; its slow renewals, raw."""
        if self.probe is None or self.probe.stdin is None or self.probe.stdout is None:
            return []
        self.probe.stdin.close()
        try:
            async with asyncio.timeout(30):
                line = await self.probe.stdout.readline()
            out = json.loads(line)
        except (TimeoutError, ValueError) as err:
            self.result["lease_renewals_s"] = {"error": f"the probe gave no result: {err!r}"}
            return []
        finally:
            await stop_process(self.probe)
        self.result["lease_renewals_s"] = out["result"]
        return [(float(wall), float(took)) for wall, took in out["slow"]]

    async def close(self) -> None:
        if self._sampler_task is not None:
            self._sampler_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sampler_task
        slow = await self.stop_probe()
        if self.sampler is not None:
            events = log_events({m.name: m.log_path for m in self.etcd.members}, since=self._started_wall)
            self.result["etcd"] = {**self.sampler.result(), "log": summarize_events(events),
                                   "slow_renewals": line_up(slow, self.sampler.samples, events)}
            for row in self.result["etcd"]["slow_renewals"]:
                self.note(f"slow renewal: {row}")
        if self.profiler is not None:
            await stop_process(self.profiler)
        await asyncio.gather(*(s.close() for s in self.sims), return_exceptions=True)
        await asyncio.gather(*(stop_process(s.proc) for s in self.schedulers.values() if s.proc is not None),
                             return_exceptions=True)
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
        await asyncio.to_thread(self.etcd.close)


async def phase(run: Run, name: str, work: Coroutine[Any, Any, None]) -> None:
    """Run one optional phase; its failure is recorded under its name and the run goes on."""
    try:
        await work
    except Exception as err:
        run.result.setdefault("phase_errors", {})[name] = f"{type(err).__name__}: {err}"
        run.note(f"{name} failed: {type(err).__name__}: {err}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="shoal-scale-"))
    run = Run(args, workdir)
    run.result.update({
        "hosts": args.hosts, "replicas": args.replicas, "per_service": args.per_service,
        "scheduler_checkout": args.scheduler_checkout or str(ROOT), "start_delay_s": args.start_delay,
        "election_ttl": args.election_ttl or "default", "terms_counted": "begun", "etcd_nice": args.etcd_nice,
        "etcd_max_txn_ops": args.etcd_max_txn_ops,
        "registration_refresh": args.registration_refresh or "default", "join_rate": args.join_rate,
        "sim_gc": args.sim_gc,
        "scheduler_args": args.scheduler_arg,
        "phases": {"mass_failure": args.mass_failure, "hung_leader": args.hung_leader and args.failover,
                   "failover": args.failover, "failover_first": args.failover_first},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    run.result.update(raise_fd_limit(args.hosts, args.procs or max(1, -(-args.hosts // 1000))))
    run.result["mem_available_bytes_at_start"] = mem_available()
    try:
        async with asyncio.timeout(args.budget):  # then tear down with what was measured
            await run.start()
            await run.place()
            await phase(run, "steady", run.steady())
            if args.failover and args.failover_first:
                await phase(run, "failover", run.failover())
            if args.mass_failure:
                await phase(run, "mass_failure", run.mass_failure())
            if args.hung_leader and args.failover:
                await phase(run, "hung_leader", run.hung_leader())
            if args.failover and not args.failover_first:
                await phase(run, "failover", run.failover())
            await phase(run, "ceiling", run.ceiling())
            with contextlib.suppress(Exception):
                run.result["sim_stats"] = [await s.command("stats") for s in run.sims]
    except (Exception, asyncio.CancelledError) as err:
        run.result["error"] = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        run.note(f"failed: {run.result['error']}")
        run.result["scheduler_log_tail"] = {
            s.instance: s.log.read_text(errors="replace")[-3000:] for s in run.schedulers.values()
            if s.log.exists()}
    finally:
        await run.close()
        run.result["election_log"] = {
            s.instance: election_lines(s.log.read_text(errors="replace")) for s in run.schedulers.values()
            if s.log.exists()}
        for sched in run.schedulers.values():
            if args.keep_log and sched.log.exists():
                shutil.copyfile(sched.log, f"{args.keep_log}.{sched.instance}")
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
    parser.add_argument("--budget", type=float, default=600.0,
                        help="the whole run's bound, seconds: past it, tear down and record what was "
                             "measured")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of the steady-state sample")
    parser.add_argument("--api-calls", type=int, default=20)
    parser.add_argument("--api-timeout", type=float, default=60.0,
                        help="deadline of each ListServices call, seconds (a call past it counts as failed)")
    parser.add_argument("--profile", default="", metavar="FILE", help="py-spy collapsed stacks of the leader")
    parser.add_argument("--election-ttl", type=int, default=0,
                        help="the scheduler's --election-ttl (default: the scheduler's own default)")
    parser.add_argument("--etcd-nice", type=int, default=0, metavar="N",
                        help="niceness of the etcd members (deploy/systemd's drop-in runs etcd at -5, on a "
                             "machine of its own; here it would take cores from the scheduler under test)")
    parser.add_argument("--etcd-max-txn-ops", type=int, default=base.MAX_TXN_OPS, metavar="N",
                        help="etcd's --max-txn-ops, and the scheduler's --etcd-max-txn-ops to match "
                             "(default %(default)s, etcd's own)")
    parser.add_argument("--registration-refresh", type=float, default=0.0,
                        help="the scheduler's --registration-refresh, seconds between a host's registrations "
                             "(default: the scheduler's own default)")
    parser.add_argument("--scheduler-arg", action="append", default=[], metavar="ARG",
                        help="one more flag for shoal-scheduler serve (repeat; e.g. "
                             "--scheduler-arg=--percentage-of-hosts-to-score=100)")
    parser.add_argument("--scheduler-checkout", default="", metavar="DIR",
                        help="run the scheduler of another checkout (e.g. a worktree of main), for a "
                             "before/after comparison; default: this one")
    parser.add_argument("--keep-log", default="", metavar="FILE",
                        help="copy each scheduler instance's log to FILE.INSTANCE at the end")
    parser.add_argument("--join-rate", type=float, default=500.0,
                        help="hosts a second starting to register, over all simulators (0: all at once)")
    parser.add_argument("--sim-gc", choices=collector.MODES, default="tuned",
                        help="the simulators' garbage collector: the scheduler's thresholds (tuned) or "
                             "CPython's (cpython: every run before part 32 of docs/scaling.md)")
    parser.add_argument("--no-mass-failure", dest="mass_failure", action="store_false",
                        help="skip killing --kill hosts at once")
    parser.add_argument("--kill", type=int, default=100, help="hosts the mass failure kills")
    parser.add_argument("--kill-mode", choices=("cut", "silent"), default="cut",
                        help="cut: the killed hosts' packets are dropped, as a dead machine's are (the run "
                             "runs itself in a network namespace of its own for it: bench.sim.netcut); "
                             "silent: their agents answer nothing but their gRPC core still answers pings, "
                             "as a hung agent's does")
    parser.add_argument("--no-failover", dest="failover", action="store_false",
                        help="no standby scheduler instance, no failover phase")
    parser.add_argument("--failover-first", action="store_true",
                        help="the failover before the mass failure, which follows its --failover-settle "
                             "without an audit between (a zone lost soon after the leader was)")
    parser.add_argument("--failover-settle", type=float, default=15.0,
                        help="seconds after the new leader's first pass to watch for re-placements "
                             "(more than the heartbeat timeout plus the host grace)")
    parser.add_argument("--hung-leader", action="store_true",
                        help="before the failover, stop the leader's process (SIGSTOP) until the standby "
                             "acts and --failover-settle more, then let it run again (needs the standby)")
    parser.add_argument("--hang-rss-at", type=float, nargs="+", default=[5.0, 30.0, 60.0], metavar="S",
                        help="seconds after the stopped leader runs again to sample its memory")
    parser.add_argument("--no-restart-killed", dest="restart_killed", action="store_false",
                        help="leave the killed leader down after the failover")
    parser.add_argument("--out", default="", help="JSON file (default bench/results/scale-N-R.json)")
    return parser


def in_own_netns() -> None:
    """Carries on in a network namespace of the benchmark's own, loopback up and the cut's table ready
    (``bench.sim.netcut``): the run re-executes itself under ``unshare --net`` once, and everything it
    starts (etcd, the schedulers, the simulators) inherits the namespace, which ends with the last of
    them: nothing is left in the machine's own."""
    if not netcut.private_netns():
        if os.geteuid() != 0:
            raise SystemExit("bench/scale.py: --kill-mode cut needs root (a network namespace and nftables); "
                             "use --kill-mode silent")
        try:
            os.execvp("unshare", ["unshare", "--net", "--", sys.executable, *sys.argv])
        except OSError as err:
            raise SystemExit(f"bench/scale.py: cannot run under unshare --net: {err}") from err
    up = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if up.returncode != 0:
        raise SystemExit(f"bench/scale.py: cannot bring loopback up: {up.stderr.strip()}")
    try:
        netcut.prepare()
    except netcut.NetCutError as err:
        raise SystemExit(f"bench/scale.py: {err}") from err


def _moved(before: base.Snapshot, after: base.Snapshot) -> list[str]:
    """Replicas of ``before`` gone, on another host, or newly stopping in ``after``."""
    return [rid for rid, r in before.replicas.items()
            if (now := after.replicas.get(rid)) is None or now.host != r.host
            or (now.phase is model.ReplicaPhase.STOPPING and r.phase is not model.ReplicaPhase.STOPPING)]


def _newest_decision(replica: model.Replica | None) -> str:
    """A replica's newest recorded decision as "action: reason" (cut to 200 characters)."""
    if replica is None:
        return "its record is gone"
    if not replica.decisions:
        return "no decision recorded"
    last = replica.decisions[-1]
    return f"{last.action}: {last.reason}"[:200]


def main() -> None:
    args = build_parser().parse_args()
    if args.mass_failure and args.kill_mode == "cut":
        in_own_netns()
    if args.hosts < 1 or args.replicas < 1 or args.per_service < 1:
        raise SystemExit("bench/scale.py: --hosts, --replicas and --per-service must be positive")
    if args.base_port + args.hosts > 32768:
        raise SystemExit("bench/scale.py: simulated hosts' ports must stay below the ephemeral range (32768)")
    if args.mass_failure and not 0 < args.kill < args.hosts:
        raise SystemExit(f"bench/scale.py: --kill must be between 1 and {args.hosts - 1} "
                         "(or --no-mass-failure)")
    busy = ports_in_use(args.base_port, args.hosts)
    if busy:
        raise SystemExit(f"bench/scale.py: {len(busy)} of the hosts' ports {args.base_port} to "
                         f"{args.base_port + args.hosts - 1} are in use (first: {busy[:5]}); "
                         "choose --base-port")
    # SIGTERM (an outer timeout) tears down like ^C: nothing is left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = asyncio.run(main_async(args))
    out = Path(args.out or ROOT / "bench" / "results" / f"scale-{args.hosts}-{args.replicas}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    shown = {k: v for k, v in result.items() if k not in ("scheduler_log_tail", "sim_stats", "election_log")}
    print(json.dumps(shown, indent=2))
    print(f"written: {out}", file=sys.stderr)
    if "error" in result:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
