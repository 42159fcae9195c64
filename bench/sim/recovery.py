"""Mass failure: which simulated hosts to kill, and how long their replicas took to run elsewhere.

``pick_victims`` spreads the killed hosts evenly over the host indices, so they fall in every simulator
process (each holds a contiguous block of indices) and in every zone (host *i* is in zone *i* mod 3).

The scheduler does not move a lost replica: it marks the record on the lost host ``stopping`` (its
container is retired if the host ever comes back) and creates a new replica, with a new id, for the
service. So a lost replica's *replacement* is any replica of the same service created after the kill that
runs on another host. ``replacement_times`` pairs them per service in order of running: the first lost
replica of a service is replaced when the first new one runs, and so on; a service with fewer
replacements than losses leaves the rest unreplaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def pick_victims(hosts: int, kill: int, *, zones: int = 3) -> list[int]:
    """``kill`` distinct host indices in ``range(hosts)``, ascending: the *k*-th in zone *k* mod ``zones``
    (host *i* is in zone *i* mod ``zones``), and within each zone evenly spread over its hosts — so over
    the whole index range, hence over every simulator process."""
    if not 0 < kill < hosts:
        raise ValueError(f"can kill 1 to {hosts - 1} of {hosts} hosts, not {kill}")
    if zones < 1:
        raise ValueError(f"zones must be at least 1, got {zones}")
    picked = []
    for zone in range(min(zones, kill)):
        members = len(range(zone, hosts, zones))
        wanted = len(range(zone, kill, zones))  # never more than members, as kill < hosts
        picked += [zone + zones * ((j * members) // wanted) for j in range(wanted)]
    return sorted(picked)


@dataclass(frozen=True)
class Replacements:
    """Seconds from the kill until each lost replica's replacement ran (ascending), and how many never did."""

    seconds: tuple[float, ...]
    missing: int

    @property
    def lost(self) -> int:
        return len(self.seconds) + self.missing


def replacement_times(lost: Mapping[str, int], running_new: Iterable[tuple[str, float]], *,
                      killed_at: float) -> Replacements:
    """``lost``: service → replicas it had on the killed hosts; ``running_new``: (service, time it first
    ran) of each replica created after the kill on a surviving host, in any order. New replicas of
    services that lost none (a scale-up meanwhile) are ignored; so are new replicas beyond the losses."""
    by_service: dict[str, list[float]] = {}
    for service, at in running_new:
        by_service.setdefault(service, []).append(at)
    seconds: list[float] = []
    missing = 0
    for service, count in lost.items():
        times = sorted(by_service.get(service, ()))[:count]
        seconds += [at - killed_at for at in times]
        missing += count - len(times)
    return Replacements(seconds=tuple(sorted(seconds)), missing=missing)


__all__ = ["Replacements", "pick_victims", "replacement_times"]
