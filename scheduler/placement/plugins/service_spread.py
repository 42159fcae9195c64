"""Service spread score (the ``spread`` strategy): the fewer replicas of the same service a host already
has, the higher, ``MAX_SCORE / (1 + replicas of the service there)`` — kube-scheduler's default
spreading of a workload's pods over nodes, which its users expect from "spread".

Without it a service whose replicas request little (the least allocated score then barely differs
between hosts) piles onto the hosts that happen to score a few points higher for another reason — image
locality, say, on the hosts that ran it before — and a host that came back empty gets none. The score is
host-local (a batch re-judges only the host it just used), and halves from the first replica to the
second, so one more replica on a host outweighs image locality's 10 points at weight 1."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from scheduler.model import Strategy
from scheduler.placement.framework import (
    MAX_SCORE,
    PlacementRequest,
    PluginArgs,
    Reads,
    SparseScores,
    check_args,
)
from scheduler.placement.view import ClusterView, HostView

NAME = "service_spread"


def service_spread(request: PlacementRequest, host: HostView) -> float:
    return MAX_SCORE / (1 + host.replicas.get(request.service, 0))


class ServiceSpread:
    name = NAME
    reads = Reads.HOST
    strategy = Strategy.SPREAD
    normalize = False

    def applies(self, request: PlacementRequest) -> bool:
        return True

    def key(self, request: PlacementRequest) -> Hashable:
        return request.service

    def score(self, request: PlacementRequest, host: HostView) -> float:
        return service_spread(request, host)

    def score_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[float]:
        # .get, not [ ]: a Counter's missing key is a Python-level __missing__ call, and most hosts have
        # none of the service's replicas.
        service = request.service
        return [MAX_SCORE / (1 + host.replicas.get(service, 0)) for host in hosts]

    def score_sparse(self, request: PlacementRequest, view: ClusterView) -> SparseScores:
        # MAX_SCORE / (1 + 0) is MAX_SCORE exactly: the hosts without the service's replicas need no asking.
        service, hosts = request.service, view.hosts

        def value(i: int) -> float:
            return MAX_SCORE / (1 + hosts[i].replicas.get(service, 0))

        return SparseScores(MAX_SCORE, view.service_hosts(service), value)


def new(args: PluginArgs) -> ServiceSpread:
    check_args(NAME, args, {})
    return ServiceSpread()
