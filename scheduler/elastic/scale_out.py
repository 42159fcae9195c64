"""Scale-out: which pending replicas want hosts, how many hosts of a group's shape would place them, and
whether to ask for them now.

**Which replicas count.** A replica counts for a group once it has been pending, without a host, for at
least the group's ``pending_for``. A replica records when it became pending in its decisions (newest
last): it was ``created`` (or ``rescheduled`` off a host that keeps failing), and while it stays pending
only ``pending`` decisions follow (one per change of its pending summary). So it has been pending since
its latest decision that is not ``pending``; when the bounded list holds only ``pending`` ones, since the
oldest of them (a lower bound on the time pending, so a replica never counts early); without decisions,
since ``created_at``.

Whether a replica lacks *room* is not read from its pending summary but simulated, with the same view
and plugins placement uses (``scheduler.placement``): first every pending replica is placed on the
cluster as it is (``Simulation``); those that fit are only waiting for the next reconcile pass and never
count, and their placements are kept, so the room they take is not offered twice. The others are
offered to hypothetical hosts of the group's shape: a replica only some constraint keeps off every host
counts only if the shape's labels satisfy it.

**How many hosts.** Per group, the hypothetical hosts are first the hosts already asked for and not yet
joined (``expected_hosts``), then ``k`` new ones; ``k`` is the fewest that place as many replicas as the
most the limits allow (``max_per_request``, and ``max`` - members - expected). More hosts place at least
as many replicas, so a binary search finds ``k`` in about log2(max_per_request) simulations. A replica that
would still fit no host of the shape (too big, a constraint the labels do not meet) asks for nothing.
The replicas a group's hypothetical hosts take are that group's ``pending_replicas`` and are not offered
to the next group (groups go in name order).

**Whether to ask now** (``decide``): not while the hosts already expected take every counted replica
(a retried or repeated step never buys twice); not within the group's cooldown of its last request
(decision ``wait``, once); not beyond ``max`` (decision ``at_max`` when one more host would have placed
more). Otherwise a ``scale_out`` request for ``k`` hosts.

**Expected hosts** are derived, never counted down by hand: the group's ``scale_out`` requests younger
than ``provision_timeout`` ask for their ``count``; each member host whose first registration
(``HostRecord.registered_at``) came at or after a request's time fills one host of the oldest such
request still short (first come, first served), and is recorded in that request's ``hosts``
(``attributed``), so a host that leaves again (scaled in, removed) keeps its place: a request's hosts are
expected once, and a later request's hosts are never credited to an earlier one whose hosts left. What is
still short is expected, until the latest of those requests' timeouts. This is a function of the stored
requests and the members, so it survives a failover, and a host that joins on its own (an operator's)
simply counts as one that was asked for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from scheduler import model
from scheduler.elastic.decisions import count_text, duration_text, time_text
from scheduler.model import (
    GroupName,
    HostGroupSpec,
    HostId,
    HostRecord,
    HostShape,
    HostStatus,
    ProviderRequest,
    ProviderRequestKind,
    Replica,
    ReplicaId,
    ReplicaPhase,
    Service,
    ServiceName,
)
from scheduler.placement import batch
from scheduler.placement.framework import PlacementRequest, Profile, request_for
from scheduler.placement.view import ClusterView, HostView, build_view


def pending_since(replica: Replica) -> float:
    """When the replica last became pending (see the module doc)."""
    decisions = replica.decisions
    for decision in reversed(decisions):
        if decision.action != "pending":
            return decision.time
    return decisions[0].time if decisions else replica.created_at


@dataclass(frozen=True)
class Waiting:
    """A pending replica that fits no host of the cluster as it is, and since when it has been pending."""

    replica: Replica
    since: float


@dataclass(frozen=True)
class Expected:
    """Hosts asked for and not joined yet, and until when the last of them is still expected."""

    hosts: int = 0
    until: float = 0.0


def attributed(requests: Sequence[ProviderRequest], member_hosts: Iterable[HostRecord], *,
               provision_timeout: float, now: float) -> tuple[ProviderRequest, ...]:
    """``requests`` with each member host not yet named by a ``scale_out`` request recorded in the
    ``hosts`` of the oldest one younger than ``provision_timeout``, made before the host first registered
    and still short (see the module doc); hosts already named stay named, whether still members or not."""
    named = {h for r in requests if r.kind is ProviderRequestKind.SCALE_OUT for h in r.hosts}
    out = list(requests)
    window = sorted((i for i, r in enumerate(out)
                     if r.kind is ProviderRequestKind.SCALE_OUT and now < r.created_at + provision_timeout),
                    key=lambda i: (out[i].created_at, out[i].id))
    for member in sorted((m for m in member_hosts if m.id not in named),
                         key=lambda m: (m.registered_at, m.id)):
        for i in window:
            request = out[i]
            if request.created_at <= member.registered_at and len(request.hosts) < request.count:
                out[i] = replace(request, hosts=(*request.hosts, member.id))
                break
    return tuple(out)


def expected_hosts(requests: Sequence[ProviderRequest], member_hosts: Iterable[HostRecord], *,
                   provision_timeout: float, now: float) -> Expected:
    """The group's hosts still expected (see the module doc)."""
    window = [r for r in attributed(requests, member_hosts, provision_timeout=provision_timeout, now=now)
              if r.kind is ProviderRequestKind.SCALE_OUT and now < r.created_at + provision_timeout]
    short = [max(0, r.count - len(r.hosts)) for r in window]
    until = max((r.created_at + provision_timeout for r, s in zip(window, short, strict=True) if s > 0),
                default=0.0)
    return Expected(hosts=sum(short), until=until)


