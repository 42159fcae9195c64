"""The reconcile step: desired state (etcd) + what the agents report → record writes and agent actions.

``step(world, placer=..., new_id=...)`` is a pure function in the style of Nomad's reconciler: it reads a
``World`` (services, replica records, hosts and their statuses, each host's observed containers, the
time, what is in flight) and returns a ``Plan``. The controller (``scheduler.controller``) commits the
plan's record writes to etcd first (each a compare-and-swap on the revision it read, under the leader's
guard), and only then has the actuator carry out the agent actions, so a leader that dies in between
leaves records the next one acts on, never a container no record knows. Agent actions are idempotent (a
replica's container id is its replica id; create-and-start of an existing container is a no-op), so a
retried or repeated plan never makes a duplicate.

The rules, per service:

* **Absorb** what the hosts report: a replica's phase, readiness, reason and ports follow its container
  (``ObservedContainer.phase``). A failed launch the actuator reported makes it ``failed``. A running
  replica whose container vanished from a complete view of its host is recreated.
* **Abandon** replicas on a host unreachable for longer than ``World.host_grace``: they are marked
  stopping (so the count below replaces them elsewhere) and their containers retired when the host is
  back — unless more than ``World.max_lost_share`` of the hosts (in a cluster of ``MASS_LOSS_MIN_HOSTS``
  or more) are lost at once. Then the leader more likely lost its own view (its network, or a loop too
  loaded to hear its hosts) than half the machines died, and replacing would only pile their replicas
  onto the few hosts it still hears: nothing is abandoned, and ``Plan.lost_held`` says how many lost
  hosts were held (Kubernetes' node lifecycle controller stops evicting in a full disruption too). The
  share is of the hosts that hold replicas: hosts never reached yet (a fleet joining) hold nothing.
  Before ``World.lost_from`` no host counts as lost (the controller gathers a mass failure's hosts).
* **Count**: ``live`` replicas are those not stopping; *condemned* ones run an old template or sit on a
  draining host; the rest are *kept*. Missing kept replicas are created (``pending``) — during a rollout or
  a drain only up to ``replicas + max_surge`` live ones; surplus kept replicas are stopped in the
  placer's removal order (pending, failed, not ready first, then from the most crowded topology domain
  and host, so what is left stays spread).
* **Retire condemned replicas** once it keeps availability: not-ready ones at once, ready ones while at
  least ``replicas - max_unavailable`` stay ready. New ones come up before old ones stop.
* **Place** pending replicas in one batch per service (``Placer``); those that fit nowhere keep a reason
  ("0/3 hosts: 2 insufficient memory, 1 cordoned"). With ``World.place_budget`` a step hands at most
  about that many replicas to the placer (a service begun is placed whole) and leaves the rest pending
  for the next step, which starts after the last service placed (``Plan.placed_through``): a pass
  placing 30,000 replicas held the leader's loop for 5 s, its agent sessions unheard meanwhile. The
  replicas a service lacks are created by the step that places them, not before.
* **Drive**: a starting replica with no container on its (connected, completely listed) host is launched;
  a failed one is relaunched after its backoff when its restart policy allows — on the same host, unless
  that host keeps failing to start containers (``HostStatus.start_failing``): then it goes back to
  pending and is placed elsewhere; a stopping one has its container retired, and its record is dropped
  once the host no longer has it.
* **Delete**: a service being deleted has every replica stopped, and goes when the last record does.

Per host: a container carrying Shoal's service label that no replica on that host owns is retired — only
from a complete view, so a host just reconnecting is never cleared by mistake.

**A scoped step.** ``World.scope`` (None: everything) names the services whose rules run and the hosts
whose containers are checked for orphans; the controller fills it with what changed since its last pass
(``scheduler.controller``). For a service in scope the step decides exactly what a step over everything
would, provided every service out of scope has nothing pending (placement order across services is the
only thing services share); hosts whose replicas this step moves or drops are checked for orphans too.
``World.by_service`` may carry the replicas of each service, kept by the caller, so that a scoped step
costs what its scope holds, not what the cluster holds.

**What the hosts report, alone.** ``record_observed`` is the absorb rule by itself, for given replicas:
the controller records replicas that started while a pass's writes are still in flight, and what was
heard between passes as the next one begins, rather than in a later pass. It decides nothing a step
would not: a step that follows finds them as recorded.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from scheduler.evolve import evolve
from scheduler.model import (
    Decision,
    HostAdmin,
    HostId,
    HostRecord,
    HostStatus,
    Replica,
    ReplicaId,
    ReplicaPhase,
    Service,
    ServiceName,
)
from scheduler.observed import ContainerState, Health, HostObservation, ObservedContainer

MAX_DECISIONS = 10
HOST_GRACE = 3.0     # seconds a host may be unreachable before its replicas are replaced elsewhere
AGENT_DOWN_GRACE = 30.0  # the same when the host answers but its agent does not (a restart, most likely)
MAX_LOST_SHARE = 0.5     # more of the hosts than this lost at once: none of their replicas is replaced ...
MASS_LOSS_MIN_HOSTS = 10  # ... in a cluster this large (in a smaller one, a share is one or two hosts)
BACKOFF_BASE = 1.0   # seconds before the first relaunch of a failed replica
BACKOFF_CAP = 60.0
_RUNNING = "running"  # the reason ObservedContainer.phase gives a running container without health check


# -- inputs -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LaunchFailure:
    """The actuator could not launch a replica (no container resulted: e.g. the image could not be
    pulled); the next step makes it ``failed`` with this reason."""

    reason: str
    at: float


@dataclass(frozen=True)
class Scope:
    """What a step looks at: the services whose rules run; the hosts whose every container is checked for
    orphans, and (host, container id) pairs checked alone."""

    services: frozenset[ServiceName] = frozenset()
    hosts: frozenset[HostId] = frozenset()
    containers: frozenset[tuple[HostId, str]] = frozenset()


@dataclass(frozen=True)
class World:
    services: Mapping[ServiceName, Service]
    # Read only during the step, which never changes it: it may be the caller's own (the leader's mirror
    # for a scoped pass), changed after the step returns.
    replicas: Mapping[ReplicaId, Replica]
    hosts: Mapping[HostId, HostRecord]
    statuses: Mapping[HostId, HostStatus]
    observed: Mapping[HostId, HostObservation]
    now: float
    busy: frozenset[str] = frozenset()  # container ids with an agent action in flight
    launch_failures: Mapping[ReplicaId, LaunchFailure] = field(default_factory=dict)
    # Since when this leader has found each host unreachable (hosts it can reach are absent), and how
    # long that may last before the host's replicas are replaced elsewhere.
    unreachable_since: Mapping[HostId, float] = field(default_factory=dict)
    host_grace: float = HOST_GRACE
    # Hosts that refuse connections: the host is up, its agent is not (restarting, most likely, with its
    # containers still running under the supervisor); they get the longer grace.
    agent_down: frozenset[HostId] = frozenset()
    agent_down_grace: float = AGENT_DOWN_GRACE
    max_lost_share: float = MAX_LOST_SHARE  # 1: replace whatever is lost, however much
    # No host counts as lost before this time: the leader gathers hosts whose graces end close together
    # into one pass (``scheduler.controller``; 0: nothing gathered).
    lost_from: float = 0.0
    # The replica ids of each service, when the caller keeps them (None: the step groups ``replicas``).
    # Must hold exactly the ids in ``replicas``; read only during the step.
    by_service: Mapping[ServiceName, Collection[ReplicaId]] | None = None
    scope: Scope | None = None  # None: every service and every host
    # Of a scoped step: the replicas of each service that the last step found settled (see ``step``) and
    # that nothing the caller knows of has changed since (their records, their containers, their hosts
    # wholly, their service's record). Counted without a look; the step itself still looks at those that
    # are busy or on a host now lost or draining, so a stale entry costs a look, never a missed rule.
    settled: Mapping[ServiceName, AbstractSet[ReplicaId]] | None = None
    # The replica ids on each host (the caller's index, read only during the step): needed with
    # ``settled``, to find those on hosts lost or draining.
    by_host: Mapping[HostId, Collection[ReplicaId]] | None = None
    # At most this many pending replicas are handed to the placer in one step (None: all), the services
    # taken in name order from the one after ``place_from``; a service is placed whole once begun.
    place_budget: int | None = None
    place_from: ServiceName | None = None
    # The hosts being drained (None: found from ``hosts``), when the caller keeps them.
    draining: AbstractSet[HostId] | None = None

    def grace(self, host: HostId) -> float:
        return self.agent_down_grace if host in self.agent_down else self.host_grace

    def lost(self, host: HostId | None) -> bool:
        """Whether ``host`` has been unreachable for longer than its grace period."""
        at = self.lost_at(host) if host is not None else None
        return at is not None and self.now >= max(at, self.lost_from)

    def lost_at(self, host: HostId) -> float | None:
        """When ``host`` will count as lost, if it is unreachable."""
        since = self.unreachable_since.get(host)
        return None if since is None else since + self.grace(host)


class Placer(Protocol):
    """Places replicas of one service; remembers what it placed within one step (its accounting)."""

    def place(self, service: Service,
              replicas: Sequence[Replica]) -> Mapping[ReplicaId, tuple[HostId | None, str]]:
        """Per replica: the chosen host (None: none fits) and a summary for a person."""

    def removal_order(self, replicas: Sequence[Replica]) -> Sequence[Replica]:
        """``replicas`` in the order a scale-down removes them (least useful and most crowded first)."""


# -- outputs ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WriteReplica:
    replica: Replica          # its ``revision`` is the one read (0: a new record)


@dataclass(frozen=True)
class DropReplica:
    replica: Replica


@dataclass(frozen=True)
class DropService:
    service: Service


@dataclass(frozen=True)
class Launch:
    """Create and start the replica's container on its host (idempotent); ``replace`` removes an
    existing container of that id first (a failed one being relaunched)."""

    host: HostId
    replica: ReplicaId
    service: ServiceName
    generation: int
    replace: bool = False


@dataclass(frozen=True)
class Retire:
    """Stop and remove a container (a missing one is fine)."""

    host: HostId
    container: str
    reason: str


RecordWrite = WriteReplica | DropReplica | DropService
AgentAction = Launch | Retire


@dataclass(frozen=True)
class Plan:
    writes: tuple[RecordWrite, ...] = ()
    actions: tuple[AgentAction, ...] = ()
    # The budget ran out with replicas still pending: the next step should follow at once, placing from
    # the service after ``placed_through``, and look at ``waiting`` (services with replicas to create or
    # place: a scoped step must include them, as nothing else may have changed about them).
    deferred: bool = False
    waiting: frozenset[ServiceName] = frozenset()
    placed_through: ServiceName | None = None
    # Lost hosts whose replicas were not replaced because too many were lost at once (``max_lost_share``).
    lost_held: int = 0
    lost_among: int = 0  # ... of this many hosts holding replicas
    # Lost hosts whose replicas this step marked stopping to be replaced elsewhere: how many of each.
    abandoned: Mapping[HostId, int] = field(default_factory=dict)
    # The replicas of each service this step looked at that it found settled: ``World.settled`` for the
    # next step, once what changed since is taken out.
    settled: Mapping[ServiceName, frozenset[ReplicaId]] = field(default_factory=dict)
    # The replicas this step placed that had no host before it (their wait: the placement metric).
    placed: frozenset[ReplicaId] = frozenset()

    @property
    def empty(self) -> bool:
        return not self.writes and not self.actions


def backoff(restarts: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_BASE * float(1 << min(restarts, 16)))


def with_decision(replica: Replica, *, now: float, action: str, reason: str) -> Replica:
    decisions = (*replica.decisions, Decision(time=now, action=action, reason=reason))[-MAX_DECISIONS:]
    return evolve(replica, decisions=decisions)


# -- the step -----------------------------------------------------------------------------------------

class _Latest(dict[ReplicaId, Replica]):
    """The replicas a step replaced, over those it read (``World.replicas``), which answer for the rest.
    A copy of the 100,000 read was a third of a scoped pass that decides little at 5,000 hosts, with
    the copy's freeing after it (docs/scaling.md, part 36)."""

    __slots__ = ("_read",)

    def __init__(self, read: Mapping[ReplicaId, Replica]) -> None:
        super().__init__()
        self._read = read

    def __missing__(self, rid: ReplicaId) -> Replica:
        return self._read[rid]

    def get(self, rid: ReplicaId, default: Any = None) -> Any:
        if (replica := dict.get(self, rid)) is not None:
            return replica
        return self._read.get(rid, default)


