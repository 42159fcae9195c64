"""What the cluster benchmark drives: a ``Peer`` (a container orchestrator set up for one run) and the
``Workload`` its replicas run and the ``BenchImage`` they run it from, the same for every peer.

A trial (``bench.cluster_scale``) times a peer's command — ``create_argv`` (a service of N replicas, from
nothing) or ``scale_argv`` (an existing service from 0 to N) — run as a whole CLI process, then polls
``running`` until N replicas run; ``remove`` and ``gone`` clear the service between trials, untimed.
Implementations: ``bench.cluster_shoal.ShoalCluster`` and ``bench.cluster_swarm.SwarmCluster``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Workload:
    """What every replica runs: the same image content, command, limits and reservations on every peer."""

    command: tuple[str, ...]
    cpus: float  # the limit (CFS quota)
    cpus_request: float  # what placement reserves (Swarm: --reserve-cpu)
    memory_mib: int  # limit and reservation


@dataclass(frozen=True)
class BenchImage:
    """One busybox image in the two forms the peers import: an OCI layout tar (``shoal image import``)
    and its single layer as a plain tar (``docker import``). Same files, same command."""

    name: str
    layout_tar: Path
    rootfs_tar: Path


class Peer(Protocol):
    name: str

    def start(self, image: BenchImage) -> dict[str, float]:
        """Bring everything up with the image on every host; returns the seconds each part took."""
        ...

    def create_argv(self, service: str, replicas: int) -> list[str]:
        """The command creating ``service`` with ``replicas`` replicas."""
        ...

    def scale_argv(self, service: str, replicas: int) -> list[str]:
        """The command setting an existing ``service`` to ``replicas`` replicas."""
        ...

    def running(self, service: str) -> int:
        """How many of the service's replicas run now (the peer's own notion, through its API)."""
        ...

    def remove(self, service: str) -> None:
        """Delete the service (returns once the request is accepted)."""
        ...

    def gone(self, service: str) -> bool:
        """The service and every container of it are gone from every host."""
        ...

    def processes(self) -> dict[str, int]:
        """The peer's long-lived processes (name → pid), for profiling and cpu accounting."""
        ...

    def stop(self) -> list[str]:
        """Tear everything down; returns problems found (never raises)."""
        ...


__all__ = ["BenchImage", "Peer", "Workload"]
