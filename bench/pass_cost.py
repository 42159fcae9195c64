"""The cost of one reconcile pass of a settled cluster, and of its parts, by size.

A *settled* cluster: S services of 100 replicas (0.1 cpu, 64 MiB, spread) over H hosts in 3 zones,
every replica ``running`` and ready as recorded, every host's agent reporting exactly those containers
running, every host ready. Nothing is to be done: what a pass costs here is its constant, the cost the
leader pays for every pass that decides nothing (docs/scaling.md, limits 2 and 3). Measured:

* ``world``: the controller's ``World`` build (``Controller._world``) from its mirror and sessions, every
  host worked out afresh, as a full pass does (a scoped pass reads the host facts kept since: part 36);
* ``view``: the placement view of that world (``Controller._view``), built whether or not a pass places;
* ``step``: the pure ``reconcile.step`` over that world with a placer over that view (view excluded);
* ``full``: a whole ``Controller.step()`` as the leader runs it (world, step, statuses to write, what is
  due next), nothing to commit, looking at everything (before scoped passes, every pass was one; now
  the first of a term, one every ``FULL_PASS_INTERVAL``, and one when the clock makes a pass due);
* ``pass``: the same when nothing changed since the last pass (scoped: it looks at nothing);
* ``pass1``: a ``Controller.step()`` after one replica's container changed (its agent reports it
  restarting, and the next round running again; two writes each): what an ordinary event costs.

``--lost N`` measures instead a mass failure (the scale benchmark's): in the settled cluster, N hosts
fall silent past their grace at once (their sessions failed, their statuses not ready since a minute
ago), and each ``Controller.step()`` that follows is timed (its cpu, its view's, and the garbage
collector's pauses within it) until one has nothing to write — the pass that marks the lost hosts'
replicas and places their replacements, and those after it. A fresh
cluster per round; ``--profile FILE`` writes a cProfile of the first round's passes. ``--lost-later M``
loses M more hosts after the first pass: the second marking pass of a mass failure whose lost hosts'
graces end over more than a pass's length (most 5,000-host runs have one, docs/scaling.md part 26).
``--reregistered K`` has K hosts register again with nothing new (a new revision and time in their
records) before the loss, as at 5,000 hosts about 83 a second do between two passes
(``RegistrationService``: each host's record rewritten once a minute): the marking pass's view comes
some 30 s after the last one, 2,500 re-registrations later (docs/scaling.md, part 29). ``--resized K``
has K hosts' agents report new committed figures before the loss, as every host's do while the replicas
placed on it start (a mass failure that comes before the safety net has refreshed the view after
placing meets all of them). ``--relisted K`` has K hosts' statuses recorded again differing only in what
placement does not read, as part 37's leaders recorded every host at a new term's first pass (not
``complete``, a field no longer recorded since part 39) and again once listed; ``--unlisted K`` has K
hosts' sessions connected but not yet listed at the term's first pass, and listed after it, as a new
term's are (a mass failure in a term's first minute meets all of both: docs/scaling.md, part 38).

``--etcd M`` (with ``--lost``) runs the same mass failure against a real etcd of M members on loopback
(``tests/fixtures/etcd``; a fresh key prefix per round) instead of the memory store, and times each
pass on the wall clock as well, from its start to its writes landed: what etcd adds to a pass when it
has the machine to itself, which the 5,000-host benchmark on two shared cores does not show
(docs/scaling.md, part 19). Each pass that launches also says when its launches were handed over, in
seconds from its start (first, median, last): a launch goes once its host's records have landed
(``controller._Launching``), so how far into the commit that is depends on the order of its writes
(docs/scaling.md, part 30).

``--templates N`` measures instead the spec of N launches of one service (a template with a command,
environment, resources, a health check and a port): parsed afresh per launch (``container_spec``, as
before) and from the actuator's ``Templates`` cache.

Hosts' agent sessions are stand-ins holding what a real session holds (an observation, the last
``HostInfo``); no gRPC. Each figure is the best of ``--rounds`` (cpu time of the process, one thread of
pure Python). ``python bench/pass_cost.py [--sizes 2000/500,20000/5000,100000/5000] [--rounds 3]
[--only pass] [--label NAME]``; prints a table and writes JSON to
``bench/results/pass-cost-<label>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proto.agent.v1 import agent_pb2 as pb  # noqa: E402
from scheduler import reconcile  # noqa: E402
from scheduler.agents import AgentSession  # noqa: E402
from scheduler.controller import Controller, ControllerSettings, Mirror, new_replica_id  # noqa: E402
from scheduler.model import (  # noqa: E402
    Capacity,
    HostId,
    HostRecord,
    HostStatus,
    Replica,
    ReplicaId,
    ReplicaPhase,
    Service,
    ServiceName,
    ServiceSpec,
    TemplateFacts,
)
from scheduler.observed import ContainerState, HostObservation, ObservedContainer  # noqa: E402
from scheduler.placement.placer import ViewPlacer  # noqa: E402
from scheduler.placement.registry import default_profile  # noqa: E402
from scheduler.store import base  # noqa: E402
from scheduler.store.etcd import EtcdSettings, EtcdStore  # noqa: E402
from scheduler.store.memory import MemoryStore  # noqa: E402
from scheduler.store.records import LeaderRecord  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
PER_SERVICE = 100
ZONES = ("a", "b", "c")
NOW = time.time()


class StandInSession:
    """What the controller reads of an agent session, without a connection."""

    def __init__(self, host: HostId, address: str, observation: HostObservation, info: pb.HostInfo) -> None:
        self.host = host
        self.address = address
        self.observation = observation
        self.info = info
        self.usage: dict[str, Any] = {}
        self.started_at = NOW - 3600
        self.heartbeat_timeout = 2.0
        self.error = ""
        self.agent_down = False

    async def close(self) -> None:
        return None

    def pace(self, interval: float, heartbeat_timeout: float) -> None:
        self.heartbeat_timeout = heartbeat_timeout


def cluster(n_replicas: int, n_hosts: int) -> tuple[list[object], dict[HostId, StandInSession]]:
    hosts = {HostId(f"{i:032x}"): i for i in range(n_hosts)}
    records = {h: HostRecord(id=h, name=f"node-{i:05d}", address=f"10.0.{i // 250}.{i % 250}:7443",
                             labels=(("zone", ZONES[i % 3]),),
                             capacity=Capacity(cpu_allocatable_millis=32000,
                                               memory_allocatable_bytes=128 * GiB),
                             registered_at=NOW - 3600, last_registered_at=NOW - 10)
               for h, i in hosts.items()}
    statuses = {h: HostStatus(id=h, ready=True, since=NOW - 3600) for h in hosts}
    host_ids = sorted(hosts)
    services: dict[ServiceName, Service] = {}
    replicas: dict[ReplicaId, Replica] = {}
    containers: dict[HostId, dict[str, ObservedContainer]] = {h: {} for h in host_ids}
    facts = TemplateFacts(image="busybox:1", cpu_millis=100, memory_bytes=64 * MiB)
    k = 0
    for s in range(n_replicas // PER_SERVICE):
        name = ServiceName(f"svc-{s:04d}")
        services[name] = Service(spec=ServiceSpec(name=name, replicas=PER_SERVICE,
                                                  template_json='{"image": "busybox:1"}', facts=facts),
                                 )
        for _ in range(PER_SERVICE):
            rid = new_replica_id(name)
            host = host_ids[k % n_hosts]
            k += 1
            replicas[rid] = Replica(id=rid, service=name, generation=1, host=host, phase=ReplicaPhase.RUNNING,
                                    ready=True, reason="running", created_at=NOW - 3000,
                                    updated_at=NOW - 3000)
            containers[host][rid] = ObservedContainer(id=rid, service=name, replica=rid, generation=1,
                                                      state=ContainerState.RUNNING)
    records_out: list[object] = [*services.values(), *replicas.values(), *records.values(),
                                 *statuses.values()]
    sessions = {}
    for h in host_ids:
        committed = len(containers[h])
        info = pb.HostInfo(host_id=h, cpu_allocatable_millis=32000, memory_allocatable_bytes=128 * GiB,
                           cpu_committed_millis=100 * committed, memory_committed_bytes=64 * MiB * committed)
        sessions[h] = StandInSession(h, records[h].address,
                                     HostObservation(host=h, connected=True, complete=True,
                                                     containers=containers[h]), info)
    return records_out, sessions


async def controller(records: list[object], sessions: dict[HostId, StandInSession],
                     store: base.Store | None = None) -> Controller:
    """A leader's controller over ``store`` (a memory store by default) holding ``records``, its mirror
    loaded, not running."""
    store = store if store is not None else MemoryStore()
    for at in range(0, len(records), 1000):
        await store.commit([base.Put(cast(Any, r)) for r in records[at:at + 1000]])
    lease = await store.grant_lease(3600)
    leader = await store.campaign(LeaderRecord(instance="bench"), lease_id=lease.id)
    settings = ControllerSettings(epoch=leader.epoch, guard=base.LeaderGuard(leader.epoch), credentials=None,
                                  profile=default_profile())
    ctl = Controller(store, settings)
    ctl.mirror = Mirror.of(await store.snapshot())
    ctl.sessions.update(cast(dict[HostId, AgentSession], sessions))
    return ctl


def spread(hosts: Sequence[HostId], n: int) -> list[HostId]:
    """``n`` of ``hosts`` at even steps (over the zones, which alternate)."""
    return list(hosts[::max(1, len(hosts) // n)][:n]) if n else []


def lose(ctl: Controller, sessions: dict[HostId, StandInSession], n: int, *,
         besides: Sequence[HostId] = ()) -> list[HostId]:
    """``n`` hosts (spread over the zones, none of ``besides``) fall silent: their sessions failed a
    minute ago."""
    assert ctl.mirror is not None
    gone = set(besides)
    others = [h for h in sorted(sessions) if h not in gone]
    hosts = spread(others, n)
    for host in hosts:
        session = sessions[host]
        session.error = "no report from the agent for 6.0 s (unreachable?)"
        session.observation = replace(session.observation, connected=False, complete=False)
        ctl._host_changed(host)
        ctl.mirror.put(replace(ctl.mirror.statuses[host], ready=False, reason=session.error,
                               since=NOW - 60))
    return hosts


def reregister(ctl: Controller, n: int) -> None:
    """``n`` hosts (spread over the hosts) register again with nothing new: their records rewritten with
    a new revision and time, as ``RegistrationService`` rewrites each once a minute."""
    assert ctl.mirror is not None
    for host in spread(sorted(ctl.mirror.hosts), n):
        record = ctl.mirror.hosts[host]
        ctl.mirror.put(replace(record, revision=record.revision + 1,
                               last_registered_at=record.last_registered_at + 60.0))


def relist(ctl: Controller, n: int) -> None:
    """``n`` hosts' statuses (spread over the hosts) recorded again differing only in what placement does
    not read (here the time they last changed), as part 37's leaders recorded every host at a new term's
    first pass and again once its session had listed it (as not ``complete``, then complete: a field
    no longer recorded since part 39 of docs/scaling.md)."""
    assert ctl.mirror is not None
    for host in spread(sorted(ctl.mirror.statuses), n):
        status = ctl.mirror.statuses[host]
        # (its revision the store's: a pass that records it again is guarded by it)
        ctl.mirror.put(replace(status, since=status.since + 1.0))


def unlist(sessions: dict[HostId, StandInSession], n: int) -> dict[HostId, HostObservation]:
    """``n`` hosts' sessions (spread over the hosts) connected but not listed yet, as a new term's are at
    its first pass; returns what they list (``list_again``)."""
    listed = {}
    for host in spread(sorted(sessions), n):
        listed[host] = sessions[host].observation
        sessions[host].observation = HostObservation(host=host, connected=True, complete=False)
    return listed


def list_again(ctl: Controller, sessions: dict[HostId, StandInSession],
               listed: Mapping[HostId, HostObservation]) -> None:
    """Those sessions list their hosts' containers (what ``unlist`` returned)."""
    for host, observation in listed.items():
        sessions[host].observation = observation
        ctl._host_changed(host)


