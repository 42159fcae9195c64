"""Scheduler instances, visible: each ``shoal-scheduler serve`` publishes itself while it runs.

An instance writes an ``InstanceRecord`` (its id, API addresses, --http-listen address, start time and
version) under ``{prefix}schedulers/{instance}``, attached to a lease of its own — not the election's,
which exists only while campaigning or leading — and refreshes that lease every TTL/3. The record goes
when the instance stops (``close`` revokes the lease) or dies (etcd expires the lease after its TTL).
When the lease is lost anyway (etcd unreachable for longer than the TTL), a new lease and record are
made as soon as etcd answers again. The write is a compare-and-swap like every other: "absent" the first
time, and, when a record of the same id is already there (the same ``--instance-id`` restarted before
its old lease expired), that record's revision — the id is this process's now.

``list_instances`` is the read side for ``ListSchedulers``: the records, each marked with whether it
holds the leader key. Nothing here takes part in the election or decides anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
from dataclasses import dataclass

from scheduler.cancellation import raise_if_cancelling
from scheduler.store import base
from scheduler.store.errors import Conflict, LeaseExpired, StoreError
from scheduler.store.records import InstanceRecord, LeaderRecord

log = logging.getLogger(__name__)

# Longer than the election's: the record only informs `get schedulers`, and its lease is refreshed on the
# busy main loop, where a 2 s TTL was lost (and the record rewritten) at every long reconcile pass.
DEFAULT_TTL_S = 10
RETRY_S = 0.5


def shoal_version() -> str:
    try:
        return importlib.metadata.version("shoal")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class InstanceView:
    """One instance as ``ListSchedulers`` shows it."""

    record: InstanceRecord
    leader: bool


@dataclass(frozen=True)
class InstanceListing:
    instances: tuple[InstanceView, ...]
    leader: LeaderRecord | None  # the leader key's holder (None: no leader right now)
    revision: int


async def list_instances(store: base.Store) -> InstanceListing:
    """The registered instances (id order) and who leads. The leader key is read after the instances,
    so a leader that just started may lead without being listed yet; never the reverse for long."""
    listing = await store.list(store.schema.scheduler_instances())
    leader = await store.get(store.schema.leader())
    lead = leader.instance if leader is not None else None
    views = tuple(InstanceView(record, record.instance == lead) for record in listing.items)
    return InstanceListing(views, leader, listing.revision)


class InstanceRegistration:
    """Keeps this instance's record in the store while ``run`` runs (see the module docstring)."""

    def __init__(self, store: base.Store, record: InstanceRecord, *, ttl_s: int = DEFAULT_TTL_S) -> None:
        if ttl_s < 1:
            raise ValueError(f"instance lease TTL must be at least 1 s, got {ttl_s}")
        self._store = store
        self._record = record
        self._ttl_s = ttl_s
        self._lease = 0
        self.registered = asyncio.Event()  # set while the record is known to be in the store

    @property
    def record(self) -> InstanceRecord:
        return self._record

    @property
    def lease_id(self) -> int:
        """The lease the record is attached to (0 while not registered)."""
        return self._lease

    async def run(self) -> None:
        """Register, keep the lease alive, register again when it is lost; until cancelled."""
        while True:
            try:
                if not self._lease:
                    await self._register()
                    log.info("scheduler instance %s registered (lease %x)", self._record.instance,
                             self._lease)
                await asyncio.sleep(self._ttl_s / 3)
                await self._store.refresh_lease(self._lease)
            except LeaseExpired:
                log.warning("scheduler instance %s: its lease expired; registering again",
                            self._record.instance)
                self._lost()
            except StoreError as err:
                raise_if_cancelling()
                log.warning("scheduler instance %s: cannot reach the store (%s); retrying",
                            self._record.instance, err)
                await asyncio.sleep(RETRY_S)

    def _lost(self) -> None:
        self._lease = 0
        self.registered.clear()

    async def _register(self) -> None:
        lease = await self._store.grant_lease(self._ttl_s)
        try:
            await self._put(lease.id)
        except BaseException:
            with contextlib.suppress(StoreError):
                await self._store.revoke_lease(lease.id)
            raise
        self._lease = lease.id
        self.registered.set()

    async def _put(self, lease_id: int) -> None:
        ref = self._store.schema.scheduler_instance(self._record.instance)
        expected = 0
        for _ in range(3):
            try:
                await self._store.commit([base.Put(self._record, expected=expected, lease=lease_id)])
                return
            except Conflict:
                current = await self._store.get(ref)  # our id, left by an earlier run of this instance
                expected = current.revision if current is not None else 0
        raise StoreError(f"scheduler instance {self._record.instance}: its record kept changing under it")

    async def close(self) -> None:
        """Removes the record now (revokes the lease), best effort and bounded: a lease left behind
        expires by itself."""
        lease, self._lease = self._lease, 0
        self.registered.clear()
        if not lease:
            return
        try:
            async with asyncio.timeout(self._ttl_s):
                await self._store.revoke_lease(lease)
        except (StoreError, TimeoutError) as err:
            log.info("scheduler instance %s: could not revoke lease %x (it expires by itself): %s",
                     self._record.instance, lease, err)


__all__ = ["InstanceListing", "InstanceRegistration", "InstanceView", "list_instances", "shoal_version"]