def joining(requests: Sequence[ProviderRequest], member_hosts: Iterable[HostRecord],
            statuses: Mapping[HostId, HostStatus], *, provision_timeout: float, now: float) -> int:
    """Member hosts named by a ``scale_out`` request younger than ``provision_timeout`` that are not ready
    yet (registered, and the leader has not reached them): placement refuses them, so for scale-out they
    are still hosts of the shape to come."""
    members = {m.id for m in member_hosts}
    return sum(1 for r in requests
               if r.kind is ProviderRequestKind.SCALE_OUT and now < r.created_at + provision_timeout
               for h in r.hosts if h in members and ((s := statuses.get(h)) is None or not s.ready))


class Simulation:
    """The cluster as placement sees it, to which hypothetical hosts of a shape can be added.

    Built once per step: every pending replica is first placed on the cluster as it is; the ones placed
    are kept as placed (starting on their host) in every later simulation, and the others are
    ``waiting``. Building a view reads every replica, which is most of a simulation's cost, so it is done
    once: ``view`` is the cluster as it is (untouched, for scale-in's utilization), the first pass places
    on a copy, and each ``taken`` places on copies of that pass's hosts plus the hypothetical ones (a
    batch changes the view it places on)."""

    def __init__(self, *, hosts: Mapping[HostId, HostRecord], statuses: Mapping[HostId, HostStatus],
                 services: Mapping[ServiceName, Service], replicas: Sequence[Replica],
                 profile: Profile) -> None:
        self.services = services
        self.profile = profile
        self.simulations = 0  # batches placed (for measurements)
        self.view = build_view(hosts=hosts.values(), statuses=statuses, replicas=replicas,
                               services=services.values())
        self._base = _forked(self.view)
        pending = sorted((r for r in replicas if r.phase is ReplicaPhase.PENDING and r.host is None
                          and _live_service(services, r.service) is not None),
                         key=lambda r: (r.service, r.id))
        self.replicas: list[Replica] = list(replicas)
        self.waiting: list[Waiting] = []
        if not pending:
            return
        placed = self._place(pending, self._base)  # the base now counts them where they would go
        by_id = {r.id: r for r in pending}
        self.replicas = [replace(r, host=placed[r.id], phase=ReplicaPhase.STARTING) if r.id in placed else r
                         for r in replicas]
        self.waiting = [Waiting(replica=by_id[rid], since=pending_since(by_id[rid]))
                        for rid in sorted(set(by_id) - set(placed))]

    def _place(self, replicas: Sequence[Replica], view: ClusterView) -> dict[ReplicaId, HostId]:
        requests: list[PlacementRequest] = []
        for r in replicas:
            service = _live_service(self.services, r.service)
            assert service is not None
            requests.append(request_for(r, service))
        self.simulations += 1
        return batch.place(requests, view, self.profile).placed

    def _with_hosts(self, extra_hosts: Sequence[HostRecord]) -> ClusterView:
        """The cluster (with the pending replicas that fit placed) plus hosts that joined empty and ready."""
        ready = {h.id: HostStatus(id=h.id, ready=True) for h in extra_hosts}
        joined = build_view(hosts=extra_hosts, statuses=ready, replicas=(), services=())
        return _forked(self._base, joined.hosts)

    def moved(self, replicas: Sequence[Replica], *, away: Collection[HostId]) -> frozenset[ReplicaId]:
        """Which of ``replicas`` (those on the hosts ``away``) would be placed on the cluster's other hosts,
        placed in the order given. Replicas of services gone or being deleted need no room: they stop."""
        moving = [r for r in replicas if _live_service(self.services, r.service) is not None]
        ids = {r.id for r in replicas}
        base = self._base
        known = {rid: r for rid, r in base.replicas.items() if rid not in ids}
        view = ClusterView([h.copy() for h in base.hosts if h.id not in away], base.services, known)
        placed = self._place(moving, view)
        return frozenset(placed) | {r.id for r in replicas if r not in moving}

    def taken(self, waiting: Sequence[Waiting], *, group: GroupName, shape: HostShape, expected: int,
              new: int) -> frozenset[ReplicaId]:
        """The waiting replicas placed once ``expected`` + ``new`` hosts of the shape have joined."""
        if not waiting or expected + new == 0:
            return frozenset()
        extra = [_hypothetical(group, shape, f"expected-{i + 1}") for i in range(expected)]
        extra += [_hypothetical(group, shape, f"new-{i + 1}") for i in range(new)]
        return frozenset(self._place([w.replica for w in waiting], self._with_hosts(extra)))