class _Plan:
    """The plan being built: the current version of each replica, and what changed."""

    def __init__(self, world: World) -> None:
        self.world = world
        # A full step reads every replica (a copy is cheaper than reading through); a scoped one few.
        self.replicas: dict[ReplicaId, Replica] = dict(world.replicas) if world.scope is None \
            else _Latest(world.replicas)
        self.updated: dict[ReplicaId, None] = {}  # replaced by the step, in order
        self.dropped: set[ReplicaId] = set()
        self.writes: list[RecordWrite] = []
        self.actions: list[AgentAction] = []
        # Asked of nearly every replica: answered once per step.
        self.lost = frozenset(h for h in world.unreachable_since if world.lost(h))
        self.lost_held = self.lost_among = 0
        self.abandoned: dict[HostId, int] = {}
        if mass_loss(len(self.lost), len(world.hosts), world.max_lost_share):
            # Counted among the hosts that hold replicas: a fleet of thousands joining at once has more
            # than half its hosts still being reached for the first time past the grace, with nothing on
            # them to lose or to pile elsewhere (docs/scaling.md, part 10). Walked only in this case.
            holding = {r.host for r in world.replicas.values() if r.host is not None} & world.hosts.keys()
            lost = self.lost & holding
            if mass_loss(len(lost), len(holding), world.max_lost_share):
                self.lost_held, self.lost_among, self.lost = len(lost), len(holding), frozenset()
        self.draining = frozenset(h for h, r in world.hosts.items() if r.admin is HostAdmin.DRAINING) \
            if world.draining is None else frozenset(world.draining)
        self.attempted = 0                               # pending replicas handed to the placer
        self.deferred = False
        self.waiting: set[ServiceName] = set()
        self.placed_through: ServiceName | None = None
        self.settled: dict[ServiceName, frozenset[ReplicaId]] = {}
        self.placed: set[ReplicaId] = set()

    def may_place(self) -> bool:
        budget = self.world.place_budget
        return budget is None or self.attempted < budget

    def update(self, replica: Replica) -> Replica:
        self.replicas[replica.id] = replica
        self.updated[replica.id] = None
        return replica

    def moved_off(self) -> set[tuple[HostId, str]]:
        """(host, replica id) for each replica this step moved or dropped off a host: its container there
        may have no owner now."""
        out: set[tuple[HostId, str]] = set()
        for rid in (*self.updated, *self.dropped):
            original = self.world.replicas.get(rid)
            if original is not None and original.host is not None and (
                    rid in self.dropped or self.replicas[rid].host != original.host):
                out.add((original.host, rid))
        return out

    def build(self) -> Plan:
        # Only replicas the step replaced can differ from what was read.
        for rid in self.updated:
            if rid in self.dropped:
                continue
            replica = self.replicas[rid]
            original = self.world.replicas.get(rid)
            if original is None or _changed(original, replica):
                self.writes.append(WriteReplica(evolve(replica, updated_at=self.world.now)))
        return Plan(writes=tuple(self.writes), actions=tuple(self.actions), deferred=self.deferred,
                    waiting=frozenset(self.waiting),
                    placed_through=self.placed_through, lost_held=self.lost_held,
                    lost_among=self.lost_among, abandoned=self.abandoned, settled=self.settled,
                    placed=frozenset(self.placed))


