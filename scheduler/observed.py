"""What the agents report, as the reconcile step reads it.

A ``HostObservation`` is the leader's current view of one host's containers, kept by its agent session
(``scheduler.agents``) from a listing followed by the host's event stream: it is *complete* once the
listing arrived after the latest (re)connection, and only a complete view may be used to conclude that
a container is missing or that one no replica owns exists. ``ObservedContainer`` keeps just what the
scheduler decides on. ``ContainerUsage`` is a replica's latest usage sample, from the agent's 1 s usage
stream, for the autoscaler.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from scheduler.model import HostId, HostPort, ReplicaId, ReplicaPhase, ServiceName
from scheduler.pickled import by_fields


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    RESTARTING = "restarting"  # the agent's restart policy is waiting out a backoff
    EXITED = "exited"          # for good: the agent will not start it again by itself


class Health(enum.Enum):
    NONE = "none"
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@by_fields  # pickled cheaply: session workers send them to the leader (scheduler.pickled)
@dataclass(frozen=True, slots=True)  # slots: a leader's session worker keeps 100,000 of them
class ObservedContainer:
    id: str
    service: ServiceName | None      # from its shoal.service label (None: not the scheduler's)
    replica: ReplicaId | None        # from its shoal.replica label
    generation: int
    state: ContainerState
    health: Health = Health.NONE
    exit_code: int = 0
    reason: str = ""
    error: str = ""
    restart_count: int = 0
    ports: tuple[HostPort, ...] = ()

    @property
    def ready(self) -> bool:
        return self.state is ContainerState.RUNNING and self.health in (Health.NONE, Health.HEALTHY)

    def phase(self) -> tuple[ReplicaPhase, str]:
        """The replica phase this container means, and why (for a person)."""
        if self.state is ContainerState.RUNNING:
            if self.health is Health.UNHEALTHY:
                return ReplicaPhase.RUNNING, "running, unhealthy"
            if self.health is Health.STARTING:
                return ReplicaPhase.RUNNING, "running, health check starting"
            return ReplicaPhase.RUNNING, "running"
        if self.state is ContainerState.RESTARTING:
            return ReplicaPhase.STARTING, f"restarting after exit {self.exit_code} ({self.reason})"
        if self.state is ContainerState.CREATED:
            return ReplicaPhase.STARTING, "created, not started yet"
        detail = f": {self.error}" if self.error else ""
        return ReplicaPhase.FAILED, f"exited {self.exit_code} ({self.reason}){detail}"


@dataclass(frozen=True)
class HostObservation:
    host: HostId
    connected: bool = False
    complete: bool = False  # listed since the last (re)connection
    containers: Mapping[str, ObservedContainer] = field(default_factory=dict)

    def replica_container(self, replica: ReplicaId) -> ObservedContainer | None:
        """A replica's container is the one whose id is the replica id."""
        return self.containers.get(replica)

    def with_container(self, container_id: str, seen: ObservedContainer | None) -> HostObservation:
        """This view with one container as ``seen`` (None: gone); ``self`` when that changes nothing, or
        when ``seen`` is a report from before the container first started and it is known to have: an
        agent shows a container as created only until its first start, so such a report is late (an
        event read after the create-and-start call's answer). Taken for news, it had the next pass
        launch the replica again: 7 % more creates while placing 100,000 replicas (docs/scaling.md,
        part 16). A container removed in between (None) may be created again."""
        if seen is None:
            if container_id not in self.containers:
                return self
        else:
            known = self.containers.get(container_id)
            if known == seen or (known is not None and seen.state is ContainerState.CREATED
                                 and known.state is not ContainerState.CREATED):
                return self
        containers = dict(self.containers)
        if seen is None:
            del containers[container_id]
        else:
            containers[container_id] = seen
        return replace(self, containers=containers)


@dataclass(frozen=True)
class ContainerUsage:
    """One container's usage over the agent's last sampling interval (about a second)."""

    cpu_milli: int          # cores * 1000
    memory_bytes: int       # working set (usage - inactive file), what cAdvisor and the HPA use
    started_at: float       # when its process started (0: unknown)
    at: float               # when the agent took the sample


__all__ = ["ContainerState", "ContainerUsage", "Health", "HostObservation", "ObservedContainer"]
