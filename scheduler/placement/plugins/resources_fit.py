"""Resources fit filter: the request must fit in what the host has not promised yet, for cpu and for
memory: allocatable - the agent's committed requests - replicas placed there but not started (see
``view``). Refusals: ``insufficient cpu``, ``insufficient memory`` (both when both fall short, so each
is counted in a pending summary, as kube-scheduler's NodeResourcesFit does)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from scheduler.placement.framework import PlacementRequest, PluginArgs, Reads, Reasons, check_args
from scheduler.placement.view import HostView

NAME = "resources_fit"

_CPU, _MEMORY = ("insufficient cpu",), ("insufficient memory",)
_BOTH = _CPU + _MEMORY


def shortfalls(*, cpu_millis: int, memory_bytes: int, host: HostView) -> Reasons:
    """What the host lacks for a request of this size, as reasons; () when it fits."""
    short_cpu = cpu_millis > host.cpu_allocatable - host.cpu_used
    short_memory = memory_bytes > host.memory_allocatable - host.memory_used
    if short_cpu:
        return _BOTH if short_memory else _CPU
    return _MEMORY if short_memory else ()


class ResourcesFit:
    name = NAME
    reads = Reads.HOST

    def applies(self, request: PlacementRequest) -> bool:
        return True  # a request of nothing still needs a host that is not overcommitted

    def key(self, request: PlacementRequest) -> Hashable:
        return (request.facts.cpu_millis, request.facts.memory_bytes)

    def filter(self, request: PlacementRequest, host: HostView) -> Reasons:
        facts = request.facts
        return shortfalls(cpu_millis=facts.cpu_millis, memory_bytes=facts.memory_bytes, host=host)

    def filter_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[Reasons]:
        cpu, memory = request.facts.cpu_millis, request.facts.memory_bytes
        # The common answer (it fits) inline; shortfalls() only for the hosts that lack room.
        return [() if cpu <= h.cpu_allocatable - h.cpu_used and memory <= h.memory_allocatable - h.memory_used
                else shortfalls(cpu_millis=cpu, memory_bytes=memory, host=h) for h in hosts]


def new(args: PluginArgs) -> ResourcesFit:
    check_args(NAME, args, {})
    return ResourcesFit()
