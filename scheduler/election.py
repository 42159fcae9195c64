"""Leader election on a store lease: which scheduler instance runs the control loops, and its epoch.

Every instance runs ``Election.run(lead)``. A campaign grants a lease (TTL ``ttl_s``, 2 s by default)
and, in one transaction, creates the leader key attached to it if the key is absent
(``Store.campaign``). The winner's **epoch** is the key's create revision: unique to the term and
greater than every earlier leader's (etcd revisions only grow), so it is the fencing epoch sent to
agents, and ``Term.guard`` makes every commit of the leader conditional on the key still having it. The
others watch the key and campaign again the moment it is deleted (a resign, an expired lease), and at
least every ``recheck_s`` in case a watch missed it.

While leading, ``lead(term)`` runs as a task, and the election's ``KeepaliveRunner``
(``scheduler.keepalive``: on a thread and etcd connection of its own in the scheduler, so that a leader
whose event loop is busy keeps its term; on the caller's loop for the in-memory store) sends a refresh of
the lease every TTL/6 (at most 0.5 s) without waiting for the ones before, reads the key back every
TTL/3, and watches the key to notice at once when it goes. The task is cancelled when leadership ends:
the lease expired or was revoked, the key was deleted or replaced, or no refresh *sent* in the last
``step_down_after_s`` (2/3 of the TTL by default) was answered. That last rule is what keeps two leaders
from acting at once: the lease, counted by etcd from at least the moment our last successful refresh was
sent, outlives our stepping down by the last third of the TTL, so no one else can win before we stopped
(a leader whose loop is stalled then notices only when it runs again; the epoch guard on every commit and
the fence on every agent call keep it from acting meanwhile: see ``scheduler.keepalive``). A term ends too
when the leader's event loop has shown no sign of life for ``hang_limit_s`` (60 s by default) while its
lease is kept elsewhere: a hung leader lets its term go instead of holding it while nothing is placed
(``scheduler.liveness``). Then the instance campaigns again, like the others. When ``lead`` returns, or
``run`` is cancelled (clean shutdown), the lease is revoked: the key goes at once and the next leader
takes over without waiting for the TTL. An exception from ``lead`` resigns too, and is raised from ``run``.

``leader`` is the holder this instance last saw (for ``describe`` and metrics), ``term`` the current term
while this instance leads, ``last_loss`` why it last lost one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from scheduler.cancellation import raise_if_cancelling
from scheduler.keepalive import InLoopKeepalive, KeepaliveRunner
from scheduler.liveness import DEFAULT_HANG_LIMIT_S, MIN_HANG_LIMIT_S
from scheduler.store import base
from scheduler.store.errors import StoreError
from scheduler.store.records import LeaderRecord

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 2
MAX_REFRESH_EVERY_S = 0.5


@dataclass(frozen=True)
class ElectionSettings:
    instance: str                     # this scheduler instance's id
    address: str = ""                 # its API address, published in the leader record
    ttl_s: int = DEFAULT_TTL_S        # the lease's time to live
    step_down_after_s: float = 0.0    # keepalives failing this long end the term (0: 2/3 of ttl_s)
    recheck_s: float = 0.0            # a follower campaigns at least this often (0: 3 * ttl_s)
    # A leader whose event loop shows no sign of life this long lets its term go (0: never;
    # scheduler.liveness). Applies where the lease is kept off the loop (a keeper process or thread).
    hang_limit_s: float = DEFAULT_HANG_LIMIT_S

    def __post_init__(self) -> None:
        if not self.instance:
            raise ValueError("an election needs the instance's id")
        if self.ttl_s < 1:
            raise ValueError(f"election TTL must be at least 1 s, got {self.ttl_s}")
        if self.step_down_after_s < 0 or self.step_down_after_s >= self.ttl_s:
            raise ValueError("step_down_after_s must be below the TTL, or the lease could expire (and "
                             "another leader be elected) while this one still acts")
        if self.hang_limit_s != 0 and self.hang_limit_s < MIN_HANG_LIMIT_S:
            raise ValueError(f"the hang limit must be 0 (none) or at least {MIN_HANG_LIMIT_S:g} s, "
                             f"got {self.hang_limit_s:g}")

    @property
    def step_down_after(self) -> float:
        # Kubernetes' leader election renews a 15 s lease within 10 s: the same two thirds.
        return self.step_down_after_s or self.ttl_s * 2 / 3

    @property
    def keepalive_interval(self) -> float:
        """How often the key is read back, and the grace of a refresh sent late."""
        return self.ttl_s / 3

    @property
    def refresh_every(self) -> float:
        """How often a refresh is sent (answered or not): an answer may take up to ``step_down_after``
        less this."""
        return min(self.ttl_s / 6, MAX_REFRESH_EVERY_S)

    @property
    def recheck(self) -> float:
        return self.recheck_s or 3.0 * self.ttl_s


@dataclass(frozen=True)
class Term:
    """One instance's time as leader."""

    epoch: int          # the leader key's create revision: the fencing epoch
    lease_id: int
    instance: str
    started_at: float   # monotonic time the lease grant was sent (the lease lives at least TTL from here)

    @property
    def guard(self) -> base.LeaderGuard:
        """Pass to ``Store.commit``: the writes land only while this term lasts."""
        return base.LeaderGuard(self.epoch)


