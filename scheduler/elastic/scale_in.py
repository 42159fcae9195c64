"""Scale-in: which member hosts are underused, which one to drain, and following a drain to its end.

**Underused.** A member host is underused while its cpu and its memory requests are both below the
group's ``utilization_below`` of its allocatable. Requests are counted as placement counts them
(``scheduler.placement.view``: the agent's committed figures, at least what its live replicas request,
plus replicas placed there and not started yet), so scale-in and placement never disagree about room.
``underused_since`` keeps, per host, when it became underused; a host that is not underused any more
loses its timer, so the time must be spent below the threshold in one stretch.

**A candidate** has been underused for ``for``, is ready and active (not cordoned, not draining), and
is drained only when every one of these holds (the first that fails is recorded as a ``hold``, once):
the group does not want hosts right now (no replica pending that its hosts would take); the last
scale-out request is older than ``delay_after_scale_out``; fewer than ``max_concurrent_drains`` drains
are in flight; the group keeps more than ``min`` hosts that are neither draining nor released; and all
its live replicas would be placed elsewhere — simulated with the same plugins on the cluster without it
and without the hosts being drained (whose live replicas are placed in the same batch, as they must move
too: counting a replica whose replacement already runs twice only makes the answer cautious). The least
utilized candidate goes first (ties by host id). Draining is the host record's admin state: the
reconcile loop then moves its replicas with each service's surge and unavailability limits.

**After a drain.** A draining host with no replica left (stopping ones count while the host is ready:
their containers are still stopping) is *released*: one ``scale_in`` request names the hosts released in
the same step. A released host whose scale-in request was delivered and that is no longer ready (the
provider stopped its agent) is *forgotten*: its record and status are deleted. A draining host an
operator uncordoned (or cordoned), or one whose record was removed by hand, is dropped from the status
with a decision; so is a released host removed by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scheduler.elastic.decisions import count_text, duration_text, host_name, time_text
from scheduler.elastic.shape import is_member
from scheduler.model import (
    DeliveryState,
    HostAdmin,
    HostGroupSpec,
    HostGroupStatus,
    HostId,
    HostRecord,
    HostStatus,
    ProviderRequestKind,
    Replica,
    ReplicaPhase,
    Service,
    ServiceName,
)
from scheduler.placement import batch
from scheduler.placement.framework import Profile, request_for
from scheduler.placement.view import ClusterView, build_view


@dataclass(frozen=True)
class ScaleIn:
    """What scale-in decided for a group: its new timers and drain lists, the hosts to set draining, to
    name in a ``scale_in`` request (``release``) and to forget, and the decisions (action, reason)."""

    underused_since: tuple[tuple[HostId, float], ...] = ()
    draining: tuple[tuple[HostId, float], ...] = ()
    released: tuple[tuple[HostId, float], ...] = ()
    drain: tuple[HostId, ...] = ()
    release: tuple[HostId, ...] = ()
    forget: tuple[HostId, ...] = ()
    decisions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Cluster:
    """What scale-in reads of the cluster, shared by every group of a step. ``simulated``: the replicas as
    the scale-out simulation left them (pending replicas that fit the cluster counted where they would
    go, so a drain never counts on room they are about to take); ``view``: the cluster as placement sees
    it now, for utilization."""

    hosts: Mapping[HostId, HostRecord]
    host_statuses: Mapping[HostId, HostStatus]
    services: Mapping[ServiceName, Service]
    replicas: Sequence[Replica]
    simulated: Sequence[Replica]
    view: ClusterView
    profile: Profile


def utilization(cluster: Cluster, host: HostId) -> tuple[float, float] | None:
    """The host's cpu and memory requests as fractions of its allocatable (None: it reports none)."""
    view = cluster.view.by_id.get(host)
    if view is None or view.cpu_allocatable <= 0 or view.memory_allocatable <= 0:
        return None
    return view.cpu_used / view.cpu_allocatable, view.memory_used / view.memory_allocatable