def _forked(view: ClusterView, extra: Sequence[HostView] = ()) -> ClusterView:
    """A new view of copies of ``view``'s hosts as they stand (placements included), plus ``extra``. Its
    replicas known are the same, so a replica ``view``'s batches placed can be placed again only by
    mistake of the caller (they are never offered again here)."""
    return ClusterView([*map(HostView.copy, view.hosts), *extra], view.services, view.replicas)


def _live_service(services: Mapping[ServiceName, Service], name: ServiceName) -> Service | None:
    service = services.get(name)
    return service if service is not None and not service.deleting else None


def _hypothetical(group: GroupName, shape: HostShape, suffix: str) -> HostRecord:
    """A host of the shape that has not joined (its id cannot clash with an agent's 32 hex digits)."""
    return HostRecord(id=HostId(f"{group}/{suffix}"), name=f"{group} host ({suffix})", address="",
                      labels=shape.labels,
                      capacity=model.Capacity(cpu_allocatable_millis=shape.cpu_millis,
                                              memory_allocatable_bytes=shape.memory_bytes))


@dataclass(frozen=True)
class ScaleOut:
    """What scale-out decided for a group. ``action``: "" (nothing to do or say), "scale_out" (ask for
    ``hosts``), "wait" (cooldown) or "at_max"; ``taken``: the waiting replicas this group's expected and
    wanted hosts would place (its ``pending_replicas``, not offered to the next group)."""

    action: str = ""
    hosts: int = 0
    taken: frozenset[ReplicaId] = frozenset()
    reason: str = ""