def mass_loss(lost: int, hosts: int, max_share: float) -> bool:
    """Whether ``lost`` of ``hosts`` is too many to replace (see the module docstring)."""
    return hosts >= MASS_LOSS_MIN_HOSTS and lost > max_share * hosts


# What makes a replica worth writing: every field but the time of its last write. Compared field by
# field, without copies: a pass looks at every replica, and two ``replace`` copies per replica to compare
# them were a third of a settled pass (docs/scaling.md).
_WRITTEN_FIELDS = tuple(f.name for f in fields(Replica) if f.name != "updated_at")


def _changed(before: Replica, after: Replica) -> bool:
    return before is not after and any(getattr(before, name) != getattr(after, name)
                                       for name in _WRITTEN_FIELDS)


def step(world: World, *, placer: Placer, new_id: Callable[[ServiceName], ReplicaId]) -> Plan:
    plan = _Plan(world)
    by_service = world.by_service if world.by_service is not None else _by_service(world.replicas)
    scope = world.scope
    names = world.services.keys() if scope is None else scope.services & world.services.keys()
    observed, busy, replicas = world.observed, world.busy, plan.replicas
    ordered = sorted(names)
    if world.place_from is not None:  # placing resumes where the budget ran out last time
        cut = bisect.bisect_right(ordered, world.place_from)
        ordered = ordered[cut:] + ordered[:cut]
    lost, draining = plan.lost, plan.draining
    known_all = world.settled if scope is not None else None
    unsure: frozenset[str] = busy
    if known_all and world.by_host is not None and (lost or draining):
        unsure = busy.union(*(world.by_host.get(h, ()) for h in lost | draining))
    for name in ordered:
        service = world.services[name]
        members = by_service.get(name, ())
        generation = service.template_generation
        # The replicas the rules below look at one by one. The others are *settled*: running as
        # recorded, ready, of the current template, on a host neither lost nor draining, with nothing in
        # flight. No rule changes a settled replica but a scale-down, so they are only counted: a mass
        # failure's passes have 87 % of the services in scope and nearly all of their replicas settled
        # (docs/scaling.md, part 21). Those the last step found settled, with nothing changed since
        # (``World.settled``), are not even looked at.
        known: AbstractSet[ReplicaId] = frozenset()
        ids: list[ReplicaId]
        if known_all and (last := known_all.get(name)):
            member_set = _as_set(members)
            known = (last & member_set) - unsure
            ids = sorted(member_set - known)
        else:
            ids = sorted(members)
        rest: list[ReplicaId] = []
        found: list[ReplicaId] = []
        for rid in ids:
            r = replicas[rid]
            # _absorb's first answer, inline: a full pass asks it of every replica, and nearly every one
            # is running as recorded (ObservedContainer.phase gives "running" without a health check).
            if r.phase is ReplicaPhase.RUNNING and r.ready and rid not in busy \
                    and (obs := observed.get(r.host)) is not None:  # type: ignore[arg-type]
                c = obs.containers.get(rid)
                if c is not None and c.state is ContainerState.RUNNING and c.health is Health.NONE \
                        and r.reason == _RUNNING and c.ports == r.ports:
                    if r.generation != generation or r.host in lost or r.host in draining:
                        rest.append(rid)
                    else:
                        found.append(rid)
                    continue
            rest.append(rid)
            _absorb(plan, r)
        settled = len(known) + len(found)
        scaled_down = False
        if service.deleting:
            rest = sorted(members)
            _delete(plan, service, rest)
        else:
            _abandon_lost(plan, rest)
            placing = plan.may_place()
            created, scaled_down = _count(plan, service, members, rest, settled, new_id=new_id, placer=placer,
                                          create=placing)
            rest = (sorted(members) if scaled_down else rest) + created
            if placing:
                _place(plan, service, rest, placer)
            elif _pending(plan, rest):
                plan.deferred = True
                plan.waiting.add(name)
        _drive(plan, service, rest)
        if not service.deleting:
            now_settled = frozenset(found).union(known)
            plan.settled[name] = now_settled.difference(plan.updated) if scaled_down else now_settled
    for name in sorted(by_service):
        if name not in world.services and (scope is None or name in scope.services):
            ids = sorted(by_service[name])
            for rid in ids:  # a service deleted outright: its replicas go too
                _stop(plan, plan.replicas[rid], why="its service no longer exists")
            _drive(plan, None, ids)
    if scope is None:
        _orphans(plan, None, set())
    else:
        _orphans(plan, scope.hosts, scope.containers | plan.moved_off())
    return plan.build()