def step(spec: HostGroupSpec, status: HostGroupStatus, cluster: Cluster, *, wants_hosts: bool,
         now: float) -> ScaleIn:
    """Scale-in for one group (see the module doc)."""
    decisions: list[tuple[str, str]] = []
    draining, released, release, forget = _follow(spec, status, cluster, decisions, now=now)
    leaving = {h for h, _ in draining} | {h for h, _ in released} | set(release) | set(forget)
    member_ids = [h for h, r in sorted(cluster.hosts.items()) if is_member(r, spec.name)]
    timers = _timers(spec, status, cluster, [h for h in member_ids if h not in leaving], now=now)
    drain: list[HostId] = []
    if spec.scale_in:
        active = len([h for h in member_ids if h not in leaving])
        drain, hold = _candidates(spec, status, cluster, timers, draining=[h for h, _ in draining],
                                  active=active, wants_hosts=wants_hosts, now=now)
        for host in drain:
            since = dict(timers)[host]
            cpu, memory = utilization(cluster, host) or (0.0, 0.0)
            moving = len(_live_on(cluster.simulated, host))
            decisions.append(("drain", (
                f"{host_name(host, cluster.hosts)} below {spec.scale_in_utilization_percent}% cpu and memory "
                f"requests (cpu {cpu:.0%}, memory {memory:.0%}) for {duration_text(now - since)}; "
                f"{_its_replicas(moving)} on the other hosts")))
        if hold and not drain:
            decisions.append(("hold", hold))
    return ScaleIn(underused_since=tuple((h, t) for h, t in timers if h not in drain),
                   draining=(*draining, *((h, now) for h in drain)), released=tuple(released),
                   drain=tuple(drain), release=tuple(release), forget=tuple(forget),
                   decisions=tuple(decisions))


def release_reason(spec: HostGroupSpec, hosts: Sequence[HostId], records: Mapping[HostId, HostRecord]) -> str:
    """The ``scale_in`` request's reason: "worker-3 below 50% cpu and memory requests for 10m and
    drained"."""
    names = [host_name(h, records) for h in hosts]
    who = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
    return (f"{who} below {spec.scale_in_utilization_percent}% cpu and memory requests for "
            f"{duration_text(spec.scale_in_after_seconds)} and drained")


def _its_replicas(n: int) -> str:
    return "it holds no replica" if n == 0 else f"its {count_text(n, 'replica')} fit"


_Since = list[tuple[HostId, float]]


def _follow(spec: HostGroupSpec, status: HostGroupStatus, cluster: Cluster, decisions: list[tuple[str, str]],
            *, now: float) -> tuple[_Since, _Since, list[HostId], list[HostId]]:
    """Drains and releases in flight: (still draining, still released, to release now, to forget)."""
    hosts = cluster.hosts
    draining: list[tuple[HostId, float]] = []
    released: list[tuple[HostId, float]] = []
    release: list[HostId] = []
    forget: list[HostId] = []
    for host, since in status.draining:
        record = hosts.get(host)
        name = host_name(host, hosts)
        if record is None or not is_member(record, spec.name):
            decisions.append(("drop", f"{name} was removed (or left {spec.name}) while draining"))
        elif record.admin is not HostAdmin.DRAINING:
            decisions.append(("drop", f"{name} is {record.admin.value} now, not draining (an operator "
                                      f"changed it): its scale-in is abandoned"))
        elif _remaining(cluster, host):
            draining.append((host, since))
        else:
            release.append(host)
    delivered = _delivered(status)
    for host, since in status.released:
        name = host_name(host, hosts)
        ready = cluster.host_statuses.get(host)
        if host not in hosts:
            decisions.append(("drop", f"{name} was removed by hand after its release"))
        elif (ready is None or not ready.ready) and delivered.get(host, True):
            why = f" ({ready.reason})" if ready is not None and ready.reason else ""
            decisions.append(("forget", f"{name} is gone{why} after its scale-in request: forgetting it"))
            forget.append(host)
        else:
            released.append((host, since))
    if release:
        decisions.append(("release", release_reason(spec, release, hosts)))
    return draining, released + [(h, now) for h in release], release, forget


def _delivered(status: HostGroupStatus) -> dict[HostId, bool]:
    """Per host named in a stored scale-in request, whether that request was delivered (a host whose
    request was pruned counts as delivered: only delivered requests are pruned)."""
    out: dict[HostId, bool] = {}
    for request in status.requests:
        if request.kind is ProviderRequestKind.SCALE_IN:
            for host in request.hosts:
                out[host] = request.state is DeliveryState.DELIVERED
    return out


def _remaining(cluster: Cluster, host: HostId) -> bool:
    """Whether replicas are left on a draining host (stopping ones while it is ready: still stopping)."""
    status = cluster.host_statuses.get(host)
    ready = status is not None and status.ready
    return any(r.host == host and (r.phase is not ReplicaPhase.STOPPING or ready) for r in cluster.replicas)