def resize(sessions: dict[HostId, StandInSession], n: int) -> None:
    """``n`` hosts' agents (spread over the hosts) report 100 millicores more committed."""
    for host in spread(sorted(sessions), n):
        info = pb.HostInfo()
        info.CopyFrom(sessions[host].info)
        info.cpu_committed_millis += 100
        sessions[host].info = info


def after_loss(n_replicas: int, n_hosts: int, lost: int, profile: str, *,
               etcd: str = "", later: int = 0, reregistered: int = 0, resized: int = 0, relisted: int = 0,
               unlisted: int = 0) -> list[dict[str, float]]:
    """One round: a fresh settled cluster loses ``lost`` hosts; each pass after that, timed. ``etcd``: its
    endpoints, to run against a fresh prefix there rather than a memory store. ``later``: that many more
    hosts are lost after the first pass (a second marking pass, as when the lost hosts' graces end over
    more than a pass's length)."""
    import cProfile

    from scheduler import gc_pauses
    gc_pauses.install()  # times the collections each pass triggers, as the leader's /metrics does
    records, sessions = cluster(n_replicas, n_hosts)
    loop = asyncio.new_event_loop()
    store: base.Store | None = None
    if etcd:
        settings = EtcdSettings(etcd, prefix=f"/pass-cost-{secrets.token_hex(4)}/shoal/v1/")
        store = loop.run_until_complete(EtcdStore.open(settings))
    ctl = loop.run_until_complete(controller(records, sessions, store))
    listed = unlist(sessions, unlisted)
    loop.run_until_complete(ctl.step())  # the term's first pass
    list_again(ctl, sessions, listed)
    reregister(ctl, reregistered)
    resize(sessions, resized)
    relist(ctl, relisted)
    first = lose(ctl, sessions, lost)
    busy = ctl.actuator.busy

    handed: list[float] = []  # when each of the pass's launches was handed over, on the wall clock

    def submit(actions: Sequence[reconcile.AgentAction]) -> None:
        # Handed over as a pass hands them, and never run: there is no agent here.
        busy.update(a.replica if isinstance(a, reconcile.Launch) else a.container for a in actions)
        now = time.perf_counter()
        handed.extend(now for a in actions if isinstance(a, reconcile.Launch))

    ctl.actuator.submit = submit  # type: ignore[method-assign]
    seen: list[reconcile.Plan] = []
    ctl._on_pass = lambda _s, plan, _w: seen.append(plan)
    in_view = [0.0]
    build = ctl._view

    def timed_view(world: reconcile.World) -> Any:
        started = time.process_time()
        try:
            return build(world)
        finally:
            in_view[0] += time.process_time() - started

    ctl._view = timed_view  # type: ignore[method-assign]
    passes: list[dict[str, float]] = []
    profiler = cProfile.Profile() if profile else None
    for _ in range(8):  # bounded: a mass failure takes two or three
        gc.collect()
        paused, collections = gc_pauses.pauses.total_s, gc_pauses.pauses.count
        started, wall = time.process_time(), time.perf_counter()
        started_wall = wall
        if profiler is not None:
            profiler.enable()
        loop.run_until_complete(ctl.step())
        if profiler is not None:
            profiler.disable()
        spent, wall = time.process_time() - started, time.perf_counter() - wall
        plan = seen[-1]
        passes.append({"cpu_s": spent, "wall_s": wall, "view_s": in_view[0], "writes": len(plan.writes),
                       "actions": len(plan.actions), "gc_s": gc_pauses.pauses.total_s - paused,
                       "collections": gc_pauses.pauses.count - collections,
                       **handed_over(handed, started_wall)})
        in_view[0] = 0.0
        handed.clear()
        if later and len(passes) == 1:
            lose(ctl, sessions, later, besides=first)
            continue
        if not plan.writes:
            break
    if profiler is not None:
        profiler.dump_stats(profile)
    if store is not None:
        loop.run_until_complete(store.close())
    loop.close()
    return passes


