"""Topology spread: replicas of a service spread evenly over the values of a host label (zones, racks),
as kube-scheduler's PodTopologySpread with ``whenUnsatisfiable: DoNotSchedule``.

**Filter.** A domain is one value of the label. Placing a replica in domain ``d`` is allowed only when
``count(d) + 1 - minimum <= max_skew``, where ``minimum`` is the fewest replicas of the service in any
*eligible* domain. Eligible domains are those with at least one host the service could use in principle:
a host that passes the host state and label constraint filters and carries the label (kube-scheduler's
``nodeAffinityPolicy: Honor`` and ``nodeTaintsPolicy: Honor``); only replicas on such hosts are counted.
Room does not matter: a full zone still holds the minimum down, so the constraint stays hard and the
replica stays pending ("would exceed max skew 1 on zone") rather than piling into the other zones.
A host without the label is refused ("no label zone"). Replicas that are stopping do not count.

**Score.** ``MAX_SCORE * (1 - (count(d) - minimum) / max_skew)``: the emptiest domain scores highest.
With ``max_skew`` 1 every allowed domain is at the minimum and the score does not discriminate; with a
looser skew it still prefers the least-loaded domain, as kube-scheduler's scoring does.
"""

from __future__ import annotations

from scheduler.placement.framework import (
    MAX_SCORE,
    PlacementError,
    PlacementRequest,
    PluginArgs,
    Reasons,
    check_args,
)
from scheduler.placement.plugins import constraints, host_state
from scheduler.placement.view import ClusterView, DomainCounts, HostView

NAME = "topology_spread"


def eligible(request: PlacementRequest, host: HostView) -> bool:
    """Whether the host's domain counts for this service: the host passes host state and constraints."""
    return (host_state.host_problem(host.record, host.status) is None
            and not constraints.unmet(request.placement.constraints, host.labels))


def skew_problem(counts: DomainCounts, domain: str | None, max_skew: int) -> Reasons:
    """Why one more replica may not go to ``domain``, or () when it may."""
    if domain is None:
        return (f"no label {counts.label}",)
    if counts.count(domain) + 1 - counts.minimum > max_skew:
        return (f"would exceed max skew {max_skew} on {counts.label}",)
    return ()


def domain_score(counts: DomainCounts, domain: str | None, max_skew: int) -> float:
    if domain is None:
        return 0.0
    excess = counts.count(domain) - counts.minimum
    return max(0.0, MAX_SCORE * (1.0 - excess / max_skew))


def max_skew_of(request: PlacementRequest) -> int:
    spread = request.placement.topology_spread
    assert spread is not None
    if spread.max_skew < 1:
        raise PlacementError(f"service {request.service}: topology spread max_skew must be at least 1, "
                             f"got {spread.max_skew}")
    return spread.max_skew


class TopologySpread:
    name = NAME

    def domains(self, request: PlacementRequest, view: ClusterView) -> DomainCounts | None:
        spread = request.placement.topology_spread
        if spread is None:
            return None
        max_skew_of(request)
        # Which hosts are eligible depends only on the constraints: once per view for all services.
        ok = view.memo((NAME, request.placement.constraints),
                       lambda: frozenset(h.id for h in view.hosts if eligible(request, h)))
        return view.domain_counts(request.service, spread.label, lambda host: host.id in ok,
                                  eligible_key=(NAME, request.placement.constraints))

    # The batch asks these only after ``domains``, which validated max_skew.
    def filter_domain(self, request: PlacementRequest, counts: DomainCounts, domain: str | None) -> Reasons:
        spread = request.placement.topology_spread
        assert spread is not None
        return skew_problem(counts, domain, spread.max_skew)

    def score_domain(self, request: PlacementRequest, counts: DomainCounts, domain: str | None) -> float:
        spread = request.placement.topology_spread
        assert spread is not None
        return domain_score(counts, domain, spread.max_skew)


def new(args: PluginArgs) -> TopologySpread:
    check_args(NAME, args, {})
    return TopologySpread()