def _as_set(ids: Collection[ReplicaId]) -> AbstractSet[ReplicaId]:
    return ids if isinstance(ids, AbstractSet) else set(ids)


def _by_service(replicas: Mapping[ReplicaId, Replica]) -> dict[ServiceName, list[ReplicaId]]:
    out: dict[ServiceName, list[ReplicaId]] = {}
    for replica in replicas.values():
        out.setdefault(replica.service, []).append(replica.id)
    return out


def _observed(world: World, host: HostId | None) -> HostObservation | None:
    return world.observed.get(host) if host is not None else None


def _absorb(plan: _Plan, r: Replica) -> None:
    world, now = plan.world, plan.world.now
    if r.phase is ReplicaPhase.STOPPING or r.host is None or r.id in world.busy:
        return  # (an action in flight: its outcome is observed once it returns)
    obs = world.observed.get(r.host)
    container = obs.containers.get(r.id) if obs is not None else None
    if container is not None:
        updated = _as_observed(r, container, now)
        if updated is not None:
            plan.update(updated)
        return
    failure = world.launch_failures.get(r.id)
    if failure is not None and r.phase is ReplicaPhase.STARTING:
        updated = evolve(r, phase=ReplicaPhase.FAILED, ready=False, reason=failure.reason,
                          next_attempt_at=now + backoff(r.restarts))
        plan.update(with_decision(updated, now=now, action="failed", reason=failure.reason))
        return
    if (r.phase is ReplicaPhase.RUNNING and obs is not None and obs.connected and obs.complete
            and r.id not in world.busy):
        why = "its container was removed from the host; recreating it"
        updated = evolve(r, phase=ReplicaPhase.STARTING, ready=False, reason=why, restarts=r.restarts + 1)
        plan.update(with_decision(updated, now=now, action="recreated", reason=why))


