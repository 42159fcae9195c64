"""Checking that nothing is duplicated or missing: etcd's replica records against what the hosts run.

After a disruption (hosts killed, a leader failover) a correct scheduler ends with, for every service,
exactly its declared number of *live* replicas — recorded with a host that is ready, not stopping — and
each replica running on one host at most. ``audit`` takes plain values (the records from an etcd
snapshot, the running containers each simulated host reports) and returns what does not hold; it
decides nothing and reads nothing itself, so its rules are tested on small listings.

A container's id is its replica's id (the scheduler creates each container with ``id=replica``), which is
how a container on a host is matched to its record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReplicaRow:
    """What the audit reads of one replica record."""

    id: str
    service: str
    host: str | None
    phase: str          # scheduler.model.ReplicaPhase's value: pending, starting, running, failed, stopping


@dataclass(frozen=True)
class Audit:
    """What does not hold (all empty when the cluster is as declared), and the totals it was judged on."""

    miscounted: dict[str, tuple[int, int]] = field(default_factory=dict)   # service: (declared, live)
    duplicated: dict[str, tuple[str, ...]] = field(default_factory=dict)  # replica: hosts running it
    live_not_running: tuple[str, ...] = ()   # live records whose host runs no such container
    running_not_live: tuple[str, ...] = ()   # containers whose record is gone, stopping or on another host
    live: int = 0
    running: int = 0
    ready_hosts: int = 0   # hosts judged ready (a leader that stalled may have judged none ready)

    @property
    def ok(self) -> bool:
        return not (self.miscounted or self.duplicated or self.live_not_running or self.running_not_live)

    def as_json(self, *, examples: int = 10) -> dict[str, object]:
        """A JSON-able summary: counts, and a few examples of each finding."""
        return {
            "ok": self.ok, "live": self.live, "running_containers": self.running,
            "ready_hosts": self.ready_hosts,
            "services_miscounted": len(self.miscounted),
            "miscounted_examples": {k: list(v) for k, v in sorted(self.miscounted.items())[:examples]},
            "duplicated": len(self.duplicated),
            "duplicated_examples": {k: list(v) for k, v in sorted(self.duplicated.items())[:examples]},
            "live_not_running": len(self.live_not_running),
            "live_not_running_examples": list(self.live_not_running[:examples]),
            "running_not_live": len(self.running_not_live),
            "running_not_live_examples": list(self.running_not_live[:examples]),
        }


def audit(*, declared: Mapping[str, int], replicas: Iterable[ReplicaRow], ready_hosts: Iterable[str],
          running: Mapping[str, Iterable[str]]) -> Audit:
    """Judge ``replicas`` (etcd) against ``declared`` counts per service and ``running`` (host id → ids of
    the containers running there, from the hosts themselves). ``ready_hosts``: hosts whose status is
    ready. A replica counts as live when it has a ready host and is not stopping."""
    ready = set(ready_hosts)
    live_on: dict[str, str] = {}
    counts = dict.fromkeys(declared, 0)
    for r in replicas:
        if r.host is None or r.host not in ready or r.phase == "stopping":
            continue
        live_on[r.id] = r.host
        counts[r.service] = counts.get(r.service, 0) + 1
    hosts_of: dict[str, list[str]] = {}
    for host, ids in running.items():
        for rid in ids:
            hosts_of.setdefault(rid, []).append(host)
    return Audit(
        miscounted={s: (declared.get(s, 0), n) for s, n in counts.items() if n != declared.get(s, 0)},
        duplicated={rid: tuple(sorted(hs)) for rid, hs in hosts_of.items() if len(hs) > 1},
        live_not_running=tuple(sorted(rid for rid, host in live_on.items()
                                      if host not in hosts_of.get(rid, ()))),
        running_not_live=tuple(sorted(rid for rid, hs in hosts_of.items()
                                      if any(live_on.get(rid) != h for h in hs))),
        live=len(live_on), running=sum(len(hs) for hs in hosts_of.values()), ready_hosts=len(ready))


__all__ = ["Audit", "ReplicaRow", "audit"]
