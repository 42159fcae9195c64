"""Which hosts a run of placements looks at in a large cluster: a sample, as kube-scheduler scores one.

A run (one service's batch, ``scheduler.placement.batch``) filters and scores every host once before it
places anything, so a pass that places a few replicas for each of many services costs services x hosts
(at 5,000 hosts, 5-20 ms a service on this machine: docs/benchmarks.md, "Batch placement").
kube-scheduler bounds the same cost with ``percentageOfNodesToScore``: past 100 nodes it stops filtering
once it has found a share of the nodes that fit (adaptive by default: 50 % less 1 % per 125 nodes, at
least 5 %; 10 % at 5,000 nodes) and scores only those, starting each cycle where the last one stopped.

Shoal does the same per run, with two differences that batches need:

* the sample also holds at least twice the run's replicas, so a service's batch can still spread one
  replica per host (a run of 1,000 on 5,000 hosts looks at 2,000 that fit);
* the hosts are taken in the order of a stable hash of their ids, from a point the run's first replica
  picks — a spread-out, deterministic sample that differs between services, so concurrent runs do not
  all look at the same hosts, and a sample covers every zone whatever the hosts are named.

A sample is only ever a shortcut for a choice: when a sampled run has no host left for a replica, the
rest of the run is placed against every host (``batch.place``), so "pending" always means that no host
in the cluster fits.
"""

from __future__ import annotations

from dataclasses import dataclass

# Below this many hosts, every host is looked at (kube-scheduler's minFeasibleNodesToFind).
MIN_HOSTS = 100
# The adaptive share: 50 % less 1 % per 125 hosts, at least 5 % (kube-scheduler's formula).
ADAPTIVE_BASE_PERCENT = 50
ADAPTIVE_HOSTS_PER_PERCENT = 125
ADAPTIVE_MIN_PERCENT = 5
# By default a run looks at this many fitting hosts per replica at least, so a batch can still spread.
HOSTS_PER_REPLICA = 2


@dataclass(frozen=True)
class Sampling:
    """How many fitting hosts a run looks for. ``percentage``: of the cluster's hosts, 0 for the adaptive
    share, 100 to look at every host (sampling off); ``min_hosts``: clusters up to this size are never
    sampled, and no sample holds fewer fitting hosts; ``hosts_per_replica``: nor fewer than this many
    per replica of the run."""

    percentage: int = 0
    min_hosts: int = MIN_HOSTS
    hosts_per_replica: int = HOSTS_PER_REPLICA

    def __post_init__(self) -> None:
        if not 0 <= self.percentage <= 100:
            raise ValueError(f"the percentage of hosts to score must be 0 (adaptive) to 100, "
                             f"got {self.percentage}")
        if self.min_hosts < 1:
            raise ValueError(f"the minimum sample must be at least one host, got {self.min_hosts}")
        if self.hosts_per_replica < 0:
            raise ValueError(f"hosts per replica must be >= 0, got {self.hosts_per_replica}")

    def wanted(self, hosts: int, replicas: int) -> int | None:
        """How many fitting hosts a run of ``replicas`` on ``hosts`` looks for; None: every host."""
        if self.percentage == 100 or hosts <= self.min_hosts:
            return None
        percent = self.percentage or max(ADAPTIVE_MIN_PERCENT,
                                         ADAPTIVE_BASE_PERCENT - hosts // ADAPTIVE_HOSTS_PER_PERCENT)
        count = max(self.min_hosts, hosts * percent // 100, self.hosts_per_replica * replicas)
        return count if count < hosts else None


EVERY_HOST = Sampling(percentage=100)
ADAPTIVE = Sampling()


__all__ = ["ADAPTIVE", "EVERY_HOST", "MIN_HOSTS", "Sampling"]
