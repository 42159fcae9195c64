"""Host state filter: only hosts that are ready, active and free of blocking conditions take replicas.

Refusals, in the order they are checked: ``cordoned`` and ``draining`` (what an operator asked; a draining
host is also moving its replicas away), ``not ready`` (the leader cannot reach the agent or does not
trust its report yet), ``failing to start containers`` (the leader saw its last launches fail for
host-side reasons: ``scheduler.start_health``), then the agent's conditions: ``memory pressure``, ``disk
pressure`` and ``supervisor down`` (the process that parents containers is restarting, so starts would
fail). Other condition types are ignored, so an agent that learns a new one does not empty the cluster.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Mapping, Sequence

from scheduler import model
from scheduler.model import HostAdmin
from scheduler.placement.framework import (
    PlacementError,
    PlacementRequest,
    PluginArgs,
    Reads,
    Reasons,
    check_args,
)
from scheduler.placement.view import HostView

NAME = "host_state"

# Agent condition type → the reason placement gives.
BLOCKING_CONDITIONS: Mapping[str, str] = {
    "MemoryPressure": "memory pressure",
    "DiskPressure": "disk pressure",
    "SupervisorDown": "supervisor down",
}


# What ``host_problem`` reads of a host's status, the only part of it placement reads: statuses equal in
# these place alike (``ViewCache`` keeps a host's view through a status that changed in nothing else).
status_read = operator.attrgetter("ready", "start_failing")


def host_problem(record: model.HostRecord, status: model.HostStatus,
                 blocking: Mapping[str, str] = BLOCKING_CONDITIONS) -> str | None:
    """Why no replica may be placed on this host now, or None when it may."""
    if record.admin is HostAdmin.CORDONED:
        return "cordoned"
    if record.admin is HostAdmin.DRAINING:
        return "draining"
    if not status.ready:
        return "not ready"
    if status.start_failing:
        return "failing to start containers"
    for condition in record.conditions:
        reason = blocking.get(condition)
        if reason is not None:
            return reason
    return None


class HostState:
    name = NAME
    reads = Reads.STATIC

    def __init__(self, blocking: Mapping[str, str] = BLOCKING_CONDITIONS) -> None:
        self.blocking = blocking

    def applies(self, request: PlacementRequest) -> bool:
        return True

    def key(self, request: PlacementRequest) -> Hashable:
        return None  # the same answer for every request

    def filter(self, request: PlacementRequest, host: HostView) -> Reasons:
        problem = host_problem(host.record, host.status, self.blocking)
        return (problem,) if problem else ()

    def filter_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[Reasons]:
        return [self.filter(request, host) for host in hosts]  # static: once per view


def new(args: PluginArgs) -> HostState:
    """Argument ``conditions``: the agent condition types that block placement (default: all three)."""
    check_args(NAME, args, {"conditions": (list, tuple)})
    if "conditions" not in args:
        return HostState()
    chosen = args["conditions"]
    assert isinstance(chosen, list | tuple)
    unknown = [c for c in chosen if c not in BLOCKING_CONDITIONS]
    if unknown:
        raise PlacementError(f"plugin {NAME}: unknown condition {unknown[0]!r} "
                             f"(known: {', '.join(BLOCKING_CONDITIONS)})")
    return HostState({c: BLOCKING_CONDITIONS[c] for c in chosen})