def _as_observed(r: Replica, container: ObservedContainer, now: float) -> Replica | None:
    """``r`` as its container on its host shows it, or None when that is as recorded."""
    if (container.state is ContainerState.RUNNING and container.health is Health.NONE
            and r.phase is ReplicaPhase.RUNNING and r.ready and r.reason == _RUNNING
            and container.ports == r.ports):
        return None  # running as recorded, what nearly every replica is on every full pass (phase() says so)
    phase, reason = container.phase()
    if (phase, container.ready, reason, container.ports) == (r.phase, r.ready, r.reason, r.ports):
        return None  # as recorded (most replicas, most passes): no copy to make and compare
    updated = evolve(r, phase=phase, ready=container.ready, reason=reason, ports=container.ports)
    if phase is not r.phase:
        if phase is ReplicaPhase.FAILED:
            updated = evolve(updated, next_attempt_at=now + backoff(r.restarts))
        updated = with_decision(updated, now=now, action=phase.value, reason=reason)
    return updated


def record_observed(replicas: Iterable[Replica], observed: Mapping[HostId, HostObservation], *,
                    busy: Collection[str], now: float) -> tuple[WriteReplica, ...]:
    """Only what the hosts report of ``replicas``: each one whose container on its host shows another
    phase, readiness, reason or ports than its record, written as the container shows it. This is the
    part of ``step`` that needs nothing but the replica and its container (``_absorb``): nothing is placed,
    launched or removed, and a replica with an action in flight, stopping, or with no container seen on
    its host is left to the next step. The controller runs it while a pass's writes are in flight, so
    that a replacement which started is recorded running without waiting for the next pass
    (docs/scaling.md, part 17)."""
    out: list[WriteReplica] = []
    for r in replicas:
        if r.phase is ReplicaPhase.STOPPING or r.host is None or r.id in busy:
            continue
        obs = observed.get(r.host)
        container = obs.containers.get(r.id) if obs is not None else None
        if container is not None and (updated := _as_observed(r, container, now)) is not None:
            out.append(WriteReplica(evolve(updated, updated_at=now)))
    return tuple(out)


