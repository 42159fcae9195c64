"""A store's own writes, remembered until its watch delivers them, so that their echo is not decoded again.

The leader reads back through its watch nearly everything it writes: every replica it places, every
phase it records. Decoding those echoes (JSON into records) was 7 % of its cpu while placing at 5,000
hosts (docs/scaling.md, part 11), to rebuild records it already holds. A key's value at a mod revision is the
one the transaction committed at that revision wrote, so when a watch event names a key and a revision
this store committed, the record it committed there (with that revision) *is* the event's record; and
records round-trip through their encoding (``tests/unit/scheduler/test_records.py``), so that record
equals what decoding the event's bytes would give. Sharing it also leaves the leader one object per
record where its mirror and its follower each held their own.

Entries are forgotten once a watch has delivered past their revision (a watch that lags behind another
decodes instead: slower, never different), and at most ``LIMIT`` are kept, for a store whose writes no
watch follows.
"""

from __future__ import annotations

from collections import deque

from scheduler.store.base import Committed
from scheduler.store.records import Record

LIMIT = 1 << 17  # entries: a reference each (the records are held by whoever wrote them anyway)


class Echoes:
    """What this store committed, by key, until a watch delivers it."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._known: dict[str, tuple[int, Record]] = {}
        self._order: deque[tuple[int, str]] = deque()  # (revision, key) as committed

    def __len__(self) -> int:
        return len(self._known)

    def expect(self, committed: Committed) -> None:
        """Remember what a commit put (its records, each with the revision it was written at)."""
        known, order = self._known, self._order
        for key, record in zip(committed.keys, committed.written, strict=True):
            revision = record.revision
            known[key] = (revision, record)
            order.append((revision, key))
        while len(order) > self._limit:
            self._forget(*order.popleft())

    def take(self, key: str, revision: int) -> Record | None:
        """The record this store put at ``key`` in the transaction at ``revision``, if it remembers it."""
        entry = self._known.get(key)
        return entry[1] if entry is not None and entry[0] == revision else None

    def passed(self, revision: int) -> None:
        """A watch has delivered everything before ``revision``: what was committed before is forgotten."""
        order = self._order
        while order and order[0][0] < revision:
            self._forget(*order.popleft())

    def _forget(self, revision: int, key: str) -> None:
        entry = self._known.get(key)
        if entry is not None and entry[0] == revision:
            del self._known[key]


__all__ = ["LIMIT", "Echoes"]
