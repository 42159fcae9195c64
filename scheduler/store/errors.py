"""The store's exception tree: what a caller of ``scheduler.store.base.Store`` must tell apart.

* ``StoreUnavailable`` — etcd could not be reached (or answered too slowly) within the store's bounded
  retries. The API answers UNAVAILABLE; nothing of the failed transaction is in etcd unless the message
  says the outcome is unknown (a reply lost after the request went out), in which case the caller re-reads.
* ``Conflict`` — a compare-and-swap failed: a key's mod revision is not the one the caller read (or a
  key expected absent exists). Re-read and recompute; never retry the same batch blindly.
* ``NotLeader`` — the leader guard failed: the caller's term is over (another leader, or none). A deposed
  leader must stop acting; these writes were refused as a whole.
* ``Compacted`` — a watch (or a read at a revision) asked for history etcd has compacted away: list
  again, then watch from the listing's revision.
* ``LeaseExpired`` — the lease is gone (expired or revoked): whatever was attached to it is deleted.
* ``CorruptRecord`` — a key holds bytes that are not a record of its type (the key and the reason).

Commits are split into transactions of at most 128 operations and applied in order, each atomically;
when one fails, ``applied`` on the error says how many operations of the batch (a prefix of it) went in
before, ``revisions`` their transactions' revisions and ``deleted`` the records their deletes removed
(their puts are told through ``on_landed`` as they land). A commit with several transactions in flight
(``in_flight``) counts in ``applied`` every operation that went in, which need not be a prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class StoreError(Exception):
    """Base of the store's errors. ``str(err)`` is one line a person can act on."""

    def __init__(self, message: str, *, applied: int = 0, revisions: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.applied = applied
        self.revisions = revisions
        self.deleted: tuple[Any, ...] = ()  # the records the transactions that went in deleted


class StoreUnavailable(StoreError):
    """etcd unreachable or too slow; ``outcome_unknown`` when the last transaction may have been applied."""

    def __init__(self, message: str, *, applied: int = 0, revisions: tuple[int, ...] = (),
                 outcome_unknown: bool = False) -> None:
        super().__init__(message, applied=applied, revisions=revisions)
        self.outcome_unknown = outcome_unknown


@dataclass(frozen=True)
class KeyConflict:
    """One failed comparison: the caller expected ``expected`` (0 = absent), etcd has ``actual``.
    ``written`` is the record the caller wrote; ``current`` the record the key holds now, decoded from the
    failed transaction's own read (None when absent, or when its bytes are not a record): a caller can
    learn what changed without waiting for a watch to bring it."""

    key: str
    expected: int
    actual: int
    written: Any = field(default=None, compare=False, repr=False)
    current: Any = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        def describe(revision: int) -> str:
            return "absent" if revision == 0 else f"at revision {revision}"
        return f"{self.key} (expected {describe(self.expected)}, is {describe(self.actual)})"


class Conflict(StoreError):
    """Compare-and-swap failures; ``conflicts`` names every key of the failed transaction that changed,
    ``etcd_revision`` is etcd's revision when it failed (0: not known)."""

    def __init__(self, conflicts: tuple[KeyConflict, ...], *, applied: int = 0,
                 revisions: tuple[int, ...] = (), etcd_revision: int = 0) -> None:
        shown = "; ".join(str(c) for c in conflicts[:5])
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        super().__init__(f"changed since read: {shown}{more}", applied=applied, revisions=revisions)
        self.conflicts = conflicts
        self.etcd_revision = etcd_revision

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.conflicts)


class NotLeader(StoreError):
    """The guard's epoch is no longer the leader key's create revision (``current_epoch``, 0 = no leader)."""

    def __init__(self, epoch: int, current_epoch: int, *, applied: int = 0,
                 revisions: tuple[int, ...] = ()) -> None:
        now = f"the leader's epoch is now {current_epoch}" if current_epoch else "there is no leader now"
        super().__init__(f"not the leader any more: this term's epoch is {epoch}, {now}; writes refused",
                         applied=applied, revisions=revisions)
        self.epoch = epoch
        self.current_epoch = current_epoch


class Compacted(StoreError):
    """History before ``compact_revision`` is gone: relist, then watch from the listing's revision."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(f"revision {requested} is compacted (etcd keeps history from revision "
                         f"{compact_revision}): list again, then watch from the listing's revision")
        self.requested = requested
        self.compact_revision = compact_revision


class LeaseExpired(StoreError):
    """The lease expired or was revoked; keys attached to it are deleted."""


class CorruptRecord(StoreError):
    """``key`` holds bytes that do not decode as its record type."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: unreadable record: {reason}")
        self.key = key
        self.reason = reason


__all__ = ["Compacted", "Conflict", "CorruptRecord", "KeyConflict", "LeaseExpired", "NotLeader",
           "StoreError", "StoreUnavailable"]