def _abandon_lost(plan: _Plan, ids: Sequence[ReplicaId]) -> None:
    """Replicas on a host unreachable for longer than the grace period stop counting: they are marked
    stopping, so replacements are placed elsewhere, and their containers are retired once the host is
    reachable again (``_drive``), so a healed partition never leaves two copies running."""
    world, lost = plan.world, plan.lost
    if not lost:
        return
    for rid in ids:
        r = plan.replicas[rid]
        if r.phase is ReplicaPhase.STOPPING or r.host not in lost:
            continue
        assert r.host is not None
        record = world.hosts.get(r.host)
        name = record.name if record is not None and record.name else r.host
        since = world.unreachable_since[r.host]
        what = "its agent has not answered" if r.host in world.agent_down else "it has been unreachable"
        _stop(plan, r, why=f"its host {name}: {what} for {world.now - since:.1f} s "
                           f"(grace {world.grace(r.host):g} s): replaced elsewhere")
        plan.abandoned[r.host] = plan.abandoned.get(r.host, 0) + 1


def _live(plan: _Plan, ids: Sequence[ReplicaId]) -> list[Replica]:
    return [plan.replicas[rid] for rid in ids
            if rid not in plan.dropped and plan.replicas[rid].phase is not ReplicaPhase.STOPPING]


def _draining(plan: _Plan, host: HostId | None) -> bool:
    return host in plan.draining


def _usefulness(r: Replica) -> tuple[int, int, float]:
    """Sort key: least useful first (pending, failed, starting, not ready, newest)."""
    rank = {ReplicaPhase.PENDING: 0, ReplicaPhase.FAILED: 1, ReplicaPhase.STARTING: 2}.get(r.phase, 3)
    return rank, int(r.ready), -r.created_at


