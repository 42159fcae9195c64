"""What etcd itself says while a scale run loads it, lined up with the lease probe's slow renewals.

Part 7's probe (``bench.sim.lease_probe``) showed etcd taking up to 17.7 s to renew a lease, right where
the leader's keeper gave up; it could not say why. Two suspects, each with its own evidence:

* an **apply backlog**: etcd's leader applies every committed entry it has pending before it renews a
  lease, so a renewal waits behind the writes in flight. ``EtcdSampler`` scrapes each member's
  ``/metrics`` every few seconds: proposals committed minus applied (the backlog), pending proposals,
  puts (the write rate), slow applies, heartbeat send failures, backend commit time, leader changes;
* **elections inside etcd**: three members on two shared cores can miss heartbeats, and while etcd has no
  leader nothing is renewed. ``log_events`` reads the members' logs (zap JSON lines) for elections, lost
  leaders, late heartbeats and slow applies, with their times.

``line_up`` then says, for every renewal slower than a keeper's refresh interval, what etcd did meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

WANTED = (
    "etcd_server_is_leader",
    "etcd_server_has_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_slow_apply_total",
    "etcd_server_heartbeat_send_failures_total",
    "etcd_server_slow_read_indexes_total",
    "etcd_mvcc_put_total",
    "etcd_disk_backend_commit_duration_seconds_sum",
    "etcd_disk_backend_commit_duration_seconds_count",
    "etcd_disk_wal_fsync_duration_seconds_sum",
    "etcd_disk_wal_fsync_duration_seconds_count",
)
SLOW_RENEWAL_S = 3.3   # a keeper's refresh interval at TTL 10: slower renewals are lined up
WINDOW_BEFORE_S = 10.0  # what etcd did this long before a slow renewal began counts too


def parse_metrics(text: str, wanted: Iterable[str] = WANTED) -> dict[str, float]:
    """The wanted unlabelled samples of a Prometheus text exposition."""
    names = set(wanted)
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition(" ")
        if name in names:
            try:
                values[name] = float(rest.split()[0])
            except (ValueError, IndexError):
                continue
    return values


@dataclass(frozen=True)
class Sample:
    wall: float
    member: str
    values: Mapping[str, float]

    @property
    def backlog(self) -> float:
        """Proposals committed but not applied yet on this member."""
        return (self.values.get("etcd_server_proposals_committed_total", 0.0)
                - self.values.get("etcd_server_proposals_applied_total", 0.0))


@dataclass
class EtcdSampler:
    members: Mapping[str, str]          # name -> client URL
    interval: float = 5.0
    timeout: float = 4.0
    samples: list[Sample] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # member -> scrapes that failed or timed out

    def _scrape(self, url: str) -> str:
        with urllib.request.urlopen(f"{url}/metrics", timeout=self.timeout) as response:
            text: str = response.read().decode()
            return text

    async def run(self) -> None:
        """Samples every member every ``interval`` until cancelled."""
        while True:
            began = time.monotonic()
            for name, url in self.members.items():
                wall = time.time()
                try:
                    text = await asyncio.to_thread(self._scrape, url)
                except OSError:
                    self.failures[name] += 1
                    continue
                self.samples.append(Sample(wall, name, parse_metrics(text)))
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))

    def result(self) -> dict[str, Any]:
        return summarize_samples(self.samples, self.failures)


def _by_member(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.wall):
        out.setdefault(sample.member, []).append(sample)
    return out


def _growth(series: Sequence[Sample], name: str) -> float:
    if not series:
        return 0.0
    return series[-1].values.get(name, 0.0) - series[0].values.get(name, 0.0)


def put_rates(samples: Sequence[Sample]) -> list[tuple[float, float, float]]:
    """(start, end, puts/s) between consecutive samples of the member that led at the interval's end
    (every member applies every put; the leader's view is the one renewals wait on)."""
    rates: list[tuple[float, float, float]] = []
    for series in _by_member(samples).values():
        for before, after in itertools.pairwise(series):
            if not after.values.get("etcd_server_is_leader"):
                continue
            dt = after.wall - before.wall
            name = "etcd_mvcc_put_total"
            puts = after.values.get(name, 0.0) - before.values.get(name, 0.0)
            if dt > 0:
                rates.append((before.wall, after.wall, puts / dt))
    return sorted(rates)


def summarize_samples(samples: Sequence[Sample], failures: Mapping[str, int]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, series in _by_member(samples).items():
        commits = _growth(series, "etcd_disk_backend_commit_duration_seconds_count")
        members[name] = {
            "samples": len(series),
            "scrapes_failed": failures.get(name, 0),
            "leader_changes": _growth(series, "etcd_server_leader_changes_seen_total"),
            "slow_applies": _growth(series, "etcd_server_slow_apply_total"),
            "heartbeat_send_failures": _growth(series, "etcd_server_heartbeat_send_failures_total"),
            "slow_read_indexes": _growth(series, "etcd_server_slow_read_indexes_total"),
            "max_apply_backlog": max((s.backlog for s in series), default=0.0),
            "max_proposals_pending": max((s.values.get("etcd_server_proposals_pending", 0.0) for s in series),
                                         default=0.0),
            "backend_commit_mean_ms": round(
                1000 * _growth(series, "etcd_disk_backend_commit_duration_seconds_sum") / commits, 2)
            if commits else None,
        }
    rates = put_rates(samples)
    busiest = sorted(rates, key=lambda r: -r[2])[:5]
    return {"members": members,
            "puts_per_s_max": round(max((r[2] for r in rates), default=0.0), 1),
            "busiest": [[_clock(a), round(b - a, 1), round(r, 1)] for a, b, r in busiest]}


# -- the members' logs -----------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|µs|us|ns|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}
_RAFT_ID = re.compile(r"\b[0-9a-f]{16}\b")
_TERM = re.compile(r"term \d+")


def go_duration(text: str) -> float:
    """Seconds in a Go duration string ("1m2.5s", "808.546µs"); 0 for anything else."""
    return sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(text)) if text else 0.0


@dataclass(frozen=True)
class LogEvent:
    wall: float
    member: str
    kind: str      # election | lost-leader | late-heartbeat | slow-apply | slow-fsync | other warnings
    took: float    # seconds the line reports (took / exceeded-duration), 0 if none
    message: str


def _kind(entry: Mapping[str, Any]) -> str | None:
    msg = str(entry.get("msg", ""))
    if "elected leader" in msg:
        return "election"
    if "lost leader" in msg:
        return "lost-leader"
    if "heartbeat on time" in msg:
        return "late-heartbeat"
    if "took too long" in msg:
        return "slow-apply"
    if "slow fdatasync" in msg:
        return "slow-fsync"
    if entry.get("level") in ("warn", "error"):
        return "warning: " + _TERM.sub("term N", _RAFT_ID.sub("ID", msg))[:80]
    return None


def log_events(paths: Mapping[str, Path], since: float = 0.0) -> list[LogEvent]:
    """What the members' zap logs say from ``since`` (wall time) on, in time order."""
    events: list[LogEvent] = []
    for member, path in paths.items():
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
                wall = datetime.fromisoformat(str(entry["ts"]).replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            kind = _kind(entry)
            if kind is None or wall < since:
                continue
            took = go_duration(str(entry.get("took") or entry.get("exceeded-duration") or ""))
            events.append(LogEvent(wall, member, kind, took, str(entry.get("msg", ""))[:160]))
    return sorted(events, key=lambda e: e.wall)


def summarize_events(events: Sequence[LogEvent]) -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {}
    for event in events:
        entry = kinds.setdefault(event.kind, {"count": 0, "max_took_s": 0.0})
        entry["count"] += 1
        entry["max_took_s"] = round(max(entry["max_took_s"], event.took), 3)
    elections = [[_clock(e.wall), e.member, e.message] for e in events if e.kind == "election"]
    return {"by_kind": kinds, "elections": elections[:50]}


# -- lining up -------------------------------------------------------------------------------------------

def line_up(slow: Sequence[tuple[float, float]], samples: Sequence[Sample],
            events: Sequence[LogEvent], *, threshold: float = SLOW_RENEWAL_S) -> list[dict[str, Any]]:
    """For every renewal (wall time it began, seconds) at least ``threshold`` slow: what etcd did from
    ``WINDOW_BEFORE_S`` before it began until it ended."""
    rates = put_rates(samples)
    by_member = _by_member(samples)
    out: list[dict[str, Any]] = []
    for began, took in sorted(slow):
        if took < threshold:
            continue
        lo, hi = began - WINDOW_BEFORE_S, began + took
        overlapping = [r for a, b, r in rates if b >= lo and a <= hi]
        window = [s for series in by_member.values() for s in series if lo <= s.wall <= hi]
        seen = Counter(e.kind for e in events if lo <= e.wall <= hi)
        out.append({
            "at": _clock(began), "took_s": round(took, 3),
            "puts_per_s_max": round(max(overlapping, default=0.0), 1),
            "max_apply_backlog": max((s.backlog for s in window), default=0.0),
            "max_proposals_pending": max((s.values.get("etcd_server_proposals_pending", 0.0)
                                          for s in window), default=0.0),
            "etcd_log": dict(seen),
        })
    return out


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


__all__ = ["EtcdSampler", "LogEvent", "Sample", "go_duration", "line_up", "log_events", "parse_metrics",
           "put_rates", "summarize_events", "summarize_samples"]
