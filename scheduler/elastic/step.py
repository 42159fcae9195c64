"""The elastic step: host groups, their statuses and the cluster → each group's new status, the hosts to
drain and the hosts to forget.

A pure function (no I/O, no clock: ``now`` is an input, no store), run by the leader's elastic loop
(``scheduler.elastic.loop``) every second; the loop commits the plan in one guarded transaction, then
delivers the provider requests the statuses hold in state ``pending``. Per step:

1. One ``scale_out.Simulation`` for the whole cluster: the pending replicas that fit as it is are set
   aside (the reconcile loop places them); the rest wait for hosts.
2. Per group, in name order: its members and shape (``shape``); the hosts still expected from its
   requests (``scale_out.expected_hosts``); scale-out (``scale_out.decide``) on the waiting replicas that
   earlier groups' hosts do not take — a new request is written here with state ``pending`` and the id
   ``{group}-{next_request_number}``; then scale-in (``scale_in.step``): drains followed to their
   release and forgetting, underused timers, and a drain when a candidate qualifies.
3. The status keeps requests the step did not create untouched (their delivery fields are the loop's),
   drops delivered ones beyond the latest ``MAX_DELIVERED``, records the decisions (``decisions``:
   bounded, standing conditions once), and sets ``desired_hosts`` (members + expected - draining -
   released) and ``pending_replicas``.

A status is returned only when it changed, so a step on its own output with the same cluster returns no
statuses, no drains and nothing to forget (the unit tests hold it to that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from scheduler.elastic import decisions, scale_in, scale_out, shape
from scheduler.model import (
    DeliveryState,
    GroupName,
    HostGroup,
    HostGroupStatus,
    HostId,
    HostRecord,
    HostStatus,
    ProviderRequest,
    ProviderRequestKind,
    Replica,
    ReplicaId,
    Service,
    ServiceName,
)
from scheduler.placement.framework import Profile

MAX_DELIVERED = 20  # delivered requests kept per group (undelivered ones are always kept)


@dataclass(frozen=True)
class ElasticInputs:
    groups: Mapping[GroupName, HostGroup]
    statuses: Mapping[GroupName, HostGroupStatus]      # missing = fresh HostGroupStatus(group=name)
    hosts: Mapping[HostId, HostRecord]
    host_statuses: Mapping[HostId, HostStatus]
    services: Mapping[ServiceName, Service]
    replicas: Sequence[Replica]
    profile: Profile                                    # scheduler.placement.framework.Profile in use
    now: float


@dataclass(frozen=True)
class ElasticPlan:
    statuses: Mapping[GroupName, HostGroupStatus]   # every group's new status (unchanged ones may be omitted)
    drain: tuple[HostId, ...] = ()    # set these hosts' admin to DRAINING (scale-in)
    forget: tuple[HostId, ...] = ()   # delete hosts/{id} and host-status/{id} (released and gone)

    @property
    def empty(self) -> bool:
        return not self.statuses and not self.drain and not self.forget


def step(inputs: ElasticInputs) -> ElasticPlan:
    simulation = scale_out.Simulation(hosts=inputs.hosts, statuses=inputs.host_statuses,
                                      services=inputs.services, replicas=inputs.replicas,
                                      profile=inputs.profile)
    cluster = scale_in.Cluster(hosts=inputs.hosts, host_statuses=inputs.host_statuses,
                               services=inputs.services, replicas=inputs.replicas, simulation=simulation)
    taken: set[ReplicaId] = set()
    statuses: dict[GroupName, HostGroupStatus] = {}
    drain: list[HostId] = []
    forget: list[HostId] = []
    for name, group in sorted(inputs.groups.items()):
        before = inputs.statuses.get(name) or HostGroupStatus(group=name)
        waiting = [w for w in simulation.waiting if w.replica.id not in taken]
        after, group_drain, group_forget, group_taken = _group(group, before, inputs, simulation, cluster,
                                                               waiting)
        taken |= group_taken
        drain += group_drain
        forget += group_forget
        if after != before:
            statuses[name] = after
    return ElasticPlan(statuses=statuses, drain=tuple(drain), forget=tuple(forget))


def _group(group: HostGroup, status: HostGroupStatus, inputs: ElasticInputs,
           simulation: scale_out.Simulation, cluster: scale_in.Cluster,
           waiting: Sequence[scale_out.Waiting]) -> tuple[HostGroupStatus, tuple[HostId, ...],
                                                           tuple[HostId, ...], frozenset[ReplicaId]]:
    """One group's new status, hosts to drain and to forget, and the waiting replicas its hosts take."""
    spec, now = group.spec, inputs.now
    member_hosts = shape.members(spec.name, inputs.hosts)
    group_shape = shape.shape_of(spec, member_hosts)
    # Hosts that joined are recorded in the request they filled, so one that leaves again (scaled in,
    # removed) is not expected again and never credits a later request's hosts to this one.
    timeout = spec.provision_timeout_seconds
    status = replace(status, requests=scale_out.attributed(status.requests, member_hosts,
                                                           provision_timeout=timeout, now=now))
    expected = scale_out.expected_hosts(status.requests, member_hosts, provision_timeout=timeout, now=now)
    # A host that joined for a request but is not ready yet takes no replica (placement refuses it): for
    # scale-out it is still to come, as a host of the shape, or the step would ask for it again in that
    # moment; ``members`` drops it so the room left is the same.
    joining = scale_out.joining(status.requests, member_hosts, inputs.host_statuses,
                                provision_timeout=timeout, now=now)
    awaited = replace(expected, hosts=expected.hosts + joining)
    new = status
    if group_shape is None:
        outcome = scale_out.ScaleOut()
        new = decisions.recorded(new, now=now, action="no_shape", reason=(
            f"{spec.name} declares no shape and has no member host to learn one from: it cannot scale out"))
    else:
        last = next((r.id for r in reversed(status.requests)
                     if r.kind is ProviderRequestKind.SCALE_OUT), "")
        outcome = scale_out.decide(spec, shape=group_shape, waiting=waiting, simulation=simulation,
                                   members=len(member_hosts) - joining, expected=awaited,
                                   last_scale_out_at=status.last_scale_out_at, last_request=last, now=now)
    if outcome.action == "scale_out" and group_shape is not None:
        request = scale_out.new_request(spec.name, number=new.next_request_number, hosts=outcome.hosts,
                                        shape=group_shape, reason=outcome.reason, now=now)
        new = replace(new, requests=(*new.requests, request), next_request_number=new.next_request_number + 1,
                      last_scale_out_at=now)
        new = decisions.recorded(new, now=now, action="scale_out",
                                 reason=f"{outcome.reason} (request {request.id})")
        expected = scale_out.Expected(hosts=expected.hosts + outcome.hosts,
                                      until=max(expected.until, now + spec.provision_timeout_seconds))
    elif outcome.action:
        new = decisions.recorded(new, now=now, action=outcome.action, reason=outcome.reason)

    scaled_in = scale_in.step(spec, new, cluster, wants_hosts=bool(outcome.taken), now=now)
    for action, reason in scaled_in.decisions:
        if action == "release":
            request = ProviderRequest(id=f"{spec.name}-{new.next_request_number}",
                                      kind=ProviderRequestKind.SCALE_IN, created_at=now,
                                      hosts=scaled_in.release, reason=reason, next_attempt_at=now)
            new = replace(new, requests=(*new.requests, request),
                          next_request_number=new.next_request_number + 1)
            reason = f"{reason} (request {request.id})"
        new = decisions.recorded(new, now=now, action=action, reason=reason)

    member_ids = {r.id for r in member_hosts}
    removing = {h for h, _ in (*scaled_in.draining, *scaled_in.released)} & member_ids
    new = replace(new, underused_since=scaled_in.underused_since, draining=scaled_in.draining,
                  released=scaled_in.released, requests=_pruned(new.requests),
                  expected_hosts=expected.hosts, expected_until=expected.until,
                  desired_hosts=len(member_ids) - len(set(scaled_in.forget) & member_ids) + expected.hosts
                  - len(removing),
                  pending_replicas=len(outcome.taken))
    return new, scaled_in.drain, scaled_in.forget, outcome.taken


def _pruned(requests: tuple[ProviderRequest, ...]) -> tuple[ProviderRequest, ...]:
    """Every undelivered request and the latest ``MAX_DELIVERED`` delivered ones, in their order."""
    delivered = [i for i, r in enumerate(requests) if r.state is DeliveryState.DELIVERED]
    dropped = set(delivered[:-MAX_DELIVERED]) if len(delivered) > MAX_DELIVERED else set()
    return tuple(r for i, r in enumerate(requests) if i not in dropped)


__all__ = ["MAX_DELIVERED", "ElasticInputs", "ElasticPlan", "step"]