def _count(plan: _Plan, service: Service, members: Collection[ReplicaId], rest: Sequence[ReplicaId],
           settled: int, *, new_id: Callable[[ServiceName], ReplicaId], placer: Placer,
           create: bool) -> tuple[list[ReplicaId], bool]:
    """Replicas created for what the service lacks (``create``: else it is left to the step that places
    them, and this one is deferred), scaled down, or retired for a rolling update or a drain.
    ``members``: the service's replicas; ``rest``: those of them that are not settled (``step``); the
    other ``settled`` are live, kept and ready. Returns the replicas created, and whether it scaled down
    (which may have stopped settled replicas)."""
    now, spec = plan.world.now, service.spec
    live = _live(plan, rest)
    generation, draining = service.template_generation, plan.draining
    condemned = [r for r in live if r.generation != generation or r.host in draining]
    n_kept = settled + len(live) - len(condemned)
    n_live = settled + len(live)
    desired = spec.replicas
    # Percentages resolved against the desired count; both 0 would never progress, so that means one
    # unavailable (Kubernetes' rule, in UpdatePolicy.counts).
    surge, unavailable = spec.update.counts(desired)
    created: list[ReplicaId] = []
    scaled_down = False
    if n_kept < desired:
        room = desired + surge - n_live if condemned else desired - n_kept
        if not create and room > 0:
            # Over the placement budget: created by the step that places them, one write each. Written
            # here as pending and placed later, they were two (at 100,000 replicas, a fifth of every
            # write of the placement: docs/scaling.md, part 11).
            plan.deferred = True
            plan.waiting.add(service.name)
            room = 0
        for _ in range(max(0, min(desired - n_kept, room))):
            rid = new_id(service.name)
            replica = Replica(id=rid, service=service.name, generation=service.template_generation,
                              created_at=now, updated_at=now, reason="waiting to be placed")
            plan.update(with_decision(replica, now=now, action="created",
                                      reason=f"the service wants {desired} replicas"))
            created.append(rid)
    elif n_kept > desired:
        # The placer's order: not ready before ready, then from the most crowded domain and host, so
        # what is left stays spread (kube's ReplicaSet rule).
        kept = [r for r in _live(plan, sorted(members))
                if r.generation == generation and r.host not in draining]
        for r in list(placer.removal_order(kept))[: n_kept - desired]:
            _stop(plan, r, why=f"scaled down to {desired} replicas")
        scaled_down = True
    available = settled + sum(r.ready for r in live)
    floor = max(0, desired - unavailable)
    for r in sorted(condemned, key=_usefulness):
        why = ("its host is being drained" if _draining(plan, r.host)
               else f"rolling update to generation {service.template_generation}")
        if not r.ready:
            _stop(plan, r, why=why)
        elif available - 1 >= floor:
            _stop(plan, r, why=why)
            available -= 1
    return created, scaled_down


def _stop(plan: _Plan, r: Replica, *, why: str) -> None:
    if r.phase is ReplicaPhase.STOPPING:
        return
    updated = evolve(r, phase=ReplicaPhase.STOPPING, ready=False, reason=why)
    plan.update(with_decision(updated, now=plan.world.now, action="stopping", reason=why))


def _pending(plan: _Plan, ids: Sequence[ReplicaId]) -> list[Replica]:
    return [plan.replicas[rid] for rid in ids
            if rid not in plan.dropped and plan.replicas[rid].phase is ReplicaPhase.PENDING]


def _place(plan: _Plan, service: Service, ids: Sequence[ReplicaId], placer: Placer) -> None:
    pending = _pending(plan, ids)
    if not pending:
        return
    plan.attempted += len(pending)
    plan.placed_through = service.name
    now = plan.world.now
    for rid, (host, summary) in placer.place(service, pending).items():
        r = plan.replicas[rid]
        if host is None:
            if r.reason != summary:
                plan.update(with_decision(evolve(r, reason=summary), now=now, action="pending",
                                          reason=summary))
            continue
        name = plan.world.hosts[host].name if host in plan.world.hosts else host
        if r.host is None:
            plan.placed.add(rid)
        updated = evolve(r, host=host, phase=ReplicaPhase.STARTING, reason=f"placed on {name}")
        plan.update(with_decision(updated, now=now, action="placed", reason=f"on {name}: {summary}"))


def _replaceable(service: Service | None, r: Replica) -> bool:
    """Whether a failed replica is relaunched, by its template's restart policy."""
    if service is None or service.deleting:
        return False
    mode = service.spec.facts.restart
    if mode == "always":
        return True
    if mode == "on-failure":
        return not r.reason.startswith("exited 0 ")
    return False