def _live_on(replicas: Sequence[Replica], host: HostId) -> list[Replica]:
    return [r for r in replicas if r.host == host and r.phase is not ReplicaPhase.STOPPING]


def _timers(spec: HostGroupSpec, status: HostGroupStatus, cluster: Cluster, hosts: Sequence[HostId], *,
            now: float) -> list[tuple[HostId, float]]:
    if not spec.scale_in:
        return []
    before = dict(status.underused_since)
    threshold = spec.scale_in_utilization_percent / 100
    timers = []
    for host in hosts:
        used = utilization(cluster, host)
        if used is not None and used[0] < threshold and used[1] < threshold:
            timers.append((host, before.get(host, now)))
    return timers


def _candidates(spec: HostGroupSpec, status: HostGroupStatus, cluster: Cluster,
                timers: Sequence[tuple[HostId, float]], *, draining: Sequence[HostId], active: int,
                wants_hosts: bool, now: float) -> tuple[list[HostId], str]:
    """The hosts to drain now, and why the first candidate is held back when none is."""
    ripe = []
    for host, since in timers:
        record, ready = cluster.hosts[host], cluster.host_statuses.get(host)
        if (now - since >= spec.scale_in_after_seconds and record.admin is HostAdmin.ACTIVE
                and ready is not None and ready.ready):
            ripe.append((cluster.view.by_id[host].load(), host))
    if not ripe:
        return [], ""
    ripe.sort()
    first = host_name(ripe[0][1], cluster.hosts)
    underused = f"{first} is below {spec.scale_in_utilization_percent}% cpu and memory requests"
    if wants_hosts:
        return [], f"{underused}, but replicas are pending that {spec.name}'s hosts would take"
    delay_until = status.last_scale_out_at + spec.scale_in_delay_after_scale_out_seconds
    if status.last_scale_out_at and now < delay_until:
        return [], (f"{underused}, but no scale-in until {time_text(delay_until)} "
                    f"({duration_text(spec.scale_in_delay_after_scale_out_seconds)} after the last "
                    f"scale-out request)")
    chosen: list[HostId] = []
    hold = ""
    for _, host in ripe:
        if len(draining) + len(chosen) >= spec.max_concurrent_drains:
            hold = hold or (f"{underused}, but {count_text(len(draining), 'drain')} in flight "
                            f"(max_concurrent_drains {spec.max_concurrent_drains})")
            break
        if active - len(chosen) <= spec.min_hosts:
            hold = hold or f"{underused}, but {spec.name} is at its min of {spec.min_hosts} hosts"
            break
        stuck = _nowhere_to_go(cluster, host, away=[*draining, *chosen])
        if stuck:
            hold = hold or (f"{host_name(host, cluster.hosts)} is below {spec.scale_in_utilization_percent}% "
                            f"cpu and memory requests, but {stuck}")
            continue
        chosen.append(host)
    return chosen, hold


def _nowhere_to_go(cluster: Cluster, host: HostId, *, away: Sequence[HostId]) -> str:
    """"" when the host's live replicas (with those of the hosts ``away``) would all be placed on the
    other hosts; otherwise how many would not, in words."""
    leaving = {host, *away}
    leaving |= {h for h, r in cluster.hosts.items() if r.admin is HostAdmin.DRAINING}
    moving = [r for r in cluster.simulated if r.host in leaving and r.phase is not ReplicaPhase.STOPPING
              and r.service in cluster.services]
    own = {r.id for r in moving if r.host == host}
    if not own:
        return ""
    moving_ids = {r.id for r in moving}
    view = build_view(hosts=[r for h, r in cluster.hosts.items() if h not in leaving],
                      statuses=cluster.host_statuses,
                      replicas=[r for r in cluster.simulated if r.id not in moving_ids],
                      services=cluster.services.values())
    requests = [request_for(r, cluster.services[r.service]) for r in
                sorted(moving, key=lambda r: (r.host == host, r.service, r.id))]
    placed = batch.place(requests, view, cluster.profile).placed
    stuck = [rid for rid in own if rid not in placed]
    if not stuck:
        return ""
    return f"{len(stuck)} of its {count_text(len(own), 'replica')} would fit on no other host"


__all__ = ["Cluster", "ScaleIn", "release_reason", "step", "utilization"]
