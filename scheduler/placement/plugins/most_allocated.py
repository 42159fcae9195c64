"""Most allocated score (the ``binpack`` strategy): the fuller a host would be after the replica, the
higher, ``MAX_SCORE * utilization`` (kube-scheduler's MostAllocated). Replicas fill one host before the
next, leaving whole hosts free for large replicas or for removal."""

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

NAME = "most_allocated"


def most_allocated(request: PlacementRequest, host: HostView, weights: ResourceWeights) -> float:
    return MAX_SCORE * utilization_after(request, host, weights)


def most_allocated_all(request: PlacementRequest, hosts: Sequence[HostView],
                       weights: ResourceWeights) -> list[float]:
    return [MAX_SCORE * u for u in utilization_all(request, hosts, weights)]


class MostAllocated:
    name = NAME
    reads = Reads.HOST
    strategy = Strategy.BINPACK
    normalize = False

    def __init__(self, weights: ResourceWeights) -> None:
        self.weights = weights

    def applies(self, request: PlacementRequest) -> bool:
        return True

    def key(self, request: PlacementRequest) -> Hashable:
        return (request.facts.cpu_millis, request.facts.memory_bytes)

    def score(self, request: PlacementRequest, host: HostView) -> float:
        return most_allocated(request, host, self.weights)

    def score_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[float]:
        return most_allocated_all(request, hosts, self.weights)


def new(args: PluginArgs) -> MostAllocated:
    return MostAllocated(weights_from(NAME, args))