def _drive(plan: _Plan, service: Service | None, ids: Sequence[ReplicaId]) -> None:
    world, now = plan.world, plan.world.now
    for rid in ids:
        if rid in plan.dropped or rid in world.busy:
            continue
        r = plan.replicas[rid]
        if r.phase is ReplicaPhase.RUNNING or r.phase is ReplicaPhase.PENDING:
            continue  # nothing to drive: running (a vanished container was handled by _absorb) or unplaced
        obs = _observed(world, r.host)
        if r.phase is ReplicaPhase.STOPPING:
            if r.host is None or r.host not in world.hosts:
                _drop(plan, r)
            elif obs is not None and obs.connected:
                container = obs.replica_container(r.id)
                if container is not None:
                    plan.actions.append(Retire(host=r.host, container=r.id, reason=r.reason))
                elif obs.complete:
                    _drop(plan, r)
            continue
        if r.host is None or obs is None or not obs.connected:
            continue
        container = obs.replica_container(r.id)
        if r.phase is ReplicaPhase.STARTING and (
                (container is None and obs.complete)
                or (container is not None and container.state is ContainerState.CREATED)):
            plan.actions.append(Launch(host=r.host, replica=r.id, service=r.service,
                                       generation=r.generation))
        elif r.phase is ReplicaPhase.FAILED and now >= r.next_attempt_at and _replaceable(service, r):
            status = world.statuses.get(r.host)
            if status is not None and status.start_failing:
                _move_off(plan, r, status)
                continue
            why = f"relaunching after: {r.reason}"
            updated = evolve(r, phase=ReplicaPhase.STARTING, ready=False, restarts=r.restarts + 1,
                              reason=why)
            plan.update(with_decision(updated, now=now, action="relaunched", reason=why))
            plan.actions.append(Launch(host=r.host, replica=r.id, service=r.service, generation=r.generation,
                                       replace=container is not None))


def _move_off(plan: _Plan, r: Replica, status: HostStatus) -> None:
    """A failed replica on a host that keeps failing to start containers goes back to pending, to be
    placed elsewhere; its container there (if any) no longer has an owner and is retired (``_orphans``)."""
    assert r.host is not None
    record = plan.world.hosts.get(r.host)
    name = record.name if record is not None and record.name else r.host
    why = (f"its host {name} keeps failing to start containers ({status.start_failures} in a row, "
           f"last: {status.start_failure_reason}); placing it again")
    updated = evolve(r, phase=ReplicaPhase.PENDING, host=None, ready=False, ports=(),
                      restarts=r.restarts + 1, reason=why)
    plan.update(with_decision(updated, now=plan.world.now, action="rescheduled", reason=why))


def _drop(plan: _Plan, r: Replica) -> None:
    plan.dropped.add(r.id)
    if r.id in plan.world.replicas:
        plan.writes.append(DropReplica(plan.world.replicas[r.id]))


def _delete(plan: _Plan, service: Service, ids: Sequence[ReplicaId]) -> None:
    for rid in ids:
        _stop(plan, plan.replicas[rid], why="the service is being deleted")
    if not ids:
        plan.writes.append(DropService(service))


def _orphans(plan: _Plan, hosts: Collection[HostId] | None,
             containers: Collection[tuple[HostId, str]]) -> None:
    """Retire containers no replica on their host owns: every container on ``hosts`` (None: every host),
    and those of ``containers`` ((host, container id)) elsewhere. Checking every container of each host
    a change touched was a large part of the pass after a mass failure's marking pass: 2,100 hosts of
    about 20 containers each, for the 4,000 replicas that pass wrote."""
    world = plan.world
    by_host: dict[HostId, set[str] | None] = dict.fromkeys(world.observed if hosts is None else hosts)
    for host, cid in containers:
        if host not in by_host:
            by_host[host] = {cid}
        elif (only := by_host[host]) is not None:
            only.add(cid)
    for host in sorted(by_host):
        obs = world.observed.get(host)
        if obs is None or not (obs.connected and obs.complete):
            continue
        only = by_host[host]
        found = obs.containers.items() if only is None else [
            (cid, c) for cid in only if (c := obs.containers.get(cid)) is not None]
        orphans = []
        for cid, container in found:
            if container.service is None or cid in world.busy:
                continue
            owner = plan.replicas.get(ReplicaId(cid))
            if owner is None or owner.host != host or cid in plan.dropped:
                orphans.append(cid)
        plan.actions.extend(Retire(host=host, container=cid, reason="no replica on this host owns it")
                            for cid in sorted(orphans))


__all__ = [
    "AGENT_DOWN_GRACE", "BACKOFF_BASE", "BACKOFF_CAP", "HOST_GRACE", "MAX_DECISIONS", "AgentAction",
    "DropReplica", "DropService", "Launch", "LaunchFailure", "Placer", "Plan", "RecordWrite", "Retire",
    "Scope", "World", "WriteReplica", "backoff", "record_observed", "step", "with_decision",
]
