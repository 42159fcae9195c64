"""What the hosts report, recorded while a pass's writes are in flight.

A pass commits its writes and only then is the next pass decided: at 5,000 hosts a mass failure's
marking pass waited 2.5-3.2 s for etcd, and its launches went out as their records landed (part 16).
The replacements started during that wait but were recorded running only by a later pass, 2.9-4.7 s
after they started (docs/scaling.md, part 16). The leader's loop is free while it waits for etcd: an
``InFlightRecorder`` uses that time to write what the absorb rule alone decides
(``reconcile.record_observed``) for the containers its hosts report meanwhile.

It never races the pass whose writes are in flight:

* a replica that pass writes is recorded only once that write has landed, from the record as it landed
  (``on_landed`` tells the transaction's revision); one that pass deletes, never;
* every write is a compare-and-swap under the term's guard, as a pass's are, pipelined beside the pass's
  own transactions, not ahead of them: a commit one after the other would go ahead (``txn.Gate``) and
  hold the pass's placements back, whose launches matter more than records of starts (part 17);
* ``run_until`` returns only once its own last commit has, so the next pass reads a mirror with its
  writes in it.

A conflict leaves the replica to the next pass, which decides from what the key holds now: the failed
transaction read it, and ``Mirror.learn`` keeps it (the watch brings it too, late when it runs behind).

The same recorder also runs *ahead* of a pass (``Controller._record_ahead``): what was heard since the
last pass is written while the pass decides and beside the pass's own writes; the pass, and the recorder
of its commit until that write is done, treat those replicas as busy (they decide nothing about them),
and the pass ends only once that write has too. A start heard while a pass is deciding then waits for
that pass's commit, not for the pass after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence

from scheduler import reconcile
from scheduler.evolve import evolve
from scheduler.mirror import Mirror
from scheduler.model import HostId, Replica, ReplicaId
from scheduler.observed import HostObservation, ObservedContainer
from scheduler.store import base
from scheduler.store.errors import Conflict, NotLeader, StoreUnavailable
from scheduler.store.records import Record
from scheduler.timings import NO_TIMINGS, Timings

log = logging.getLogger(__name__)

class InFlightRecorder:
    """Records, during one pass's commit, the replicas whose containers its hosts report changed.

    ``seen`` is each host's observation as the pass read it (the pass decided on those containers);
    ``observation`` gives a host's current one; ``busy`` the containers with an agent action in flight;
    reports arriving within ``coalesce`` seconds are recorded in one commit (the controller's own)."""

    def __init__(self, store: base.Store, guard: base.LeaderGuard, *, mirror: Mirror,
                 ops: Sequence[base.Op], seen: Mapping[HostId, HostObservation],
                 observation: Callable[[HostId], HostObservation | None],
                 busy: Callable[[], Collection[str]], on_deposed: Callable[[str], None],
                 coalesce: float, in_flight: int = 2, timings: Timings = NO_TIMINGS) -> None:
        self._store = store
        self._timings = timings  # told of the records it writes as they land (starts, mostly)
        self._in_flight = max(2, in_flight)  # 1 would go ahead of the pass's transactions
        self._guard = guard
        self._mirror = mirror
        self._seen = seen
        self._observation = observation
        self._busy = busy
        self._on_deposed = on_deposed
        self._coalesce = coalesce
        # The pass's replica puts not landed yet, and the replicas it deletes (never recorded).
        self._unlanded = {op.record.id for op in ops
                          if isinstance(op, base.Put) and isinstance(op.record, Replica)}
        self._deleting = {op.record.id for op in ops
                          if isinstance(op, base.Delete) and isinstance(op.record, Replica)}
        self._landed: dict[ReplicaId, tuple[int, Replica]] = {}  # as given, and the revision it landed at
        self._examined: dict[HostId, HostObservation | None] = {}  # what this recorder last looked at
        self._heard: set[HostId] = set()
        self._retry: set[tuple[HostId, ReplicaId]] = set()  # not recordable yet: in flight, or busy
        self._wake = asyncio.Event()
        self._stopped = False
        self.recorded = 0  # replicas written (the long pass's log line, tests)
        self.outcome_unknown = False  # a write of its own failed as it was sent: it may have landed

    # -- told by the controller -------------------------------------------------------------------

    def heard(self, host: HostId) -> None:
        """A session reported a change."""
        self._heard.add(host)
        self._wake.set()

    def poke(self) -> None:
        """Something ended (an agent action): what waited for it may be recordable now."""
        if self._retry:
            self._wake.set()

    def landed(self, revision: int, records: tuple[Record, ...]) -> None:
        """A transaction of the pass's commit landed."""
        for record in records:
            if isinstance(record, Replica):
                self._unlanded.discard(record.id)
                self._landed[record.id] = (revision, record)
        if self._retry:
            self._wake.set()

    # -- the loop ---------------------------------------------------------------------------------

    async def run_until(self, commit: asyncio.Future[base.Committed]) -> None:
        """Record what is heard until ``commit`` is done, and this recorder's own last write too."""
        while not commit.done() and not self._stopped:
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((commit, woken), return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            if commit.done():
                return
            await asyncio.sleep(self._coalesce)
            self._wake.clear()
            writes = self.decide()
            if writes:
                await self.write(writes)

    def decide(self) -> tuple[reconcile.WriteReplica, ...]:
        """The writes for what was heard since the last call (pure but for this recorder's bookkeeping)."""
        busy = self._busy()
        candidates: dict[ReplicaId, Replica] = {}  # once each: heard again and waiting too
        observed: dict[HostId, HostObservation] = {}
        heard, self._heard = self._heard, set()
        retry, self._retry = self._retry, set()
        for host in heard:
            obs = self._observation(host)
            before = self._examined[host] if host in self._examined else self._seen.get(host)
            self._examined[host] = obs
            if obs is None:
                continue
            old: Mapping[str, ObservedContainer] = before.containers if before is not None else {}
            for cid, container in obs.containers.items():
                if container is not old.get(cid):  # unchanged since the pass (or this) read it: decided
                    self._consider(host, ReplicaId(cid), obs, busy, candidates, observed)
        for host, rid in retry:
            obs = self._observation(host)
            if obs is not None and rid in obs.containers:
                self._consider(host, rid, obs, busy, candidates, observed)
        return reconcile.record_observed(candidates.values(), observed, busy=busy, now=time.time())

    def _consider(self, host: HostId, rid: ReplicaId, obs: HostObservation, busy: Collection[str],
                  candidates: dict[ReplicaId, Replica], observed: dict[HostId, HostObservation]) -> None:
        if rid in self._deleting:
            return
        if rid in self._unlanded or rid in busy:
            self._retry.add((host, rid))
            return
        replica = self._record(rid)
        if replica is not None and replica.host == host:
            candidates[rid] = replica
            observed[host] = obs

    def _record(self, rid: ReplicaId) -> Replica | None:
        """The replica's latest record: the mirror's, or the pass's write if that landed later."""
        known = self._mirror.replicas.get(rid)
        landed = self._landed.get(rid)
        if landed is None or (known is not None and known.revision >= landed[0]):
            return known
        return evolve(landed[1], revision=landed[0])

    async def write(self, writes: tuple[reconcile.WriteReplica, ...]) -> None:
        """Commit ``writes`` (what ``decide`` returned), each put into the mirror as it lands."""
        mirror = self._mirror

        def landed(revision: int, records: tuple[Record, ...]) -> None:
            for record in records:
                mirror.put(evolve(record, revision=revision))
            self.recorded += len(records)
            self._timings.written(records)

        try:
            await self._store.commit([base.Put(w.replica) for w in writes], guard=self._guard,
                                     in_flight=self._in_flight, on_landed=landed)
        except Conflict as err:
            log.info("recording what hosts report conflicted on %s; the next pass decides it",
                     ", ".join(err.keys[:5]))
            mirror.learn(err)  # from what the keys hold now (``Mirror.learn``), not the watch's late echo
        except NotLeader as err:
            self._stopped = True
            self._on_deposed(str(err))
        except StoreUnavailable as err:
            self._stopped = True  # the pass's own commit meets it too, and says so
            self.outcome_unknown = self.outcome_unknown or err.outcome_unknown  # it may have landed
            log.debug("cannot record what hosts report: %s", err)


__all__ = ["InFlightRecorder"]
