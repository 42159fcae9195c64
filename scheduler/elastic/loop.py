"""The leader's elastic loop: every ``interval`` (1 s, ``--elastic-interval``), decide each host group's
hosts, commit the decision, and tell the provider.

It runs in the leader beside the reconcile loop and the autoscaler, over the same mirror of etcd. One
tick:

1. reads the mirror (host groups and their statuses, hosts and their statuses, services, replicas) and
   runs the pure step (``scheduler.elastic.step``) on it;
2. commits the plan in one transaction guarded by the leader's epoch: every changed group status (a
   compare-and-swap on its revision; a new provider request is in it with state ``pending``, so its id is
   stored before any attempt), every host to drain (its record's admin set to ``draining``, a CAS on the
   record) and every host to forget (its record and its status deleted, each a CAS). A conflict means the
   mirror was behind: the watch brings the news and the next tick decides again;
3. starts an attempt for each pending request that is due (``next_attempt_at <= now``) and not being
   attempted already, of groups that name a provider, at most ``max_deliveries`` at once. Attempts are
   tasks of their own: a slow webhook or command (timeouts up to minutes) holds up neither the next tick
   nor anything else the leader does;
4. when an attempt ends, its outcome (``provider.after_attempt``: delivered, or pending again after a
   backoff) is written with a CAS on the group's status, guarded; on a conflict (a tick committed in
   between) the status is read again from etcd and the outcome applied to that.

A new leader finds undelivered requests in the statuses and delivers them with their stored ids. An
attempt in flight when the term ends is cancelled (a command is killed) and its outcome not recorded —
the guard would refuse it anyway — so the next leader attempts it again under the same id, which the
provider contract makes harmless. A deleted group's status stays in etcd (its request numbers are never
reused) but the loop neither decides for it nor delivers its requests: its provider is gone with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from scheduler.cancellation import raise_if_cancelling
from scheduler.elastic import provider as providers
from scheduler.elastic import step as elastic_step
from scheduler.model import (
    DeliveryState,
    GroupName,
    HostAdmin,
    HostGroup,
    HostGroupStatus,
    HostId,
    HostRecord,
    HostStatus,
    ProviderRequest,
    Replica,
    ReplicaId,
    Service,
    ServiceName,
)
from scheduler.placement.framework import Profile
from scheduler.store import base
from scheduler.store.errors import Conflict, NotLeader, StoreUnavailable

log = logging.getLogger(__name__)

INTERVAL = 1.0
MAX_DELIVERIES = 8       # attempts in flight at once (each a webhook call and/or a command)
OUTCOME_RETRIES = 5      # conflicts tolerated while recording one attempt's outcome


class ClusterState(Protocol):
    """What the loop reads: the leader's mirror (``scheduler.controller.Mirror``) has these."""

    @property
    def services(self) -> Mapping[ServiceName, Service]: ...

    @property
    def replicas(self) -> Mapping[ReplicaId, Replica]: ...

    @property
    def hosts(self) -> Mapping[HostId, HostRecord]: ...

    @property
    def statuses(self) -> Mapping[HostId, HostStatus]: ...

    @property
    def hostgroups(self) -> Mapping[GroupName, HostGroup]: ...

    @property
    def hostgroup_statuses(self) -> Mapping[GroupName, HostGroupStatus]: ...


