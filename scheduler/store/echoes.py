"""A store's own writes, remembered until its watch delivers them, so that their echo is not decoded again.

The leader reads back through its watch nearly everything it writes: every replica it places, every
phase it records. Decoding those echoes (JSON into records) was 7 % of its cpu while placing at 5,000
hosts (docs/scaling.md, part 11), to rebuild records it already holds. A key's value at a mod revision is the
one the transaction committed at that revision wrote, so when a watch event names a key and a revision
this store committed, the record it committed there (with that revision) *is* the event's record; and
records round-trip through their encoding (``tests/unit/scheduler/test_records.py``), so that record
equals what decoding the event's bytes would give. Sharing it also leaves the leader one object per
record where its mirror and its follower each held their own.

Entries are kept by key and revision (a key put again keeps both puts: a watch running behind delivers
the first after the second has landed), and forgotten once a watch has delivered past their revision (a
watch that lags behind another decodes instead: slower, never different); at most ``LIMIT`` are kept,
for a store whose writes no watch follows.

A watch can deliver a transaction's puts before its reply arrives, and a commit of several transactions
in flight (a placing pass's) hears of its revisions only when the last has landed: with only the
revisions to match on, 88 % of a 20,000-put commit's echoes were decoded after all
(``bench/echo_cost.py``), 7 % of the leader's samples while placing at 5,000 hosts (docs/scaling.md,
part 25). So the puts of a commit under way are known by key and bytes as well (``landing``): a put at
that key with exactly the bytes this store sent decodes to the record it sent (records round-trip),
with the revision the watch reports, whoever wrote it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Protocol

from scheduler.evolve import evolve
from scheduler.store.base import Committed
from scheduler.store.records import LeaderRecord, Record

LIMIT = 1 << 17  # entries: a reference each (the records are held by whoever wrote them anyway)


class Write(Protocol):
    """A write of a commit under way (``txn.Write``): a put of ``record`` as ``value``, or a delete (None)."""

    @property
    def key(self) -> str: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def record(self) -> Record: ...


class _Landing:
    """A put under way: the bytes sent, the record they encode, and the record an early echo was given."""

    __slots__ = ("echoed", "record", "value")

    def __init__(self, value: bytes, record: Record) -> None:
        self.value, self.record = value, record
        self.echoed: Record | None = None


class Echoes:
    """What this store committed, by key, until a watch delivers it."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        # By key and revision, not by key: a replica is put twice within seconds (placed, then running),
        # and a watch running behind that long delivers the first put after the second has landed. Kept
        # by key alone, the first echo was decoded: the leader spent 3.0-4.7 % of its samples decoding what
        # its watch brought while placing at 5,000 hosts, 0.7 % since (docs/scaling.md, part 35).
        self._known: dict[tuple[str, int], Record] = {}
        self._order: deque[tuple[int, str]] = deque()  # (revision, key) as committed
        # Puts of commits under way, by key: more than one when two commits in flight put the same key
        # (a pass's placement landed, and the recording of its start sent before the pass's last
        # transaction lands), each matched by its own bytes.
        self._landing: dict[str, list[_Landing]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def expect(self, committed: Committed) -> None:
        """Remember what a commit put (its records, each with the revision it was written at). A put whose
        echo came before the commit's reply is the record that echo was given: one object, not two."""
        known, order, landing = self._known, self._order, self._landing
        if landing:
            committed.share(lambda key, revision: _echoed(landing.get(key, ()), revision))
        for key, record in zip(committed.keys, committed.written, strict=True):
            revision = record.revision
            known[key, revision] = record
            order.append((revision, key))
        while len(order) > self._limit:
            self._forget(*order.popleft())

    def landing(self, writes: Iterable[Write]) -> None:
        """A commit's writes about to be sent: its puts matched by their bytes until ``settled``."""
        landing = self._landing
        for w in writes:
            # A leader key's record takes its epoch and lease from the key's metadata, not its bytes.
            if w.value is not None and not isinstance(w.record, LeaderRecord):
                entries = landing.get(w.key)
                if entries is None:
                    landing[w.key] = [_Landing(w.value, w.record)]
                else:
                    entries.append(_Landing(w.value, w.record))

    def settled(self, writes: Iterable[Write]) -> None:
        """A commit's writes landed (and ``expect`` ran) or failed: forgotten (another commit's put of the
        same key stays)."""
        landing = self._landing
        for w in writes:
            entries = landing.get(w.key)
            if entries is None:
                continue
            entries[:] = [entry for entry in entries if entry.value is not w.value]
            if not entries:
                del landing[w.key]

    def take(self, key: str, revision: int, value: bytes | None = None) -> Record | None:
        """The record this store put at ``key`` in the transaction at ``revision``, if it remembers it; or,
        given the bytes the watch delivered, the record of a put under way that sent exactly those."""
        entry = self._known.get((key, revision))
        if entry is not None:
            return entry
        if value is not None:
            for sent in self._landing.get(key, ()):
                if sent.value == value:
                    echoed = _echoed((sent,), revision)
                    if echoed is None:
                        echoed = sent.echoed = evolve(sent.record, revision=revision)
                    return echoed
        return None

    def passed(self, revision: int) -> None:
        """A watch has delivered everything before ``revision``: what was committed before is forgotten."""
        order = self._order
        while order and order[0][0] < revision:
            self._forget(*order.popleft())

    def _forget(self, revision: int, key: str) -> None:
        self._known.pop((key, revision), None)


def _echoed(sent: Iterable[_Landing], revision: int) -> Record | None:
    """The record an early echo at ``revision`` was given, if one of these puts had one."""
    for entry in sent:
        echoed = entry.echoed
        if echoed is not None and echoed.revision == revision:
            return echoed
    return None


__all__ = ["LIMIT", "Echoes", "Write"]