def handed_over(handed: Sequence[float], started: float) -> dict[str, float]:
    """When a pass's launches were handed over, in seconds from its start: the first, the median, the
    last (none: an empty dict). Against etcd, a launch goes once its host's records have landed
    (``controller._Launching``): how far into the commit that is."""
    if not handed:
        return {}
    return {"launched_first_s": min(handed) - started, "launched_p50_s": statistics.median(handed) - started,
            "launched_last_s": max(handed) - started}


def mass_failure(n_replicas: int, n_hosts: int, lost: int, rounds: int, profile: str,
                 later: int = 0, reregistered: int = 0, resized: int = 0, relisted: int = 0,
                 unlisted: int = 0) -> dict[str, Any]:
    """The passes after ``lost`` hosts are lost (and ``later`` more after the first pass), each's cpu and
    what it wrote: the best of ``rounds``."""
    from scheduler import gc_pauses
    gc_pauses.tune()  # as the leader runs
    best_passes: list[dict[str, float]] = []
    for round_ in range(rounds):
        passes = after_loss(n_replicas, n_hosts, lost, profile if round_ == 0 else "", later=later,
                            reregistered=reregistered, resized=resized, relisted=relisted,
                            unlisted=unlisted)
        if not best_passes or sum(p["cpu_s"] for p in passes) < sum(p["cpu_s"] for p in best_passes):
            best_passes = passes
    return {"replicas": n_replicas, "hosts": n_hosts, "lost": lost, "lost_later": later,
            "reregistered": reregistered, "resized": resized, "relisted": relisted,
            "unlisted": unlisted, "passes": best_passes}


