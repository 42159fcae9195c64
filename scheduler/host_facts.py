"""What a reconcile pass reads of each host, kept between passes.

Every pass reads, for every registered host, its status as the leader judges it now, its record with the
room and conditions its agent reported last, and its session's observation. Worked out afresh for all
of them, that was most of what a pass that decides little costs (13-24 ms of cpu at 5,000 hosts in
``bench/pass_cost.py``), and through a mass failure at that size, when dozens of passes each decide a
little, it took as much of the leader as placing did (docs/scaling.md, part 36). Nearly every host is
the same as at the last pass, and everything these facts are worked out from says when it changes:

* the host's record and recorded status: the mirror (``Mirror.hosts_changed``, any put or drop);
* its session's observation, error, "agent down" and the room a pass reads (``agents.decided_by``): the
  session (``on_change``, which the controller passes here as ``stale``);
* its session itself, made or closed: the controller's ``_sync_sessions``;
* its start failures: ``StartHealth.take_changed``; a host with failures counted is judged every pass,
  since whether it is "failing" depends on the clock too.

So a scoped pass works them out again for those hosts alone; a full pass (the first of a term, the safety
net every ``FULL_PASS_INTERVAL``, the pass after a failed commit) for every host, which also bounds what a
change that was not said could cost. What is worked out is the controller's: ``judge`` and ``fresh``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from scheduler.model import HostAdmin, HostId, HostRecord, HostStatus
from scheduler.observed import HostObservation


class _Session(Protocol):
    @property
    def observation(self) -> HostObservation: ...

    @property
    def agent_down(self) -> bool: ...


class _Mirror(Protocol):
    @property
    def hosts(self) -> Mapping[HostId, HostRecord]: ...


class HostFacts:
    def __init__(self) -> None:
        self.statuses: dict[HostId, HostStatus] = {}
        self.records: dict[HostId, HostRecord] = {}        # with the room their agents reported
        self.observed: dict[HostId, HostObservation] = {}  # each session's observation
        self.not_ready: set[HostId] = set()
        self.agent_down: set[HostId] = set()               # sessions whose agent refused the connection
        self.draining: set[HostId] = set()                 # hosts an operator is draining
        self._stale: set[HostId] = set()
        self._of: object | None = None  # the mirror these were worked out from (a new term's: all again)

    def of(self, mirror: object) -> bool:
        """Whether these facts were worked out from ``mirror`` (a term's, or a resync's)."""
        return self._of is mirror

    def stale(self, host: HostId) -> None:
        """Something ``host``'s facts are worked out from changed: the next ``refresh`` does it again."""
        self._stale.add(host)

    def refresh(self, mirror: _Mirror, sessions: Mapping[HostId, _Session], *,
                judge: Callable[[HostId], HostStatus], fresh: Callable[[HostRecord], HostRecord],
                also: Iterable[HostId] = (), whole: bool = False) -> set[HostId] | None:
        """Bring the facts up to date: of the hosts that changed and ``also`` (or, if ``whole`` or the
        mirror is another, of every host). The hosts worked out again; None if every one was."""
        if whole or self._of is not mirror:
            self._of = mirror
            self._stale = set()
            self.statuses = {h: judge(h) for h in mirror.hosts}
            self.records = {h: fresh(r) for h, r in mirror.hosts.items()}
            self.observed = {h: s.observation for h, s in sessions.items()}
            self.not_ready = {h for h, status in self.statuses.items() if not status.ready}
            self.agent_down = {h for h, s in sessions.items() if s.agent_down}
            self.draining = {h for h, r in mirror.hosts.items() if r.admin is HostAdmin.DRAINING}
            return None
        hosts, self._stale = self._stale, set()
        hosts.update(also)
        statuses, records, observed = self.statuses, self.records, self.observed
        for host in hosts:
            record = mirror.hosts.get(host)
            ready = True
            if record is None:
                statuses.pop(host, None)
                records.pop(host, None)
            else:
                status = statuses[host] = judge(host)
                records[host] = fresh(record)
                ready = status.ready
            session = sessions.get(host)
            if session is None:
                observed.pop(host, None)
            else:
                observed[host] = session.observation
            _hold(self.not_ready, host, not ready)
            _hold(self.draining, host, record is not None and record.admin is HostAdmin.DRAINING)
            _hold(self.agent_down, host, session is not None and session.agent_down)
        return hosts


def _hold(members: set[HostId], host: HostId, member: bool) -> None:
    if member:
        members.add(host)
    else:
        members.discard(host)


__all__ = ["HostFacts"]