@dataclass(frozen=True)
class ElasticSettings:
    guard: base.LeaderGuard
    profile: Profile
    interval: float = INTERVAL
    max_deliveries: int = MAX_DELIVERIES


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt, for the metrics: ``outcome`` is ``delivered`` or ``failed``."""

    group: GroupName
    kind: str
    outcome: str


Step = Callable[[elastic_step.ElasticInputs], elastic_step.ElasticPlan]


def plan_ops(plan: elastic_step.ElasticPlan, state: ClusterState) -> list[base.Op]:
    """The plan as store operations, each a compare-and-swap on what the mirror holds. A host to drain
    that is gone or already draining, or one to forget that is gone, adds nothing."""
    ops: list[base.Op] = []
    for name, status in sorted(plan.statuses.items()):
        known = state.hostgroup_statuses.get(name)
        # The step starts from the mirror's status; its revision is the one to compare on.
        ops.append(base.Put(status, expected=known.revision if known is not None else 0))
    for host in dict.fromkeys(plan.drain):
        record = state.hosts.get(host)
        if record is not None and record.admin is not HostAdmin.DRAINING:
            ops.append(base.Put(dataclasses.replace(record, admin=HostAdmin.DRAINING)))
    for host in dict.fromkeys(plan.forget):
        record = state.hosts.get(host)
        if record is not None:
            ops.append(base.Delete(record))
        status_record = state.statuses.get(host)
        if status_record is not None and status_record.revision > 0:
            ops.append(base.Delete(status_record))
    return ops


def due_requests(state: ClusterState, *, now: float,
                 busy: frozenset[str] = frozenset()) -> list[tuple[GroupName, ProviderRequest]]:
    """Pending requests whose time has come, of groups that exist and name a provider, oldest due first."""
    due: list[tuple[GroupName, ProviderRequest]] = []
    for name, status in state.hostgroup_statuses.items():
        group = state.hostgroups.get(name)
        if group is None or (group.spec.webhook is None and group.spec.command is None):
            continue
        due += [(name, r) for r in status.requests
                if r.state is DeliveryState.PENDING and r.next_attempt_at <= now and r.id not in busy]
    return sorted(due, key=lambda item: (item[1].next_attempt_at, item[1].created_at, item[1].id))


def with_outcome(status: HostGroupStatus, request_id: str, *, ok: bool, error: str,
                 now: float) -> HostGroupStatus | None:
    """``status`` with the attempt's outcome recorded on its request; None when there is nothing to record
    (the request is gone, or was delivered meanwhile)."""
    requests = list(status.requests)
    for i, request in enumerate(requests):
        if request.id == request_id:
            if request.state is not DeliveryState.PENDING:
                return None
            requests[i] = providers.after_attempt(request, ok=ok, error=error, now=now)
            return dataclasses.replace(status, requests=tuple(requests))
    return None


class ElasticLoop:
    def __init__(self, store: base.Store, settings: ElasticSettings, *,
                 state: Callable[[], ClusterState | None],
                 provider: providers.Provider | None = None,
                 step: Step = elastic_step.step,
                 on_committed: Callable[[base.Committed, Sequence[base.Op]], None] = lambda c, o: None,
                 on_attempt: Callable[[AttemptRecord], None] = lambda a: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self._state = state
        self._provider: providers.Provider = provider or providers.ProviderClient()
        self._step = step
        self._on_committed = on_committed
        self._on_attempt = on_attempt
        self._clock = clock
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._deposed: NotLeader | None = None

    @property
    def inflight(self) -> frozenset[str]:
        """The ids of the requests being attempted now."""
        return frozenset(self._inflight)

    async def run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.tick()
                except (StoreUnavailable, Conflict) as err:
                    raise_if_cancelling()
                    log.info("elastic: %s; deciding again at the next tick", err)
                except NotLeader:
                    raise
                except Exception:  # a bug in one tick must not stop host groups for the whole term
                    raise_if_cancelling()
                    log.exception("elastic: the tick failed; trying again at the next one")
                await asyncio.sleep(max(0.0, self.settings.interval - (time.monotonic() - started)))
        finally:
            await self.close()

    async def close(self) -> None:
        """Cancel the attempts in flight (their outcomes are not recorded; the next leader retries)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._inflight.clear()

    async def wait_attempts(self) -> None:
        """Until the attempts in flight now have ended (and their outcomes are recorded)."""
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.wait(tasks)

    async def tick(self) -> None:
        """Decide, commit, and start the due attempts. Raises ``NotLeader`` when the term is over (also
        when an attempt's outcome found it so)."""
        if self._deposed is not None:
            raise self._deposed
        state = self._state()
        if state is None:
            return
        now = self._clock()
        try:
            await self.decide(state, now=now)
        except Conflict as err:  # the mirror was behind; deliveries need not wait for the next tick
            log.debug("elastic: the plan conflicted on %s; deciding again", ", ".join(err.keys[:5]))
        state = self._state() or state  # with what was just committed
        self.deliver_due(state, now=now)

    async def decide(self, state: ClusterState, *, now: float) -> base.Committed | None:
        """Run the step on ``state`` and commit its plan (one guarded transaction)."""
        groups = dict(state.hostgroups)
        if not groups:
            return None
        # Copies: the mirror changes under the loop's feet (the watch, the leader's own writes).
        inputs = elastic_step.ElasticInputs(
            groups=groups, statuses={n: s for n, s in state.hostgroup_statuses.items() if n in groups},
            hosts=dict(state.hosts), host_statuses=dict(state.statuses), services=dict(state.services),
            replicas=list(state.replicas.values()), profile=self.settings.profile, now=now)
        plan = self._step(inputs)
        ops = plan_ops(plan, state)
        if not ops:
            return None
        committed = await self.store.commit(ops, guard=self.settings.guard)
        for host in plan.drain:
            log.info("elastic: draining host %s (scale-in)", host)
        for host in plan.forget:
            log.info("elastic: forgetting host %s (released and gone)", host)
        self._on_committed(committed, ops)
        return committed

    def deliver_due(self, state: ClusterState, *, now: float) -> list[str]:
        """Start an attempt for each due request (bounded); returns the ids started."""
        started = []
        room = self.settings.max_deliveries - len(self._inflight)
        for name, request in due_requests(state, now=now, busy=self.inflight)[:max(0, room)]:
            group = state.hostgroups[name]
            hosts = dict(state.hosts)
            task = asyncio.get_running_loop().create_task(
                self._attempt(group, request, hosts), name=f"elastic-deliver-{request.id}")
            self._inflight[request.id] = task
            task.add_done_callback(functools.partial(self._done, request.id))
            started.append(request.id)
        return started

    def _done(self, request_id: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(request_id, None)

    async def _attempt(self, group: HostGroup, request: ProviderRequest,
                       hosts: Mapping[HostId, HostRecord]) -> None:
        name = group.spec.name
        try:
            attempt = await self._provider.deliver(request, group=group.spec, hosts=hosts)
        except Exception as err:  # a provider implementation's bug must not end the loop
            log.exception("elastic: delivering %s failed unexpectedly", request.id)
            attempt = providers.Attempt(False, f"internal error: {err}")
        self._on_attempt(AttemptRecord(name, request.kind.value, "delivered" if attempt.ok else "failed"))
        if attempt.ok:
            log.info("elastic: %s %s delivered (attempt %d)", request.id, request.kind.value,
                     request.attempts + 1)
        else:
            log.warning("elastic: %s %s not delivered (attempt %d): %s", request.id, request.kind.value,
                        request.attempts + 1, attempt.error)
        try:
            await self.record_outcome(name, request.id, ok=attempt.ok, error=attempt.error,
                                      now=self._clock())
        except NotLeader as err:
            self._deposed = err
        except StoreUnavailable as err:
            # Not recorded: the request stays pending with its old schedule and is attempted again (same
            # id) — a delivered request attempted twice is what the id exists for.
            log.warning("elastic: cannot record the outcome of %s (%s); it will be attempted again",
                        request.id, err)

    async def record_outcome(self, group: GroupName, request_id: str, *, ok: bool, error: str,
                             now: float) -> HostGroupStatus | None:
        """Write one attempt's outcome on the group's status (CAS, guarded; re-read on conflict).
        Returns the status written, or None when there was nothing to record."""
        state = self._state()
        status = state.hostgroup_statuses.get(group) if state is not None else None
        for _ in range(OUTCOME_RETRIES):
            if status is None:
                status = await self.store.get(self.store.schema.hostgroup_status(group))
                if status is None:
                    return None
            updated = with_outcome(status, request_id, ok=ok, error=error, now=now)
            if updated is None:
                return None
            op = base.Put(updated)
            try:
                committed = await self.store.commit([op], guard=self.settings.guard)
            except Conflict:
                status = None  # read it again from etcd: the mirror may not have the news yet
                continue
            self._on_committed(committed, [op])
            written = committed.written[0]
            assert isinstance(written, HostGroupStatus)
            return written
        log.warning("elastic: the outcome of %s kept conflicting; it will be attempted again", request_id)
        return None


__all__ = [
    "INTERVAL", "MAX_DELIVERIES", "AttemptRecord", "ClusterState", "ElasticLoop", "ElasticSettings",
    "due_requests", "plan_ops", "with_outcome",
]