def against_etcd(n_replicas: int, n_hosts: int, lost: int, rounds: int, members: int) -> dict[str, Any]:
    """``mass_failure`` against a real etcd of ``members``: every round's passes, on the wall clock (to
    their writes landed) and in cpu."""
    from scheduler import gc_pauses
    from tests.fixtures.etcd import EtcdCluster
    gc_pauses.tune()
    with tempfile.TemporaryDirectory(prefix="pass-cost-etcd-") as workdir:
        etcd = EtcdCluster(Path(workdir), size=members).start()
        try:
            got = [after_loss(n_replicas, n_hosts, lost, "", etcd=etcd.endpoints) for _ in range(rounds)]
        finally:
            etcd.close()
    marking = [passes[0] for passes in got]
    return {"replicas": n_replicas, "hosts": n_hosts, "lost": lost, "etcd_members": members,
            "rounds": [[{k: round(v, 3) for k, v in p.items()} for p in passes] for passes in got],
            "marking_pass_median_wall_s": round(statistics.median(p["wall_s"] for p in marking), 3),
            "marking_pass_median_cpu_s": round(statistics.median(p["cpu_s"] for p in marking), 3),
            "marking_pass_median_launched_p50_s": round(statistics.median(
                p.get("launched_p50_s", 0.0) for p in marking), 3)}