def decide(spec: HostGroupSpec, *, shape: HostShape, waiting: Sequence[Waiting], simulation: Simulation,
           members: int, expected: Expected, last_scale_out_at: float, last_request: str,
           now: float) -> ScaleOut:
    """Scale-out for one group (see the module doc). ``waiting``: the replicas not taken by earlier groups
    (this group's ``pending_for`` is applied here)."""
    counted = [w for w in waiting if now - w.since >= spec.pending_for_seconds]
    if not counted:
        return ScaleOut()
    group = spec.name

    def taken(new: int) -> frozenset[ReplicaId]:
        return simulation.taken(counted, group=group, shape=shape, expected=expected.hosts, new=new)

    room = spec.max_hosts - members - expected.hosts
    most = max(0, min(spec.max_per_request, room))
    by_expected = taken(0)
    if most == 0:
        if room <= 0 and len(beyond := taken(1)) > len(by_expected):
            what = _replicas_text(counted, beyond - by_expected)
            return ScaleOut(action="at_max", taken=by_expected, reason=(
                f"{what} would fit one more host of {group}, but it is at its max of {spec.max_hosts} "
                f"hosts ({members} joined, {expected.hosts} expected)"))
        return ScaleOut(taken=by_expected)
    by_most = taken(most)
    if len(by_most) <= len(by_expected):
        return ScaleOut(taken=by_expected)  # the expected hosts take all that new ones would
    low, high = 1, most  # the fewest new hosts that place as many as ``most`` do
    best = by_most
    while low < high:
        middle = (low + high) // 2
        placed = taken(middle)
        if len(placed) >= len(by_most):
            high, best = middle, placed
        else:
            low = middle + 1
    hosts = low
    if last_scale_out_at and now < last_scale_out_at + spec.scale_out_cooldown_seconds:
        until = last_scale_out_at + spec.scale_out_cooldown_seconds
        after = f" after request {last_request}" if last_request else ""
        return ScaleOut(action="wait", taken=best, reason=(
            f"cooldown until {time_text(until)} "
            f"({duration_text(spec.scale_out_cooldown_seconds)}{after})"))
    new_by_these = best - by_expected
    pending = (f"{_replicas_text(counted, new_by_these)} pending for lack of room for "
               f"{_longest(counted, new_by_these, now=now)}")
    fit = f"{count_text(hosts, 'host')} of {group} would fit them all"
    if hosts == most and len(taken(most + 1)) > len(best):
        limit = (f"one request asks for at most {spec.max_per_request} (max_per_request)"
                 if most == spec.max_per_request else
                 f"the group may not exceed {spec.max_hosts} hosts (max)")
        fit = f"{count_text(hosts, 'host')} of {group} would fit them; more would fit more, but {limit}"
    reason = f"{pending}; {fit}"
    if expected.hosts:
        reason += f" (besides the {count_text(expected.hosts, 'host')} already expected)"
    return ScaleOut(action="scale_out", hosts=hosts, taken=best, reason=reason)


def _replicas_text(counted: Sequence[Waiting], ids: frozenset[ReplicaId]) -> str:
    """ "7 replicas of web", "7 replicas of web and 2 of api" """
    per_service = Counter(w.replica.service for w in counted if w.replica.id in ids)
    (first, n), *rest = sorted(per_service.items())
    parts = [f"{count_text(n, 'replica')} of {first}", *(f"{m} of {name}" for name, m in rest)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"


def _longest(counted: Sequence[Waiting], ids: frozenset[ReplicaId], *, now: float) -> str:
    """How long the longest waiting of ``ids`` has been pending."""
    return duration_text(now - min(w.since for w in counted if w.replica.id in ids))


def new_request(group: GroupName, *, number: int, hosts: int, shape: HostShape, reason: str,
                now: float) -> ProviderRequest:
    """The scale-out request, stored before its first delivery attempt (state pending, due now)."""
    return ProviderRequest(id=f"{group}-{number}", kind=ProviderRequestKind.SCALE_OUT, created_at=now,
                           count=hosts, shape=shape, reason=reason, next_attempt_at=now)


__all__ = ["Expected", "ScaleOut", "Simulation", "Waiting", "decide", "expected_hosts", "new_request",
           "pending_since"]