Lead = Callable[[Term], Coroutine[Any, Any, None]]


class Election:
    """One instance's candidacy (see the module docstring)."""

    def __init__(self, store: base.Store, settings: ElectionSettings, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 keepalive: KeepaliveRunner | None = None) -> None:
        self._store = store
        self._keepalive = keepalive if keepalive is not None else InLoopKeepalive(store)
        self._settings = settings
        self._clock = clock
        self._wall_clock = wall_clock
        self._leader: LeaderRecord | None = None
        self._term: Term | None = None
        self._last_loss = ""

    @property
    def leader(self) -> LeaderRecord | None:
        """The holder of the leader key as this instance last saw it (None: vacant or not known yet)."""
        return self._leader

    @property
    def term(self) -> Term | None:
        """This instance's term while it leads, else None."""
        return self._term

    @property
    def is_leader(self) -> bool:
        return self._term is not None

    @property
    def last_loss(self) -> str:
        """Why this instance last lost leadership ("" if it never did), for ``describe`` and logs."""
        return self._last_loss

    async def run(self, lead: Lead) -> None:
        """Campaigns until elected, runs ``lead(term)`` while leading, and again after losing; returns when
        ``lead`` returns (having resigned). Cancel it to resign and stop."""
        while True:
            term = await self._campaign()
            if await self._lead(term, lead):
                return

    # -- candidate -------------------------------------------------------------------------------------

    async def _campaign(self) -> Term:
        backoff = min(0.5, self._settings.ttl_s / 4)
        while True:
            sent = self._clock()
            lease_id = 0
            try:
                lease = await self._store.grant_lease(self._settings.ttl_s)
                lease_id = lease.id
                record = LeaderRecord(instance=self._settings.instance, address=self._settings.address,
                                      acquired_at=self._wall_clock())
                holder = await self._store.campaign(record, lease_id=lease.id)
            except asyncio.CancelledError:
                if lease_id:  # the key, if the campaign got through, goes with the lease: no TTL to wait
                    await self._revoke(lease_id)
                raise
            except StoreError as err:
                raise_if_cancelling()
                log.warning("election: campaign failed, retrying: %s", err)
                if lease_id:
                    await self._revoke(lease_id)
                await asyncio.sleep(backoff)
                continue
            self._leader = holder
            if holder.lease == lease.id:
                log.info("election: %s leads, epoch %d", self._settings.instance, holder.epoch)
                return Term(epoch=holder.epoch, lease_id=lease.id, instance=self._settings.instance,
                            started_at=sent)
            await self._revoke(lease.id)
            await self._wait_for_vacancy(holder)

    async def _wait_for_vacancy(self, holder: LeaderRecord) -> None:
        """Returns when the leader key is deleted — or after ``recheck`` anyway, or soon after a failure."""
        try:
            async with asyncio.timeout(self._settings.recheck):
                changes = self._store.watch(holder.revision, scope=self._store.schema.leader_range())
                async with contextlib.aclosing(changes):
                    async for change in changes:
                        if change.kind is base.ChangeKind.DELETE:
                            self._leader = None
                            return
                        if isinstance(change.value, LeaderRecord):
                            self._leader = change.value
        except TimeoutError:
            raise_if_cancelling()  # (Python 3.11's timeout can turn a cancel arriving with it into this)
            return
        except StoreError as err:
            raise_if_cancelling()
            log.warning("election: watching the leader key failed: %s", err)
            await asyncio.sleep(min(0.5, self._settings.ttl_s / 4))

    async def _revoke(self, lease_id: int) -> None:
        """Best effort, bounded: a lease left behind expires by itself."""
        try:
            async with asyncio.timeout(self._settings.ttl_s):
                await self._store.revoke_lease(lease_id)
        except (StoreError, TimeoutError) as err:
            log.info("election: could not revoke lease %x (it expires by itself): %s", lease_id, err)

    # -- leader ----------------------------------------------------------------------------------------

    async def _lead(self, term: Term, lead: Lead) -> bool:
        """Runs ``lead`` for the term; True when it returned (the caller is done), False when the term was
        lost (campaign again)."""
        self._term = term
        keeper = asyncio.create_task(self._keepalive.keep(term, self._settings, clock=self._clock),
                                     name=f"election-keepalive-{term.epoch}")
        leading = asyncio.create_task(lead(term), name=f"leader-{term.epoch}")
        try:
            await asyncio.wait({keeper, leading}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._term = None
            if keeper.done() and not keeper.cancelled():
                error = keeper.exception()
                self._last_loss = keeper.result() if error is None else f"keepalive failed: {error!r}"
            for task in (leading, keeper):
                task.cancel()
            # Leadership ends only when the leader's work has stopped: wait for its cancellation.
            await asyncio.gather(leading, keeper, return_exceptions=True)
            await self._revoke(term.lease_id)
            if self._leader is not None and self._leader.epoch == term.epoch:
                self._leader = None
        if leading.done() and not leading.cancelled():
            error = leading.exception()
            if error is not None:
                raise error
            log.info("election: %s resigned (its work returned), epoch %d", term.instance, term.epoch)
            return True
        log.warning("election: %s lost leadership (epoch %d): %s", term.instance, term.epoch, self._last_loss)
        return False


__all__ = ["DEFAULT_TTL_S", "Election", "ElectionSettings", "Lead", "Term"]
