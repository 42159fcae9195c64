"""How full a host would be with one more replica: the fraction least allocated and most allocated
score by (kube-scheduler's NodeResourcesFit scoring strategies), averaged over cpu and memory with
configurable weights. Each fraction is capped at 1, and a resource the host does not offer counts as
full. A request of nothing counts as the scoring defaults of ``view`` (``SCORING_DEFAULT_*``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.placement.framework import PlacementError, PlacementRequest, PluginArgs, check_args
from scheduler.placement.view import SCORING_DEFAULT_CPU_MILLIS, SCORING_DEFAULT_MEMORY_BYTES, HostView


@dataclass(frozen=True)
class ResourceWeights:
    cpu: float = 1.0
    memory: float = 1.0


def weights_from(plugin: str, args: PluginArgs) -> ResourceWeights:
    """Arguments ``cpu`` and ``memory``: how much each resource counts (default 1 each)."""
    check_args(plugin, args, {"cpu": (int, float), "memory": (int, float)})
    cpu, memory = args.get("cpu", 1.0), args.get("memory", 1.0)
    assert isinstance(cpu, int | float) and isinstance(memory, int | float)
    if cpu < 0 or memory < 0 or cpu + memory <= 0:
        raise PlacementError(f"plugin {plugin}: resource weights must be >= 0 and not both 0")
    return ResourceWeights(float(cpu), float(memory))


def utilization_all(request: PlacementRequest, hosts: Sequence[HostView],
                    weights: ResourceWeights) -> list[float]:
    """For each host, the weighted mean fraction of cpu and memory promised once this replica is on
    it, 0..1. One comprehension, no calls per host: a batch's first look runs it over every host."""
    facts = request.facts
    cpu = facts.cpu_millis or SCORING_DEFAULT_CPU_MILLIS
    memory = facts.memory_bytes or SCORING_DEFAULT_MEMORY_BYTES
    w_cpu = weights.cpu / (weights.cpu + weights.memory)
    w_memory = weights.memory / (weights.cpu + weights.memory)
    # A fraction is capped at 1; a resource the host does not offer (allocatable 0) counts as full.
    return [
        w_cpu * (1.0 if h.cpu_scoring_used + cpu >= h.cpu_allocatable
                 else (h.cpu_scoring_used + cpu) / h.cpu_allocatable)
        + w_memory * (1.0 if h.memory_scoring_used + memory >= h.memory_allocatable
                      else (h.memory_scoring_used + memory) / h.memory_allocatable)
        for h in hosts]


def utilization_after(request: PlacementRequest, host: HostView, weights: ResourceWeights) -> float:
    """``utilization_all`` for one host."""
    return utilization_all(request, (host,), weights)[0]