def best(rounds: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        gc.collect()
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def measure(n_replicas: int, n_hosts: int, rounds: int, only: set[str]) -> dict[str, float]:
    records, sessions = cluster(n_replicas, n_hosts)
    loop = asyncio.new_event_loop()
    ctl = loop.run_until_complete(controller(records, sessions))
    out: dict[str, float] = {}

    def one_pass() -> None:
        due = loop.run_until_complete(ctl.step())
        assert due is None or due > time.time() - 1

    loop.run_until_complete(ctl.step())  # the first pass of a term: whatever is built once, built here
    if "world" in only:
        out["world"] = best(rounds, ctl._world)
    world = ctl._world()
    if "view" in only:
        out["view"] = best(rounds, lambda: ctl._view(world))
    if "step" in only:
        lazy = hasattr(ViewPlacer, "built")  # (a checkout before the lazy view: built, then subtracted)

        def pure() -> None:
            view: Any = (lambda: ctl._view(world)) if lazy else ctl._view(world)
            plan = reconcile.step(world, placer=ViewPlacer(view, ctl.settings.profile), new_id=new_replica_id)
            assert plan.empty, plan

        # A settled step asks the placer nothing: no view is built.
        out["step"] = best(rounds, pure) - (0.0 if lazy else out.get("view", 0.0))

    def full_pass() -> None:
        ctl._full_due = True
        one_pass()

    if "full" in only:
        out["full"] = best(rounds, full_pass)
    if "pass" in only:
        loop.run_until_complete(ctl.step())
        out["pass"] = best(rounds, one_pass)
    if "pass1" in only:
        hosts = sorted(sessions)
        flips = iter(range(10_000))
        changed = getattr(ctl, "_host_changed", ctl.poke)  # what a session calls on a change

        def one_event() -> None:
            # One replica's container restarts (and the next round, runs again): one agent event.
            n = next(flips)
            session = sessions[hosts[(n * 7) % len(hosts)]]
            rid, ctr = next(iter(session.observation.containers.items()))
            running = ctr.state is ContainerState.RUNNING
            state = ContainerState.RESTARTING if running else ContainerState.RUNNING
            containers = dict(session.observation.containers)
            containers[rid] = replace(ctr, state=state)
            session.observation = replace(session.observation, containers=containers)
            changed(session.host)
            one_pass()
            session.observation = replace(session.observation, containers={**containers, rid: ctr})
            changed(session.host)
            one_pass()

        out["pass1"] = best(rounds, one_event) / 2
    loop.close()
    return out


TEMPLATE = json.dumps({
    "image": "registry.example:5000/shop/web:1.4.2",
    "command": ["/bin/web", "--port", "8080", "--workers", "4"],
    "env": [f"SETTING_{i}=value-{i}" for i in range(8)], "working_dir": "/srv",
    "resources": {"cpu_millis": 250, "memory_bytes": str(256 * MiB)},
    "restart": {"mode": "RESTART_MODE_ALWAYS"},
    "health": {"exec": {"command": ["/bin/web", "--check"]}, "interval_seconds": 5, "timeout_seconds": 2,
               "retries": 3},
    "ports": [{"container_port": 8080, "protocol": "tcp"}]})


def templates(n: int, rounds: int) -> dict[str, float]:
    from google.protobuf import json_format

    from scheduler.actuator import Templates, container_spec
    json_format.Parse(TEMPLATE, pb.ContainerSpec())  # the template is valid
    facts = TemplateFacts(image="registry.example:5000/shop/web:1.4.2", cpu_millis=250)
    spec = ServiceSpec(name=ServiceName("web"), replicas=n, template_json=TEMPLATE, facts=facts)
    service = Service(spec=spec)
    ids = [ReplicaId(f"web-{i:08x}") for i in range(n)]
    cache = Templates()
    parsed = best(rounds, lambda: [container_spec(service, rid, 1) for rid in ids])
    cached = best(rounds, lambda: [cache.spec(service, rid, 1) for rid in ids])
    assert container_spec(service, ids[0], 1) == cache.spec(service, ids[0], 1)
    return {"parse": parsed, "cached": cached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000/500,20000/500,20000/5000,100000/5000",
                        help="REPLICAS/HOSTS,... (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="world,view,step,full,pass,pass1")
    parser.add_argument("--label", default="")
    parser.add_argument("--templates", type=int, default=0, metavar="N")
    parser.add_argument("--lost", type=int, default=0, metavar="N", help="hosts lost at once (see above)")
    parser.add_argument("--lost-later", type=int, default=0, metavar="M",
                        help="with --lost: M more hosts lost after the first pass (see above)")
    parser.add_argument("--reregistered", type=int, default=0, metavar="K",
                        help="with --lost: K hosts register again with nothing new first (see above)")
    parser.add_argument("--resized", type=int, default=0, metavar="K",
                        help="with --lost: K hosts report new committed figures first (see above)")
    parser.add_argument("--relisted", type=int, default=0, metavar="K",
                        help="with --lost: K hosts' statuses recorded again, changed in nothing placement "
                             "reads, first (see above)")
    parser.add_argument("--unlisted", type=int, default=0, metavar="K",
                        help="with --lost: K hosts' sessions not listed at the term's first pass (see above)")
    parser.add_argument("--profile", default="", metavar="FILE", help="with --lost: cProfile of round 1")
    parser.add_argument("--etcd", type=int, default=0, metavar="M",
                        help="with --lost: against a real etcd of M members (see above)")
    args = parser.parse_args()
    if args.etcd < 0 or (args.etcd and not args.lost):
        raise SystemExit("pass_cost: --etcd M (members, at least 1) measures a mass failure: "
                         "give --lost N too")
    for flag, value in (("--reregistered", args.reregistered), ("--resized", args.resized),
                        ("--relisted", args.relisted), ("--unlisted", args.unlisted)):
        if value < 0 or (value and (not args.lost or args.etcd)):
            raise SystemExit(f"pass_cost: {flag} K (hosts, at least 0) goes with --lost N, "
                             "and not with --etcd")
    if args.lost_later < 0 or (args.lost_later and (not args.lost or args.etcd)):
        raise SystemExit("pass_cost: --lost-later M (hosts, at least 0) goes with --lost N, "
                         "and not with --etcd")
    rows: list[dict[str, Any]] = []
    if args.lost and args.etcd:
        for size in args.sizes.split(","):
            n_replicas, n_hosts = (int(x) for x in size.split("/"))
            row = against_etcd(n_replicas, n_hosts, args.lost, args.rounds, args.etcd)
            rows.append(row)
            for passes in row["rounds"]:
                shown = ", ".join(f"{p['wall_s'] * 1000:.0f} ms wall, {p['cpu_s'] * 1000:.0f} ms cpu "
                                  f"({p['writes']:.0f} writes" + (
                                      f"; launches handed over {p['launched_first_s']:.2f}/"
                                      f"{p['launched_p50_s']:.2f}/{p['launched_last_s']:.2f} s in"
                                      if "launched_p50_s" in p else "") + ")" for p in passes)
                print(f"{n_replicas:>9} replicas on {n_hosts:>6} hosts, {args.lost} lost, etcd of "
                      f"{args.etcd}: {shown}", flush=True)
        write(args.label, rows, unit="s: each round's passes, wall clock (to writes landed) and process cpu")
        return
    if args.lost:
        for size in args.sizes.split(","):
            n_replicas, n_hosts = (int(x) for x in size.split("/"))
            row = mass_failure(n_replicas, n_hosts, args.lost, args.rounds, args.profile, args.lost_later,
                               args.reregistered, args.resized, args.relisted, args.unlisted)
            rows.append(row)
            shown = ", ".join(f"{p['cpu_s'] * 1000:.0f} ms (view {p['view_s'] * 1000:.0f} ms, collecting "
                              f"{p['gc_s'] * 1000:.0f} ms; {p['writes']:.0f} writes, "
                              f"{p['actions']:.0f} actions)" for p in row["passes"])
            later = f" (+{args.lost_later} after the first pass)" if args.lost_later else ""
            if args.reregistered:
                later += f", {args.reregistered} registered again before"
            if args.resized:
                later += f", {args.resized} with new committed figures before"
            if args.relisted:
                later += f", {args.relisted} statuses recorded again before"
            if args.unlisted:
                later += f", {args.unlisted} sessions unlisted at the term's first pass"
            print(f"{n_replicas:>9} replicas on {n_hosts:>6} hosts, {args.lost} lost{later}: {shown}",
                  flush=True)
        write(args.label, rows)
        return
    if args.templates:
        spent = templates(args.templates, args.rounds)
        print(f"{args.templates} launch specs: parsed each time {spent['parse'] * 1000:.1f} ms, "
              f"from the cache {spent['cached'] * 1000:.1f} ms "
              f"({spent['parse'] / args.templates * 1e6:.1f} / "
              f"{spent['cached'] / args.templates * 1e6:.1f} µs each)")
        rows.append({"launch_specs": args.templates, **{k: round(v * 1000, 1) for k, v in spent.items()}})
        write(args.label, rows)
        return
    only = set(args.only.split(","))
    print(f"{'replicas':>9} {'hosts':>6} " + " ".join(f"{k:>9}" for k in sorted(only)) + "   (ms, best cpu)")
    for size in args.sizes.split(","):
        n_replicas, n_hosts = (int(x) for x in size.split("/"))
        got = measure(n_replicas, n_hosts, args.rounds, only)
        rows.append({"replicas": n_replicas, "hosts": n_hosts,
                     **{k: round(v * 1000, 1) for k, v in got.items()}})
        cells = " ".join(f"{got.get(k, 0) * 1000:>9.1f}" for k in sorted(only))
        print(f"{n_replicas:>9} {n_hosts:>6} {cells}", flush=True)
    write(args.label, rows)


def write(label: str, rows: list[dict[str, Any]], unit: str = "ms of process cpu, best of rounds") -> None:
    if not label:
        return
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    out = REPO / "bench" / "results" / f"pass-cost-{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python", "bench/pass_cost.py", *sys.argv[1:]]), "revision": revision,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()},
        "unit": unit, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
