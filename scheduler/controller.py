"""The leader's control loop: mirror etcd, follow every host's agent, reconcile, commit, act.

Runs only on the elected leader, for one term (``Election.run`` cancels it when leadership ends). It
keeps:

* a **mirror** of the state in etcd — a snapshot, then the watch from its revision (a compacted revision
  means a new snapshot); the leader's own committed writes are applied to it at once, so the next pass
  never decides on state older than what it just wrote;
* one **agent session** per registered host (``scheduler.agents``): its containers, kept current;
* an **actuator** (``scheduler.actuator``) carrying out agent actions with the term's fence.

A *pass* builds the ``reconcile.World`` from these, runs the pure ``reconcile.step`` with a placer over a
fresh placement view, commits the record writes (and the host statuses that changed) as compare-and-swap
transactions under the term's guard, and only then hands the agent actions to the actuator. Passes run
one at a time, triggered by any change (a watch event, an agent event, an action done) and coalesced: a
burst of changes is one pass. A conflict means the mirror was behind: the watch brings the news and the
next pass decides again. ``NotLeader`` ends the term.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf import json_format

from proto.agent.v1 import agent_pb2 as pb
from scheduler import reconcile
from scheduler.actuator import Actuator
from scheduler.actuator import Settings as ActuatorSettings
from scheduler.agents import HEARTBEAT_TIMEOUT, AgentSession, Credentials
from scheduler.autoscale.gather import CPU_INITIALIZATION_PERIOD
from scheduler.autoscale.loop import INTERVAL, Autoscaler, AutoscalerSettings
from scheduler.elastic.loop import AttemptRecord, ElasticLoop, ElasticSettings
from scheduler.model import (
    AutoscaleStatus,
    Capacity,
    GroupName,
    HostGroup,
    HostGroupStatus,
    HostId,
    HostRecord,
    HostStatus,
    Replica,
    ReplicaId,
    ReplicaPhase,
    Service,
    ServiceName,
)
from scheduler.observed import ContainerState, ContainerUsage, HostObservation
from scheduler.placement.framework import Profile
from scheduler.placement.placer import ViewPlacer
from scheduler.placement.view import ClusterView, build_view
from scheduler.start_health import StartHealth, StartHealthSettings
from scheduler.store import base
from scheduler.store.errors import Compacted, Conflict, NotLeader, StoreUnavailable

log = logging.getLogger(__name__)

COALESCE = 0.01          # a burst of changes within this is one pass
STORE_RETRY = 0.5        # after etcd did not answer
CONFLICT_RETRY = 0.05    # the watch is expected to deliver what made the write conflict


@dataclass
class Mirror:
    """The state in etcd as of ``revision`` (plus this leader's own writes)."""

    revision: int
    services: dict[ServiceName, Service] = field(default_factory=dict)
    replicas: dict[ReplicaId, Replica] = field(default_factory=dict)
    hosts: dict[HostId, HostRecord] = field(default_factory=dict)
    statuses: dict[HostId, HostStatus] = field(default_factory=dict)
    autoscale: dict[ServiceName, AutoscaleStatus] = field(default_factory=dict)
    hostgroups: dict[GroupName, HostGroup] = field(default_factory=dict)
    hostgroup_statuses: dict[GroupName, HostGroupStatus] = field(default_factory=dict)

    @classmethod
    def of(cls, snap: base.Snapshot) -> Mirror:
        return cls(revision=snap.revision, services=dict(snap.services), replicas=dict(snap.replicas),
                   hosts=dict(snap.hosts), statuses=dict(snap.host_statuses), autoscale=dict(snap.autoscale),
                   hostgroups=dict(snap.hostgroups), hostgroup_statuses=dict(snap.hostgroup_statuses))

    def _table(self, record_type: type) -> dict[Any, Any] | None:
        tables: dict[type, dict[Any, Any]] = {Service: self.services, Replica: self.replicas,
                                              HostRecord: self.hosts, HostStatus: self.statuses,
                                              AutoscaleStatus: self.autoscale, HostGroup: self.hostgroups,
                                              HostGroupStatus: self.hostgroup_statuses}
        return tables.get(record_type)

    def put(self, record: object) -> None:
        table = self._table(type(record))
        if table is None:
            return
        key = _key(record)
        known = table.get(key)
        if known is None or known.revision <= record.revision:  # type: ignore[attr-defined]
            table[key] = record

    def apply(self, change: base.Change) -> bool:
        """Apply a watched change; whether it changed anything a reconcile pass reads (see ``_read``)."""
        self.revision = max(self.revision, change.revision)
        table = self._table(change.record_type)
        if change.kind is base.ChangeKind.PUT and change.value is not None:
            record = change.value
            known = table.get(_key(record)) if table is not None else None
            self.put(record)
            if known is not None and known.revision >= change.revision:
                return False  # this leader's own write, applied when it committed: seen by its passes
            return _read(known, record)
        if table is not None and change.ids:
            key = change.ids[-1]
            known = table.get(key)
            if known is not None and known.revision < change.revision:
                del table[key]
                return _read(known, None)
        return False


def _key(record: object) -> Any:
    if isinstance(record, Service):
        return record.name
    if isinstance(record, AutoscaleStatus):
        return record.service
    if isinstance(record, HostGroup):
        return record.spec.name
    if isinstance(record, HostGroupStatus):
        return record.group
    return record.id  # type: ignore[attr-defined]


# What a pass reads of the state in etcd (``Controller._world``); the autoscaler's and the elastic
# loop's records are read by their own loops on their own clocks.
_PASS_READS = (Service, Replica, HostRecord, HostStatus)


def _read(before: object | None, after: object | None) -> bool:
    """Whether a pass could decide differently after a record went from ``before`` to ``after``.

    A host re-registering with nothing new but the time (and the use figures its agent streams every
    second anyway) is rewritten in etcd at least every ``REGISTRATION_REWRITE`` seconds: at 5,000 hosts
    that was 80 passes a second deciding nothing (docs/scaling.md)."""
    record = after if after is not None else before
    if not isinstance(record, _PASS_READS):
        return False
    if isinstance(before, HostRecord) and isinstance(after, HostRecord):
        return _host_as_read(before) != _host_as_read(after)
    return True


def _host_as_read(record: HostRecord) -> HostRecord:
    """A host record without what no pass reads: the registration's time, its raw report, its revision,
    and the use figures (a pass takes room from the agent's usage stream, ``Controller._fresh``)."""
    capacity = replace(record.capacity, cpu_committed_millis=0, memory_committed_bytes=0, disk_free_bytes=0)
    return replace(record, capacity=capacity, last_registered_at=0.0, info_json="", revision=0)


def new_replica_id(service: ServiceName) -> ReplicaId:
    # Container ids are at most 64 characters: a service name (≤ 63) is cut to leave room for the token.
    return ReplicaId(f"{service[:54]}-{secrets.token_hex(4)}")


@dataclass(frozen=True)
class AutoscaleSettings:
    """The autoscaler's part of a term: how often, and where Prometheus is."""

    interval: float = INTERVAL
    prometheus_url: str = ""
    cpu_initialization_period: float = CPU_INITIALIZATION_PERIOD


@dataclass(frozen=True)
class ControllerSettings:
    epoch: int
    guard: base.LeaderGuard
    credentials: Credentials | None
    profile: Profile
    host_grace: float = reconcile.HOST_GRACE       # unreachable this long: its replicas move
    agent_down_grace: float = reconcile.AGENT_DOWN_GRACE  # the same when only its agent is down
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT    # no usage report this long: the host is unreachable
    start_health: StartHealthSettings = field(default_factory=StartHealthSettings)
    autoscale: AutoscaleSettings | None = None  # None: no autoscaler in this term (tests of reconcile)
    elastic_interval: float | None = None  # the elastic loop's tick; None: no elastic loop in this term


class Controller:
    def __init__(self, store: base.Store, settings: ControllerSettings, *,
                 on_pass: Callable[[float, reconcile.Plan, reconcile.World], None] | None = None,
                 on_provider_attempt: Callable[[AttemptRecord], None] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.mirror: Mirror | None = None
        self.sessions: dict[HostId, AgentSession] = {}
        self._wake = asyncio.Event()
        self._deposed = ""
        self._on_pass = on_pass
        self._on_provider_attempt = on_provider_attempt
        self.start_health = StartHealth(settings.start_health)
        self.actuator = Actuator(ActuatorSettings(epoch=settings.epoch), session=self.sessions.get,
                                 service=self._service, on_done=self.poke, on_deposed=self._lose,
                                 start_health=self.start_health)
        self.last_placer: ViewPlacer | None = None

    def poke(self, *_: object) -> None:
        self._wake.set()

    def _lose(self, why: str) -> None:
        self._deposed = why
        self.poke()

    def _service(self, name: ServiceName) -> Service | None:
        return self.mirror.services.get(name) if self.mirror is not None else None

    # -- the loop -----------------------------------------------------------------------------------

    async def run(self) -> None:
        watcher: asyncio.Task[None] | None = None
        autoscaler = self._autoscaler()
        scaling = asyncio.create_task(autoscaler.run(), name="autoscaler") if autoscaler is not None else None
        elastic = self._elastic()
        hosting = asyncio.create_task(elastic.run(), name="elastic") if elastic is not None else None
        if hosting is not None:
            hosting.add_done_callback(self._elastic_ended)
        try:
            while True:
                self.mirror = Mirror.of(await self.store.snapshot())
                watcher = asyncio.create_task(self._follow(self.mirror.revision), name="etcd-watch")
                try:
                    await self._loop(watcher)
                except _Resync:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await watcher
                    continue
        finally:
            for task in (watcher, scaling, hosting):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            await self.actuator.close()
            await asyncio.gather(*(s.close() for s in self.sessions.values()), return_exceptions=True)
            self.sessions.clear()

    def _autoscaler(self) -> Autoscaler | None:
        chosen = self.settings.autoscale
        if chosen is None:
            return None

        def on_written(committed: base.Committed) -> None:
            if self.mirror is not None:
                for record in committed.written:
                    self.mirror.put(record)
            self.poke()  # a new count: the reconcile pass creates or removes replicas now

        settings = AutoscalerSettings(guard=self.settings.guard, interval=chosen.interval,
                                      prometheus_url=chosen.prometheus_url,
                                      cpu_initialization_period=chosen.cpu_initialization_period)
        return Autoscaler(
            self.store, settings,
            services=lambda: self.mirror.services if self.mirror is not None else {},
            replicas=lambda: self.mirror.replicas if self.mirror is not None else {},
            statuses=lambda: self.mirror.autoscale if self.mirror is not None else {},
            usage=self._usage, on_written=on_written)

    def _elastic(self) -> ElasticLoop | None:
        interval = self.settings.elastic_interval
        if interval is None:
            return None

        def on_committed(committed: base.Committed, ops: Sequence[base.Op]) -> None:
            if self.mirror is None:
                return
            for record in committed.written:
                self.mirror.put(record)
            for op in ops:  # hosts forgotten: gone from the mirror before the watch says so
                if isinstance(op, base.Delete) and isinstance(op.record, HostRecord):
                    self.mirror.hosts.pop(op.record.id, None)
                elif isinstance(op, base.Delete) and isinstance(op.record, HostStatus):
                    self.mirror.statuses.pop(op.record.id, None)
            self.poke()  # a host draining: the reconcile pass moves its replicas now

        settings = ElasticSettings(guard=self.settings.guard, profile=self.settings.profile,
                                   interval=interval)
        return ElasticLoop(self.store, settings, state=lambda: self.mirror, on_committed=on_committed,
                           on_attempt=self._on_provider_attempt or (lambda _: None))

    def _elastic_ended(self, task: asyncio.Task[None]) -> None:
        """The elastic loop ends only with the term (cancelled) or when it finds the term over."""
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, NotLeader):
            self._lose(str(error))
        elif error is not None:
            log.error("the elastic loop stopped: %s", error, exc_info=error)

    def _usage(self) -> dict[str, ContainerUsage]:
        return {cid: u for session in self.sessions.values() for cid, u in session.usage.items()}

    async def _follow(self, revision: int) -> None:
        assert self.mirror is not None
        async for change in self.store.watch(revision):
            if self.mirror.apply(change):
                self.poke()

    async def _loop(self, watcher: asyncio.Task[None]) -> None:
        next_due: float | None = None
        # A first pass at once: what the snapshot holds (a scale made while there was no leader, replicas
        # to launch) must not wait for the next change to arrive.
        self.poke()
        while True:
            timeout = None if next_due is None else max(0.0, next_due - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if watcher.done():
                error = watcher.exception()
                if isinstance(error, Compacted):
                    raise _Resync()
                if error is not None:
                    raise error
                raise _Resync()
            if self._deposed:
                raise NotLeader(self.settings.epoch, 0)
            await asyncio.sleep(COALESCE)  # coalesce a burst of changes into one pass
            self._wake.clear()
            next_due = await self.step()

    async def step(self) -> float | None:
        """One pass; returns when the next one is due by the clock (a backoff ending), if ever."""
        started = time.perf_counter()
        assert self.mirror is not None
        self._sync_sessions()
        world = self._world()
        placer = ViewPlacer(self._view(world), self.settings.profile)
        plan = reconcile.step(world, placer=placer, new_id=new_replica_id)
        self.last_placer = placer
        ops: list[base.Op] = []
        for write in plan.writes:
            if isinstance(write, reconcile.WriteReplica):
                ops.append(base.Put(write.replica))
            elif isinstance(write, reconcile.DropReplica):
                ops.append(base.Delete(write.replica))
            else:
                ops.append(base.Delete(write.service))
        ops += [base.Put(status) for status in self._statuses_to_write()]
        try:
            committed = await self.store.commit(ops, guard=self.settings.guard) if ops else None
        except Conflict as err:
            log.debug("reconcile pass conflicted on %s; deciding again", ", ".join(err.keys[:5]))
            return time.time() + CONFLICT_RETRY
        except StoreUnavailable as err:
            log.warning("cannot write to etcd (%s); trying again", err)
            return time.time() + STORE_RETRY
        if committed is not None:
            for record in committed.written:
                self.mirror.put(record)
            for op in ops:
                if isinstance(op, base.Delete):
                    self._forget(op.record)
        self.actuator.absorbed(set(world.launch_failures))
        self.actuator.submit(plan.actions)
        if self._on_pass is not None:
            self._on_pass(time.perf_counter() - started, plan, world)
        due = [r.next_attempt_at for r in self.mirror.replicas.values()
               if r.phase is ReplicaPhase.FAILED and r.next_attempt_at > world.now]
        # A host whose grace period runs out: its replicas are replaced then, not at the next event.
        holding = {r.host for r in self.mirror.replicas.values()
                   if r.host is not None and r.phase is not ReplicaPhase.STOPPING}
        due += [at for host in holding if (at := world.lost_at(host)) is not None and at > world.now]
        # A start-failing host's mark lifts then (its status is rewritten, placement tries it again).
        due += [at for host in self.mirror.hosts
                if (at := self.start_health.failing_until(host)) is not None and at > world.now]
        # A connecting session's borrowed status ends then (see _status).
        due += [at for session in self.sessions.values()
                if (at := session.started_at + session.heartbeat_timeout) > world.now]
        return min(due) if due else None

    def _forget(self, record: object) -> None:
        assert self.mirror is not None
        if isinstance(record, Replica):
            self.mirror.replicas.pop(record.id, None)
        elif isinstance(record, Service):
            self.mirror.services.pop(record.name, None)

    # -- what a pass reads --------------------------------------------------------------------------

    def _sync_sessions(self) -> None:
        """One session per registered host, at its current address."""
        assert self.mirror is not None
        for host, record in self.mirror.hosts.items():
            session = self.sessions.get(host)
            if session is not None and session.address == record.address:
                continue
            if session is not None:
                asyncio.get_running_loop().create_task(session.close())
            session = AgentSession(host, record.address, credentials=self.settings.credentials,
                                   on_change=self.poke, heartbeat_timeout=self.settings.heartbeat_timeout)
            self.sessions[host] = session
            session.start()
        for host in [h for h in self.sessions if h not in self.mirror.hosts]:
            asyncio.get_running_loop().create_task(self.sessions.pop(host).close())
        self.start_health.forget(set(self.mirror.hosts))

    def _observed(self) -> dict[HostId, HostObservation]:
        return {host: session.observation for host, session in self.sessions.items()}

    def _world(self) -> reconcile.World:
        assert self.mirror is not None
        statuses = {h: self._status(h) for h in self.mirror.hosts}
        return reconcile.World(
            services=dict(self.mirror.services), replicas=dict(self.mirror.replicas),
            hosts={h: self._fresh(r) for h, r in self.mirror.hosts.items()},
            statuses=statuses, observed=self._observed(),
            now=time.time(), busy=frozenset(self.actuator.busy),
            launch_failures=dict(self.actuator.failures), unreachable_since=self._unreachable_since(statuses),
            host_grace=self.settings.host_grace, agent_down_grace=self.settings.agent_down_grace,
            agent_down=frozenset(h for h, s in self.sessions.items() if s.agent_down))

    def _unreachable_since(self, statuses: dict[HostId, HostStatus]) -> dict[HostId, float]:
        """Since when each host this leader cannot follow has been so: from the recorded status change,
        but never before this leader's session to it started — a new leader gives every host the whole
        grace period to be connected to before it moves anything."""
        out: dict[HostId, float] = {}
        for host, status in statuses.items():
            if status.ready:
                continue
            session = self.sessions.get(host)
            started = session.started_at if session is not None else time.time()
            out[host] = max(status.since, started)
        return out

    def _fresh(self, record: HostRecord) -> HostRecord:
        """The host record with the capacity and conditions its agent reported last (each second),
        which are fresher than the registration's (every few seconds)."""
        session = self.sessions.get(record.id)
        info = session.info if session is not None else None
        if info is None:
            return record
        return replace(record, capacity=Capacity(
            cpu_allocatable_millis=info.cpu_allocatable_millis,
            memory_allocatable_bytes=info.memory_allocatable_bytes,
            cpu_committed_millis=info.cpu_committed_millis,
            memory_committed_bytes=info.memory_committed_bytes, disk_free_bytes=info.disk_free_bytes,
        ), conditions=tuple(c.type for c in info.conditions))

    def _status(self, host: HostId) -> HostStatus:
        """Whether the leader trusts this host now (its session follows it completely), and whether it
        keeps failing to start containers."""
        assert self.mirror is not None
        session = self.sessions.get(host)
        known = self.mirror.statuses.get(host) or HostStatus(id=host)
        self.start_health.resume(known)
        obs = session.observation if session is not None else None
        complete = obs is not None and obs.connected and obs.complete
        now = time.time()
        # A session still connecting that has seen nothing wrong yet (a new leader's, every host at once)
        # keeps the recorded status for up to its heartbeat timeout: otherwise every failover would flip
        # every host to not ready for the moment reconnecting takes. The session's error or missed
        # heartbeat ends it (and pokes a pass); nothing is launched meanwhile (reconcile waits for a
        # complete view).
        connecting = (session is not None and not session.error
                      and now - session.started_at < session.heartbeat_timeout)
        ready = complete or (connecting and known.ready)
        reason = "" if ready else (session.error if session is not None and session.error
                                   else "connecting to its agent")
        starts = self.start_health.state(host)
        wanted = dataclasses.replace(
            known, ready=ready, reason=reason, complete=complete,
            since=now if known.ready != ready else known.since,
            start_failures=starts.failures, last_start_failure=starts.last_at,
            start_failure_reason=starts.reason, start_failing=self.start_health.failing(host, now))
        return known if wanted == known else wanted

    def _statuses_to_write(self) -> list[HostStatus]:
        assert self.mirror is not None
        out = []
        for host in self.mirror.hosts:
            status = self._status(host)
            if status != self.mirror.statuses.get(host):
                out.append(status)
        return out

    def _view(self, world: reconcile.World) -> ClusterView:
        counted: dict[HostId, set[ReplicaId]] = {}
        for host, obs in world.observed.items():
            counted[host] = {ReplicaId(cid) for cid, c in obs.containers.items()
                             if c.state is not ContainerState.EXITED}
        return build_view(hosts=world.hosts.values(), statuses=world.statuses,
                          replicas=world.replicas.values(), services=world.services.values(),
                          counted_by_agent=counted)

    # -- for the API --------------------------------------------------------------------------------

    def host_info(self, host: HostId) -> pb.HostInfo | None:
        session = self.sessions.get(host)
        return session.info if session is not None else None

    def host_info_json(self, host: HostId) -> str:
        info = self.host_info(host)
        return json_format.MessageToJson(info, preserving_proto_field_name=True) if info is not None else ""


class _Resync(Exception):
    """The mirror must be rebuilt from a new snapshot (the watch ended or its revision was compacted)."""


__all__ = ["AutoscaleSettings", "Controller", "ControllerSettings", "Mirror", "new_replica_id"]
