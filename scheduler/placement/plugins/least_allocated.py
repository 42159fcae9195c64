"""Least allocated score (the ``spread`` strategy): the more room a host would keep after the replica,
the higher, ``MAX_SCORE * (1 - utilization)`` (kube-scheduler's LeastAllocated). Replicas spread over
hosts in proportion to their free room."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from scheduler.model import Strategy
from scheduler.placement.framework import MAX_SCORE, PlacementRequest, PluginArgs, Reads
from scheduler.placement.plugins.allocation import (
    ResourceWeights,
    utilization_after,
    utilization_all,
    weights_from,
)
from scheduler.placement.view import HostView

NAME = "least_allocated"


def least_allocated(request: PlacementRequest, host: HostView, weights: ResourceWeights) -> float:
    return MAX_SCORE * (1.0 - utilization_after(request, host, weights))


def least_allocated_all(request: PlacementRequest, hosts: Sequence[HostView],
                        weights: ResourceWeights) -> list[float]:
    return [MAX_SCORE * (1.0 - u) for u in utilization_all(request, hosts, weights)]


class LeastAllocated:
    name = NAME
    reads = Reads.HOST
    strategy = Strategy.SPREAD
    normalize = False

    def __init__(self, weights: ResourceWeights) -> None:
        self.weights = weights

    def applies(self, request: PlacementRequest) -> bool:
        return True

    def key(self, request: PlacementRequest) -> Hashable:
        return (request.facts.cpu_millis, request.facts.memory_bytes)

    def score(self, request: PlacementRequest, host: HostView) -> float:
        return least_allocated(request, host, self.weights)

    def score_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[float]:
        return least_allocated_all(request, hosts, self.weights)


def new(args: PluginArgs) -> LeastAllocated:
    return LeastAllocated(weights_from(NAME, args))
