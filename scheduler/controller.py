"""The leader's control loop: mirror etcd, follow every host's agent, reconcile, commit, act.

Runs only on the elected leader, for one term (``Election.run`` cancels it when leadership ends). It
keeps:

* a **mirror** of the state in etcd (``scheduler.mirror``) — a snapshot, then the watch from its revision
  (a compacted revision means a new snapshot); the leader's own committed writes are applied to it at
  once, so the next pass never decides on state older than what it just wrote;
* one **agent session** per registered host (``scheduler.agents``): its containers, kept current;
* an **actuator** (``scheduler.actuator``) carrying out agent actions with the term's fence.

A *pass* builds the ``reconcile.World`` from these, runs the pure ``reconcile.step`` with a placer over a
placement view (built only if the step places or removes something), commits the record writes (and the
host statuses that changed) as compare-and-swap transactions under the term's guard, and only then hands
the agent actions to the actuator. Passes run one at a time, triggered by any change a pass reads (a
watch event that changes it, an agent event, an action done) and coalesced: a burst of changes is one
pass. A conflict means the mirror was behind: the watch brings the news and the next pass decides again.
``NotLeader`` ends the term. What the hosts report is also written between and during passes
(``scheduler.recorder``): what was heard since the last pass as the next one begins, and what is heard
while a pass's writes are in flight, so a replica that started is not recorded only by a later pass.

Most passes are *scoped* (``reconcile.Scope``, ``Controller._scope``): they run the rules only for the
services and hosts changed since the last pass — the mirror's dirt, the containers that changed in each
reporting session, the actions that ended, launches that failed — plus every service with a pending
replica and everything on a host whose connection, record or status changed, and what the clock made
due (a backoff ended, a host's grace ran out). A full pass runs at the start of a term, after a conflict
or an etcd failure, and at least every ``FULL_PASS_INTERVAL`` seconds as a safety net (less often while
hosts are being lost). Hosts whose graces end close together are marked lost by one pass
(``Controller._gather``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from google.protobuf import json_format

from proto.agent.v1 import agent_pb2 as pb
from scheduler import reconcile
from scheduler.actuator import Actuator
from scheduler.actuator import Settings as ActuatorSettings
from scheduler.agents import (
    HEARTBEAT_TIMEOUT,
    AgentSession,
    Credentials,
    ReplicaUsage,
    Session,
    pace_sessions,
)
from scheduler.autoscale.gather import CPU_INITIALIZATION_PERIOD
from scheduler.autoscale.loop import INTERVAL, Autoscaler, AutoscalerSettings
from scheduler.connect_gate import ConnectGate
from scheduler.elastic.loop import AttemptRecord, ElasticLoop, ElasticSettings
from scheduler.evolve import evolve
from scheduler.follower import ChangeFeed, Follower
from scheduler.host_facts import HostFacts
from scheduler.loop_stalls import LoopStalls
from scheduler.mirror import Dirt, Mirror
from scheduler.model import (
    Capacity,
    HostId,
    HostRecord,
    HostStatus,
    Replica,
    ReplicaId,
    ReplicaPhase,
    Service,
    ServiceName,
)
from scheduler.observed import ContainerState, ContainerUsage, HostObservation
from scheduler.placement.framework import Profile
from scheduler.placement.placer import ViewPlacer
from scheduler.placement.view import ClusterView
from scheduler.placement.view_cache import ViewCache, ViewInputs
from scheduler.placement.view_pace import ViewPace
from scheduler.recorder import InFlightRecorder
from scheduler.session_workers import SessionWorkers
from scheduler.start_health import StartHealth, StartHealthSettings
from scheduler.store import base
from scheduler.store.errors import Compacted, Conflict, KeyConflict, NotLeader, StoreError, StoreUnavailable
from scheduler.store.records import Record
from scheduler.timings import NO_TIMINGS, Timings
from scheduler.usage_pace import AUTO, REPORTS_PER_SECOND, Pacer, UsagePace

log = logging.getLogger(__name__)

COALESCE = 0.01          # a burst of changes within this is one pass
STORE_RETRY = 0.5        # after etcd did not answer
CONFLICT_RETRY = 0.05    # the pass after a conflict, when the mirror already holds what it met
# ... and when it does not, that pass waits at most this long for the watch to bring the mirror up to the
# conflicting writes' revision: a full pass at 5,000 hosts held a loaded leader's loop 1-19 s, and one
# decided from a mirror still behind meets the same writers' other changes (docs/scaling.md, part 33).
CONFLICT_CATCH_UP = 2.0
# A term that starts from its follower's state behind the term's own epoch (the leader key's creation:
# every write of the terms before landed before it) waits at most this long for the follower to bring
# it, before its first pass: a pass that does not see the last term's new replicas creates them again.
# An instance that loses its term and wins the next one 0.5 s later on a loaded machine, its watch behind,
# can start so (docs/scaling.md, part 33).
TERM_CATCH_UP = 10.0
# How long a new term waits for the instance's follower to finish reading etcd before reading a snapshot
# of its own (the follower's read takes as long: 15 s at 100,000 replicas here).
FOLLOWER_SYNC_WAIT = 30.0
FOLLOWER_READ_WAIT = 1.0  # for the follower to apply etcd's revision as the term begins
# Passes between full ones look only at what changed (``reconcile.Scope``); a full pass runs at least
# this often anyway, as a safety net: anything a scope missed is decided within this many seconds.
FULL_PASS_INTERVAL = 5.0
# ... or less often when full passes are long: the safety net holds the loop at most this share of the
# time (a full pass that placed nothing costing 2 s makes the interval 20 s). At 100,000 replicas on 5,000
# hosts a full pass took 1-3 s of a loaded leader's loop: every 5 s, a third of it or more went to finding
# nothing to do, while the sessions waited.
FULL_PASS_SHARE = 0.1
HELD_LOG_S = 30.0  # while lost hosts are held (reconcile.mass_loss), said this often
ABANDONED_SHOWN = 5  # lost hosts named when a pass replaces what they ran (the rest counted)
# While hosts are being lost (in their grace, or lost with replicas not yet marked), and for one period
# after, the safety net runs this many times less often: a full pass then makes the pass that marks them
# look at every service (in part 17's 5,000-host runs it fell on a marking pass, or just before one, in
# three runs of five), and right after it held the loop for 1-2.5 s while the replacements started (in
# all four of part 21's first runs).
NET_LOSING_FACTOR = 2
LONG_PASS_S = 1.0  # a pass holding the loop this long is logged with where its time went
# Pending replicas one pass hands to placement; the rest wait for the next pass, right after. A pass
# placing 30,000 held the loop for 4.6 s at 2,000 hosts (every agent session unheard meanwhile), one of
# 20,000 about 3 s. Smaller budgets kept the loop freer but placed 3-4 times slower: each placing pass
# then waits behind the work the previous one's launches bring (docs/scaling.md).
PLACE_BUDGET = 20_000
# A pass's writes go to etcd this many transactions at a time: at 5,000 hosts etcd took twice the writes
# a second within a placing pass with 4 as with 1. The store lets a commit one after the other (the
# API's) go ahead of them (txn.Gate); without that, every apply queued behind a pass's writes
# (docs/scaling.md, part 11).
COMMIT_IN_FLIGHT = 4
# Loop turns a commit started as a task takes to reach gRPC: the task's first step, its transactions'
# lanes (a pipelined commit), and the call's own task (grpc.aio sends from a task of its own): 2 for a
# commit one after the other, 3 for a pipelined one, against etcd
# (tests/integration/scheduler/test_sent_before_deciding.py). A pass gives them before it decides, which
# holds the loop: a write started just before it would otherwise go out only after it.
SEND_TURNS = 3


async def sent() -> None:
    """Give a commit just started as a task the loop turns it takes to go out (``SEND_TURNS``)."""
    for _ in range(SEND_TURNS):
        await asyncio.sleep(0)


def new_replica_id(service: ServiceName) -> ReplicaId:
    # Container ids are at most 64 characters: a service name (≤ 63) is cut to leave room for the token.
    return ReplicaId(f"{service[:54]}-{secrets.token_hex(4)}")


@dataclass(frozen=True)
class AutoscaleSettings:
    """The autoscaler's part of a term: how often, and where Prometheus is."""

    interval: float = INTERVAL
    prometheus_url: str = ""
    cpu_initialization_period: float = CPU_INITIALIZATION_PERIOD


@dataclass(frozen=True)
class ControllerSettings:
    epoch: int
    guard: base.LeaderGuard
    credentials: Credentials | None
    profile: Profile
    host_grace: float = reconcile.HOST_GRACE       # unreachable this long: its replicas move
    agent_down_grace: float = reconcile.AGENT_DOWN_GRACE  # the same when only its agent is down
    max_lost_share: float = reconcile.MAX_LOST_SHARE  # more hosts lost at once: none replaced (reconcile)
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT    # no usage report this long: the host is unreachable
    # Usage reports asked of agents this often (0: each sample; None: by the hosts a process follows, at
    # most ``usage_reports_per_second`` a second: scheduler.usage_pace).
    usage_interval: float | None = AUTO
    usage_reports_per_second: float = REPORTS_PER_SECOND
    agent_keepalive: float = 0.0  # a keepalive ping to each agent this often (0: none; scheduler.agents)
    start_health: StartHealthSettings = field(default_factory=StartHealthSettings)
    autoscale: AutoscaleSettings | None = None  # None: no autoscaler in this term (tests of reconcile)
    elastic_interval: float | None = None  # the elastic loop's tick; None: no elastic loop in this term
    session_workers: int = 0  # processes running the agent sessions (scheduler.session_workers); 0: none
    commit_in_flight: int = COMMIT_IN_FLIGHT  # a pass's etcd transactions in flight at once

    @property
    def usage_pace(self) -> UsagePace:
        return UsagePace(interval=self.usage_interval, reports_per_second=self.usage_reports_per_second,
                         heartbeat_timeout=self.heartbeat_timeout)


class Controller:
    def __init__(self, store: base.Store, settings: ControllerSettings, *,
                 on_pass: Callable[[float, reconcile.Plan, reconcile.World], None] | None = None,
                 on_provider_attempt: Callable[[AttemptRecord], None] | None = None,
                 follower: Follower | None = None, workers: SessionWorkers | None = None,
                 timings: Timings = NO_TIMINGS) -> None:
        self.store = store
        self.timings = timings  # launches, starts (``scheduler.timings``; the instance's metrics)
        # This instance's follower (``scheduler.follower``), when it has one: a term starts from its
        # state and follows its decoded changes instead of reading and watching etcd a second time.
        self.follower = follower
        self._feed: ChangeFeed | None = None  # the term's subscription to it, ended with its watcher
        self.settings = settings
        self.mirror: Mirror | None = None
        self.sessions: dict[HostId, Session] = {}
        # Where sessions run with session workers: the instance's pool, which outlives the term (its
        # sessions are parked at the end, for the next term), or else one of the term's own.
        self.workers = workers
        self._own_workers = workers is None and settings.session_workers > 0
        self._wake = asyncio.Event()
        self._deposed = ""
        self._on_pass = on_pass
        self._on_provider_attempt = on_provider_attempt
        self.start_health = StartHealth(settings.start_health)
        self.actuator = Actuator(ActuatorSettings(epoch=settings.epoch), session=self.sessions.get,
                                 service=self._service, on_done=self.poke, on_deposed=self._lose,
                                 start_health=self.start_health, timings=timings)
        self.stalls = LoopStalls()  # this leader's own stalls: no host is blamed for them
        self.gate = ConnectGate()   # its in-process sessions connect so many at a time
        # What the next pass must look at beyond the mirror's dirt (see ``_scope``).
        self._changed_hosts: set[HostId] = set()              # sessions that reported a change
        self._seen: dict[HostId, HostObservation] = {}        # each host's observation the last pass read
        # The replicas the last passes found settled, less what changed since (``reconcile.World.settled``)
        self._settled: dict[ServiceName, frozenset[ReplicaId]] = {}
        self._acting: dict[str, HostId] = {}                  # actions handed over, by container id
        self._full_due = True                                 # the next pass looks at everything
        self._last_full = 0.0                                 # when the last full pass ran
        self.full_interval = FULL_PASS_INTERVAL               # the safety net's period (FULL_PASS_SHARE)
        self._due: float | None = None                        # when a pass is due by the clock
        self._pacer = Pacer(settings.usage_pace)  # what in-process sessions ask for now
        self._repace_later: asyncio.TimerHandle | None = None  # a pass for a change the pacer held back
        self._lost_due: dict[HostId, float] = {}              # when each unreachable host counts as lost
        self._last_losing = 0.0                               # when a pass last had hosts being lost
        self._placing_s = 0.0                                 # the last placing pass, to its writes landed
        self._last_pass_at = 0.0                              # the time the last pass read (``_scope``)
        self._fresh_cache: dict[HostId, tuple[HostRecord, pb.HostInfo, tuple[object, ...], HostRecord]] = {}
        # Each host's status as the last pass judged it, with what it was judged from (``_status``).
        self._status_cache: dict[HostId, tuple[HostStatus, Session, HostObservation | None, str,
                                               HostStatus]] = {}
        self.facts = HostFacts()  # what passes read of each host, kept between them (``_host_facts``)
        self.passes = {"full": 0, "scoped": 0}                # for tests and benchmarks
        self.views = ViewCache()                              # each placing pass's view, from the last
        self.view_pace = ViewPace()                           # when passes between refresh it (ViewPace)
        self._counted: dict[HostId, tuple[HostObservation, frozenset[ReplicaId]]] = {}  # per observation
        self._place_from: ServiceName | None = None           # where the next pass resumes placing
        self._waiting: frozenset[ServiceName] = frozenset()   # what a pass over its budget left
        self.lost_held = 0                                    # lost hosts the last pass did not replace
        self._recorder: InFlightRecorder | None = None        # while a pass's writes are in flight
        self.recorded_in_flight = 0                           # replicas it recorded, for tests and benchmarks
        self.recorded_ahead = 0                               # ... and ahead of a pass (``_record_ahead``)
        self._held_logged = 0.0                               # when that was last logged
        self._catch_up: tuple[int, float, str] | None = None  # (revision, until when, after what)
        self.caught_up = {"reached": 0, "timed out": 0}       # how those waits ended (tests, benchmarks)

    def poke(self, *_: object) -> None:
        self._wake.set()
        if self._recorder is not None:
            self._recorder.poke()

    def _host_changed(self, host: HostId) -> None:
        """An agent session reported a change (its containers, its connection, its room)."""
        self._changed_hosts.add(host)
        self.facts.stale(host)
        self._wake.set()
        if self._recorder is not None:
            self._recorder.heard(host)

    def _lose(self, why: str) -> None:
        self._deposed = why
        self.poke()

    def _service(self, name: ServiceName) -> Service | None:
        return self.mirror.services.get(name) if self.mirror is not None else None

    # -- the loop -----------------------------------------------------------------------------------

    async def run(self) -> None:
        watcher: asyncio.Task[None] | None = None
        autoscaler = self._autoscaler()
        scaling = asyncio.create_task(autoscaler.run(), name="autoscaler") if autoscaler is not None else None
        elastic = self._elastic()
        hosting = asyncio.create_task(elastic.run(), name="elastic") if elastic is not None else None
        if hosting is not None:
            hosting.add_done_callback(self._elastic_ended)
        self.stalls.start()
        try:
            if self._own_workers:
                self.workers = SessionWorkers(
                    self.settings.session_workers, credentials=self.settings.credentials,
                    heartbeat_timeout=self.settings.heartbeat_timeout,
                    usage_interval=self.settings.usage_interval,
                    usage_reports_per_second=self.settings.usage_reports_per_second, timings=self.timings)
            if self.workers is not None:
                await self.workers.start()
            while True:
                watcher = asyncio.create_task(await self._start(), name="etcd-watch")
                watcher.add_done_callback(self.poke)  # its end (a resync) is handled at once
                self._full_due = True
                try:
                    await self._loop(watcher)
                except _Resync:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await watcher
                    self._end_feed()
                    continue
        finally:
            self._end_feed()
            if self._repace_later is not None:
                self._repace_later.cancel()
            for task in (watcher, scaling, hosting):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            await self.actuator.close()
            if self.workers is not None and not self._own_workers:
                self.workers.park()  # followed on, for the next term on this instance
            else:
                await asyncio.gather(*(s.close() for s in self.sessions.values()), return_exceptions=True)
            self.sessions.clear()
            if self.workers is not None and self._own_workers:
                await self.workers.close()
            await self.stalls.close()
            self._let_go()

    def _let_go(self) -> None:
        """The term's state let go as it ends. The controller and its actuator hold each other (its
        callbacks), so the controller itself is freed only by a full collection, which with the leader's
        collector tuned did not come in the 5-11 minutes after a term lost and won back at 5,000 hosts:
        the next term's state stood beside this one's (630-657 MiB against 428-490; docs/scaling.md,
        part 33). What it refers to need not wait with it."""
        self.mirror = None
        self.views, self.view_pace = ViewCache(), ViewPace()
        self._seen, self._settled, self._counted, self._acting = {}, {}, {}, {}
        self._fresh_cache, self._status_cache, self._lost_due = {}, {}, {}
        self.facts = HostFacts()
        self._changed_hosts = set()

    def _autoscaler(self) -> Autoscaler | None:
        chosen = self.settings.autoscale
        if chosen is None:
            return None

        def on_written(committed: base.Committed) -> None:
            if self.mirror is not None:
                for record in committed.written:
                    self.mirror.put(record)
            self.poke()  # a new count: the reconcile pass creates or removes replicas now

        settings = AutoscalerSettings(guard=self.settings.guard, interval=chosen.interval,
                                      prometheus_url=chosen.prometheus_url,
                                      cpu_initialization_period=chosen.cpu_initialization_period)
        return Autoscaler(
            self.store, settings,
            services=lambda: self.mirror.services if self.mirror is not None else {},
            replicas=lambda: self.mirror.replicas if self.mirror is not None else {},
            statuses=lambda: self.mirror.autoscale if self.mirror is not None else {},
            usage=self._usage, on_written=on_written)

    def _elastic(self) -> ElasticLoop | None:
        interval = self.settings.elastic_interval
        if interval is None:
            return None

        def on_committed(committed: base.Committed, ops: Sequence[base.Op]) -> None:
            if self.mirror is None:
                return
            for record in committed.written:
                self.mirror.put(record)
            for op in ops:  # hosts forgotten: gone from the mirror before the watch says so
                if isinstance(op, base.Delete) and isinstance(op.record, HostRecord | HostStatus):
                    self.mirror.drop(op.record)
            self.poke()  # a host draining: the reconcile pass moves its replicas now

        settings = ElasticSettings(guard=self.settings.guard, profile=self.settings.profile,
                                   interval=interval)
        return ElasticLoop(self.store, settings, state=lambda: self.mirror, on_committed=on_committed,
                           on_attempt=self._on_provider_attempt or (lambda _: None))

    def _elastic_ended(self, task: asyncio.Task[None]) -> None:
        """The elastic loop ends only with the term (cancelled) or when it finds the term over."""
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, NotLeader):
            self._lose(str(error))
        elif error is not None:
            log.error("the elastic loop stopped: %s", error, exc_info=error)

    def _usage(self) -> Mapping[str, ContainerUsage]:
        """Each replica's latest usage, looked up through its host's session: only the hosts of the
        replicas asked for decode their snapshots (merging every session's usage each tick cost
        O(all replicas) for a few autoscaled services)."""
        return ReplicaUsage(self.sessions, self.mirror.replicas if self.mirror is not None else {})

    async def _start(self) -> Coroutine[Any, Any, None]:
        """Build the mirror and return what follows its changes. From the follower when it is synced: its
        state, caught up with etcd's revision if that comes within a second (no decode of all of etcd per
        term: 100,000 replicas took 15 s), and a feed of its decoded changes right after it. Otherwise a
        snapshot and a watch of its own."""
        # A scheduler that leads as it starts finds its follower still reading its first snapshot: wait
        # for it (reading one of our own would cost as much) rather than decode every change twice for
        # the whole term.
        if self.follower is not None and await self.follower.wait_synced(FOLLOWER_SYNC_WAIT):
            attached = await self.follower.attach(wait=FOLLOWER_READ_WAIT)
            if attached is not None:
                state, self._feed = attached
                self.mirror = Mirror.of(state.view())
                if self.mirror.revision < self.settings.epoch:
                    self._catch_up = (self.settings.epoch, time.time() + TERM_CATCH_UP, "the term began")
                return self._follow_feed(self._feed)
        self.mirror = Mirror.of(await self.store.snapshot())
        return self._follow(self.mirror.revision)

    async def _follow(self, revision: int) -> None:
        assert self.mirror is not None
        async for change in self.store.watch(revision):
            if self.mirror.apply(change) or self._caught_up_now():
                self.poke()

    async def _follow_feed(self, feed: ChangeFeed) -> None:
        """The follower's changes; it ends (a resync) when the follower reads etcd again."""
        assert self.mirror is not None
        while (change := await feed.get()) is not None:
            if self.mirror.apply(change) or self._caught_up_now():
                self.poke()

    def _caught_up_now(self) -> bool:
        """The mirror just reached what the loop waits for (``_catching_up``): a change no pass reads (the
        leader key's) wakes it too."""
        return self._catch_up is not None and self.mirror is not None \
            and self.mirror.revision >= self._catch_up[0]

    def _end_feed(self) -> None:
        """Unsubscribe (also when the watcher task was cancelled before it ever ran)."""
        if self._feed is not None:
            self._feed.end()
            self._feed = None

    async def _loop(self, watcher: asyncio.Task[None]) -> None:
        next_due: float | None = None
        # A first pass at once: what the snapshot holds (a scale made while there was no leader, replicas
        # to launch) must not wait for the next change to arrive.
        self.poke()
        while True:
            # Wake for the full pass's period too: the safety net must not wait for a change; nor does
            # the view's refresh, once due.
            due = min(self._net_due(), self._view_due())
            next_due = due if next_due is None else min(next_due, due)
            timeout = max(0.0, next_due - time.time())
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation that arrives as
            # the wake-up does (gh-86296), and the term's end would then never stop this loop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._check(watcher)
            if self._catch_up is not None:
                await self._catching_up(watcher)
            await asyncio.sleep(COALESCE)  # coalesce a burst of changes into one pass
            self._wake.clear()
            self._check(watcher)  # again: a wake-up for its end may have come during the sleep
            next_due = await self.step()

    async def _catching_up(self, watcher: asyncio.Task[None]) -> None:
        """Before the next pass, until the watch has brought the mirror up to a revision (everything before
        it too: the watch delivers in order) or the wait's bound has passed. After a conflict, the
        revision of the writes it met (``CONFLICT_CATCH_UP``): the keys that conflicted are learned already
        (``Mirror.learn``), the others the same writers changed meanwhile are not. As a term begins from a
        follower behind, the term's epoch (``TERM_CATCH_UP``). After a write whose outcome is unknown,
        etcd's revision (0 until read here)."""
        assert self.mirror is not None and self._catch_up is not None
        revision, until, after = self._catch_up
        started = time.time()
        try:
            if not revision:  # etcd's, now
                try:
                    revision = await self.store.current_revision()
                except StoreError as err:
                    log.info("cannot read etcd's revision after %s (%s): deciding from what the mirror "
                             "holds", after, err)
                    return
                self._catch_up = (revision, until, after)
            while self.mirror.revision < revision and (left := until - time.time()) > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._wake.wait()
                self._check(watcher)
        finally:
            self._catch_up = None
        if self.mirror.revision >= revision:
            self.caught_up["reached"] += 1
            log.info("the watch brought revision %d %.2fs after %s", revision, time.time() - started, after)
        else:
            self.caught_up["timed out"] += 1
            log.info("the watch had not brought revision %d %.1fs after %s (the mirror is at %d): deciding "
                     "from what it holds", revision, time.time() - started, after, self.mirror.revision)

    def _check(self, watcher: asyncio.Task[None]) -> None:
        """End the loop when the watch ended (a resync, or its error) or the term is over."""
        if watcher.done():
            error = watcher.exception()
            if error is not None and not isinstance(error, Compacted):
                raise error
            raise _Resync()
        if self._deposed:
            raise NotLeader(self.settings.epoch, 0)

    async def step(self) -> float | None:
        """One pass; returns when the next one is due by the clock (a backoff ending), if ever."""
        started = time.perf_counter()
        assert self.mirror is not None
        hosts_changed = self.mirror.take_hosts_changed()
        self._sync_sessions(hosts_changed if self.facts.of(self.mirror) and not self._full_due else None)
        ahead, recording = self._record_ahead()
        if ahead is not None:
            await sent()  # to land while this pass decides, not after it
        now = time.time()
        full = self._full_due or now >= self._net_due()
        statuses, judged = self._host_facts(hosts_changed | self.mirror.take_hosts_changed(), whole=full)
        lost_from = self._lost_from(now)
        scope = self._scope(statuses, full=full, now=now, gathering=lost_from > 0, judged=judged)
        if recording:
            # Left alone by this pass (busy) and looked at by the next, as when their write landed after
            # this pass took the mirror's dirt: now it may land before (``sent``).
            dirt = self.mirror.dirt
            for rid in recording:
                if (ahead_record := self.mirror.replicas.get(ReplicaId(rid))) is not None:
                    dirt.replica(ahead_record)
        world = self._world(statuses, scope=scope, now=now, recording=recording, lost_from=lost_from)
        placer = ViewPlacer(lambda: self._view(world), self.settings.profile)
        built = time.perf_counter()
        plan = reconcile.step(world, placer=placer, new_id=new_replica_id)
        decided = time.perf_counter()
        if scope is None:
            self._settled = dict(plan.settled)
        else:
            self._settled.update(plan.settled)
        self._place_from = plan.placed_through if plan.deferred else None
        self._waiting = plan.waiting
        self._note_held(plan.lost_held, plan.lost_among)
        if plan.deferred:
            self.poke()  # the rest of what is pending: the next pass, once the loop has had a turn
        self.passes["full" if scope is None else "scoped"] += 1
        if scope is None:
            # Counted from the end of the pass: a full pass longer than the interval must not make every
            # pass a full one.
            self._full_due, self._last_full = False, time.time()
        launching = _Launching(plan, self._act)
        ops: list[base.Op] = []
        for write in launching.first(plan.writes):
            if isinstance(write, reconcile.WriteReplica):
                ops.append(base.Put(write.replica))
            elif isinstance(write, reconcile.DropReplica):
                ops.append(base.Delete(write.replica))
            else:
                ops.append(base.Delete(write.service))
        ops += [base.Put(status) for status in _rejudged(statuses, judged, self.mirror.statuses)]
        encoded = time.perf_counter()
        recorder = self._new_recorder(ops, ahead=ahead, recording=recording)
        landed_puts: list[tuple[int, tuple[Record, ...]]] = []
        try:
            committed = await self._commit(ops, launching, recorder, landed_puts) if ops else None
        except Conflict as err:
            # The revisions say whether the pass decided from an old record (the key changed at or
            # before the revision its mirror had reached: a write the mirror had not taken in) or met a
            # write made while it decided (after it).
            log.info("reconcile pass conflicted on %s (%d writes had gone in; its mirror at revision %d, "
                     "etcd at %d); deciding again", "; ".join(_conflict_said(c) for c in err.conflicts[:3]),
                     err.applied, self.mirror.revision, err.etcd_revision)
            # What the conflicting keys hold now came with the failure: the next pass decides from it
            # rather than conflict on them again while the watch is behind.
            self.mirror.learn(err)
            self._went_in(err, landed_puts)
            written = max((c.actual for c in err.conflicts), default=0)
            if written > self.mirror.revision:
                self._catch_up = (written, time.time() + CONFLICT_CATCH_UP, "the conflict")
            self._full_due = True  # what this pass looked at was taken from the dirt: look at everything
            return time.time() + CONFLICT_RETRY
        except StoreUnavailable as err:
            log.warning("cannot write to etcd (%s); trying again", err)
            self._went_in(err, landed_puts)
            if err.outcome_unknown:
                self._catch_up_unknown()
            self._full_due = True
            return time.time() + STORE_RETRY
        finally:
            if ahead is not None:  # written beside this pass's own: the next pass reads both
                await ahead
            if recorder.outcome_unknown:
                self._catch_up_unknown()
        landed = time.perf_counter()
        if plan.abandoned:
            self._note_abandoned(plan.abandoned, world)
        if committed is not None:
            for record in committed.written:
                self.mirror.put(record)
            self.timings.written(committed.written)
            for op in ops:
                if isinstance(op, base.Delete):
                    self.mirror.drop(op.record)
            # The watch's echo of these writes wakes nothing (the mirror has them): a pass over what
            # they touched follows instead, as the echo's pass did (a replica moved off a failing host
            # back to pending is placed there).
            self.poke()
        self.actuator.absorbed(set(world.launch_failures))
        self._act(launching.rest())
        idle_net = scope is None and not placer.built  # the safety net, and it found nothing to place
        refreshed = not placer.built and (idle_net or time.time() >= self._view_due())
        if refreshed:
            # The view cache kept warm: the next placing pass, a mass failure's, then rebuilds only the
            # hosts that changed since. By the safety net (its cost counts in the net's share, below),
            # and between nets by a pass that places nothing once a refresh is due (``ViewPace``: a
            # term's long first nets space the next by a minute or more).
            self._refresh_view(world)
        else:
            self.view_pace.passed()
        ended = time.perf_counter()
        busy = ended - started - (landed - encoded)  # the loop's own time: the commit's wait excluded
        if placer.built:
            self._placing_s = ended - started
        if idle_net:
            # What the safety net costs is a full pass that finds nothing to place; one that placed
            # says what placing costs, not what the next safety net will.
            self.full_interval = max(FULL_PASS_INTERVAL, busy / FULL_PASS_SHARE)
        if busy >= LONG_PASS_S:
            # (the view's hosts counted afresh and brought up to date, when this pass built or refreshed it)
            views = f"; view: {self.views.rebuilt} hosts rebuilt, {self.views.updated} updated" \
                if placer.built or refreshed else ""
            log.info("a %s pass held the loop for %.2fs: %.2fs to build, %.2fs to decide (%d writes, %d "
                     "actions, %s), %.2fs to write and hand over (and %.2fs waiting for etcd; %d replicas "
                     "recorded ahead, %d meanwhile); %d services in scope%s", "full" if scope is None else
                     "scoped", busy, built - started, decided - built, len(plan.writes), len(plan.actions),
                     "placing" if placer.built else "no placing", (encoded - decided) + (ended - landed),
                     landed - encoded, len(recording), recorder.recorded,
                     len(world.services) if scope is None else len(scope.services),
                     views + launching.spread(encoded))
        if self._on_pass is not None:
            self._on_pass(time.perf_counter() - started, plan, world)
        self._due = self._next_due(world, held=plan.lost_held > 0)
        return self._due

    def _catch_up_unknown(self) -> None:
        """A write whose outcome is unknown (etcd failed as it was sent) may have landed: the next pass
        waits, at most ``CONFLICT_CATCH_UP``, for the watch to reach etcd's revision (read then), as
        after a conflict; decided without it, it wrote those keys again from their old revisions and
        conflicted, or created again the replicas it had created (docs/scaling.md, part 33)."""
        self._catch_up = (0, time.time() + CONFLICT_CATCH_UP, "a write whose outcome is unknown")

    def _went_in(self, err: StoreError, landed_puts: list[tuple[int, tuple[Record, ...]]]) -> None:
        """What went in before a commit failed is in etcd: into the mirror, as a commit that succeeded
        puts its writes, for the next pass to decide from. Left to the watch's echo, a watch running
        minutes behind on a loaded machine had the next pass write the same replicas again from their old
        revisions, conflict on its first transaction, and do so again pass after pass (six minutes of
        passes at 5,000 hosts: docs/scaling.md, part 32); and delete again what it had deleted, conflict
        on it as absent, and leave the deletes that went in that time to the next (part 33). The recorder
        puts its landed writes likewise."""
        assert self.mirror is not None
        for revision, records in landed_puts:
            for record in records:
                self.mirror.put(evolve(record, revision=revision))
            self.timings.written(records)
        for record in err.deleted:
            self.mirror.drop(record)

    def _record_ahead(self) -> tuple[asyncio.Task[None] | None, frozenset[str]]:
        """Start writing what the hosts reported since the last pass (``scheduler.recorder``), to land
        while this pass decides and beside its own writes; the replicas written, which the pass leaves
        alone (busy; one it stops anyway, scaled down meanwhile, conflicts and is decided again). Waiting
        for it before the pass's own commit held a placing pass's 20,000 placements back behind 14,000
        records of starts for 5.5 s at 5,000 hosts (docs/scaling.md, part 17). The pass gives the write
        the loop turns it takes to go out (``sent``) before deciding: until part 26 it went out only once
        the pass had decided."""
        if not self._changed_hosts:
            return None, frozenset()
        recorder = self._new_recorder(())
        for host in self._changed_hosts:
            recorder.heard(host)
        writes = recorder.decide()
        if not writes:
            return None, frozenset()
        self.recorded_ahead += len(writes)
        task = asyncio.get_running_loop().create_task(recorder.write(writes), name="record-ahead")
        return task, frozenset(w.replica.id for w in writes)

    def _new_recorder(self, ops: Sequence[base.Op], *, ahead: asyncio.Task[None] | None = None,
                      recording: frozenset[str] = frozenset()) -> InFlightRecorder:
        """A recorder for a pass's commit (``ops``); the replicas the write ahead of the pass (``ahead``)
        is recording count as busy until it is done (it pokes then)."""
        assert self.mirror is not None
        sessions = self.sessions
        actuator = self.actuator
        if ahead is not None:
            ahead.add_done_callback(self.poke)

        def busy() -> Collection[str]:
            return actuator.busy if ahead is None or ahead.done() else actuator.busy | recording

        def observation(host: HostId) -> HostObservation | None:
            session = sessions.get(host)
            return session.observation if session is not None else None

        return InFlightRecorder(self.store, self.settings.guard, mirror=self.mirror, ops=ops, seen=self._seen,
                                observation=observation, busy=busy,
                                on_deposed=self._lose, coalesce=COALESCE,
                                in_flight=self.settings.commit_in_flight, timings=self.timings)

    async def _commit(self, ops: Sequence[base.Op], launching: _Launching, recorder: InFlightRecorder,
                      landed_puts: list[tuple[int, tuple[Record, ...]]]) -> base.Committed:
        """The pass's writes; launches go as their records land, and what the hosts report meanwhile is
        recorded (``scheduler.recorder``) until the commit, and the recorder's own last write, are done.
        Each transaction's puts are appended to ``landed_puts`` with its revision as it lands."""
        def landed(revision: int, records: tuple[Record, ...]) -> None:
            landed_puts.append((revision, records))
            if launching.waiting:
                launching.landed(records)
            recorder.landed(revision, records)

        commit = asyncio.ensure_future(self.store.commit(ops, guard=self.settings.guard,
                                                         in_flight=self.settings.commit_in_flight,
                                                         on_landed=landed))
        self._recorder = recorder
        try:
            await recorder.run_until(commit)
            return await commit  # (the recorder stops early when etcd fails it)
        finally:
            self._recorder = None
            self.recorded_in_flight += recorder.recorded
            if not commit.done():  # the term ended meanwhile
                commit.cancel()
                commit.add_done_callback(_retrieved)

    def _act(self, actions: tuple[reconcile.AgentAction, ...]) -> None:
        for action in actions:
            key = action.replica if isinstance(action, reconcile.Launch) else action.container
            self._acting[key] = action.host
        self.actuator.submit(actions)

    @staticmethod
    def _note_abandoned(abandoned: Mapping[HostId, int], world: reconcile.World) -> None:
        """Says which lost hosts a pass that landed replaced replicas of (each replica also records why):
        an operator, or a benchmark's log, sees at once what moved and from where."""
        def named(host: HostId) -> str:
            record = world.hosts.get(host)
            since = world.unreachable_since.get(host)
            name = record.name if record is not None and record.name else host
            return name if since is None else f"{name} ({world.now - since:.1f} s)"

        shown = sorted(abandoned, key=lambda h: (-abandoned[h], h))[:ABANDONED_SHOWN]
        more = f" and {len(abandoned) - len(shown)} more" if len(abandoned) > len(shown) else ""
        log.info("replacing %d replicas of %d hosts unreachable past their grace: %s%s",
                 sum(abandoned.values()), len(abandoned), ", ".join(map(named, shown)), more)

    def _note_held(self, held: int, hosts: int) -> None:
        """Says (at most every ``HELD_LOG_S`` while it lasts) that lost hosts are not being replaced."""
        now = time.monotonic()
        if held and (not self.lost_held or now - self._held_logged >= HELD_LOG_S):
            log.warning("%d of %d hosts have been unreachable past their grace, more than %g of those "
                        "holding replicas: their replicas are not replaced (the leader more likely lost its "
                        "own view of them than they all died; --max-lost-share)", held, hosts,
                        self.settings.max_lost_share)
            self._held_logged = now
        elif self.lost_held and not held:
            log.warning("lost hosts are no longer more than %g of the hosts: replacing what they ran",
                        self.settings.max_lost_share)
        self.lost_held = held

    def _net_due(self) -> float:
        """When the safety net runs: a period after the last, longer while hosts are being lost and for
        one period after the pass that marked the last of them, while their replacements start
        (``NET_LOSING_FACTOR``)."""
        stretched = self._last_full + self.full_interval * NET_LOSING_FACTOR
        if self._lost_due:
            return stretched
        return min(stretched, self.full_interval + max(self._last_full, self._last_losing))

    def _view_due(self) -> float:
        """When a pass that places nothing refreshes the view (``ViewPace``): not while hosts are being
        lost, nor for a safety net's period after the last pass that had hosts being lost, as the net is
        held off then: their replacements start meanwhile (a pass that refreshed it after a mass failure's
        marking passes held the loop 1.4 s while they started: docs/scaling.md, part 38)."""
        if self._lost_due:
            return math.inf
        return max(self.view_pace.due(), self._last_losing + self.full_interval)

    def _lost_from(self, now: float) -> float:
        """``World.lost_from`` for a pass at ``now``: the end of the gathering (``_gather``) while it
        lasts, else 0."""
        end = self._gather()
        return end if end is not None and now < end else 0.0

    def _gather(self) -> float | None:
        """When the pass that marks the lost hosts' replicas runs: once the last grace ends of those
        unreachable hosts whose graces end within a window after the first's, the window being the last
        placing pass's length (its writes landed), at most the host grace itself.

        Hosts killed at once are found unreachable over a usage interval (each counted from its own last
        report), so their graces end over up to 3 s at 5,000 hosts. A pass that marks the first of them
        runs for seconds there, and those whose grace ended just after it began waited for all of it
        before a pass of their own (part 17's run E: 799 replicas marked 6.5 s after 986 others, their
        hosts lost within about a second after that pass began). In a small cluster a pass is
        milliseconds, and so is the wait."""
        if not self._lost_due:
            return None
        first = min(self._lost_due.values())
        window = min(self.settings.host_grace, self._placing_s)
        return max(at for at in self._lost_due.values() if at <= first + window)

    def _next_due(self, world: reconcile.World, *, held: bool) -> float | None:
        """When a pass is due by the clock alone; ``_scope`` puts what came due in that pass's scope."""
        assert self.mirror is not None
        replicas = self.mirror.replicas
        due = [at for rid in self.mirror.failed if (at := replicas[rid].next_attempt_at) > world.now]
        if self._lost_due:  # this pass looked at hosts being lost (and may have marked the last of them)
            self._last_losing = world.now
        # A host whose grace period runs out: its replicas are replaced then, not at the next event. One
        # already lost whose replicas this pass did not look at is looked at by the next (unless lost
        # hosts are held: only a change or a full pass decides that again).
        self._lost_due = {}
        for host in world.unreachable_since:
            lost_at = world.lost_at(host)
            holding = self.mirror.by_host.get(host, ())
            if lost_at is None or (held and lost_at <= world.now) or not any(
                    replicas[rid].phase is not ReplicaPhase.STOPPING for rid in holding):
                continue
            self._lost_due[host] = lost_at
        if (gathered := self._gather()) is not None and gathered > world.now:
            due.append(gathered)
        # A start-failing host's mark lifts then (its status is rewritten, placement tries it again).
        due += [until for host in self.start_health.counted() if host in self.mirror.hosts
                and (until := self.start_health.failing_until(host)) is not None and until > world.now]
        return min(due) if due else None

    def _scope(self, statuses: dict[HostId, HostStatus], *, full: bool, now: float,
               gathering: bool = False, judged: set[HostId] | None = None) -> reconcile.Scope | None:
        """What this pass must look at: None for everything, else what changed since the last pass.

        Services: those whose records changed (the mirror's dirt), those of containers that changed on
        their hosts, of replicas whose action just ended or whose launch failed, every service with a
        pending replica (room may have freed anywhere), every service with a replica on a host that
        changed wholly (its record, its status, its session's connection), and what the clock made due:
        failed replicas whose backoff ended, hosts whose grace ran out (once the lost hosts are gathered:
        ``_gather``). Hosts: where any of that happened, for orphans. Taken even for a full pass, so the
        next scoped pass starts afresh.

        A pass due by the clock used to look at everything: in a mass failure the lost hosts' graces end
        over a few seconds, each was a full pass (seconds each at 100,000 replicas), and the hosts whose
        grace ended meanwhile waited for the next (docs/scaling.md, part 10). ``judged``: the hosts whose
        statuses this pass judged (``_host_facts``; None: all), the only ones that can differ from their
        records."""
        assert self.mirror is not None
        mirror = self.mirror
        dirt = mirror.take_dirt()
        since, self._last_pass_at = self._last_pass_at, now
        for host in self._changed_hosts:
            self._observation_changed(host, dirt)
        self._changed_hosts = set()
        for key in [k for k in self._acting if k not in self.actuator.busy]:
            host = self._acting.pop(key)
            dirt.touched.add((host, key))
            if (replica := mirror.replicas.get(ReplicaId(key))) is not None:
                dirt.services.add(replica.service)
        dirt.hosts.update(status.id for status in _rejudged(statuses, judged, mirror.statuses))
        if full:
            # This pass reads every host's observation: the next one compares with these.
            self._seen = {h: session.observation for h, session in self.sessions.items()}
            return None
        self._unsettle(dirt)
        services = dirt.services
        failed = self.actuator.failures
        services.update(mirror.replicas[rid].service for rid in failed if rid in mirror.replicas)
        services.update(mirror.replicas[rid].service for rid in mirror.pending)
        services.update(self._waiting)  # left by a pass over its budget, replicas not created yet
        services.update(replica.service for rid in mirror.failed  # backoffs ended since the last pass
                        if since < (replica := mirror.replicas[rid]).next_attempt_at <= now)
        if not gathering:
            dirt.hosts.update(host for host, lost_at in self._lost_due.items() if lost_at <= now)
        for host in dirt.hosts:
            services.update(mirror.replicas[rid].service for rid in mirror.by_host.get(host, ()))
        return reconcile.Scope(services=frozenset(services), hosts=frozenset(dirt.hosts),
                               containers=frozenset(dirt.touched))

    def _unsettle(self, dirt: Dirt) -> None:
        """Take out of what the last passes found settled every replica that may no longer be: those
        whose records or containers changed, those on hosts that changed wholly, and every replica of a
        service whose own record changed (its template, its count)."""
        settled = self._settled
        if not settled:
            return
        assert self.mirror is not None
        for name in dirt.service_records:
            settled.pop(name, None)
        ids = set(dirt.replicas)
        for host in dirt.hosts:
            ids.update(self.mirror.by_host.get(host, ()))
        changed: dict[ServiceName, set[ReplicaId]] = {}
        replicas = self.mirror.replicas
        for rid in ids:
            # (a replica gone from the mirror is gone from its service too: the step never counts it)
            if (replica := replicas.get(rid)) is not None:
                changed.setdefault(replica.service, set()).add(rid)
        for name, rids in changed.items():
            if (known := settled.get(name)) is not None:
                settled[name] = known - rids

    def _observation_changed(self, host: HostId, dirt: Dirt) -> None:
        """Compare a host's observation with the one the last pass read: a changed container dirties its
        service; a changed connection, the whole host."""
        assert self.mirror is not None
        session = self.sessions.get(host)
        now = session.observation if session is not None else None
        before = self._seen.get(host)
        if now is before:
            return
        if now is None:
            self._seen.pop(host, None)
        else:
            self._seen[host] = now
        if now is None or before is None or now.connected != before.connected \
                or now.complete != before.complete:
            dirt.hosts.add(host)
            return
        for cid in now.containers.keys() | before.containers.keys():
            old, new = before.containers.get(cid), now.containers.get(cid)
            if old == new:
                continue
            dirt.touched.add((host, cid))
            dirt.replicas.add(ReplicaId(cid))
            for container in (old, new):
                if container is not None and container.service is not None:
                    dirt.services.add(container.service)
            if (replica := self.mirror.replicas.get(ReplicaId(cid))) is not None:
                dirt.services.add(replica.service)

    # -- what a pass reads --------------------------------------------------------------------------

    def _sync_sessions(self, changed: set[HostId] | None = None) -> None:
        """One session per registered host, at its current address: of the hosts whose records
        ``changed`` (the mirror's ``hosts_changed``), or of every host (None)."""
        assert self.mirror is not None
        hosts = self.mirror.hosts
        for host, record in (hosts.items() if changed is None else
                             ((h, r) for h in changed if (r := hosts.get(h)) is not None)):
            session = self.sessions.get(host)
            if session is not None and session.address == record.address:
                continue
            if session is not None:
                asyncio.get_running_loop().create_task(session.close())
            session = self._new_session(host, record.address)
            self.sessions[host] = session
            self._changed_hosts.add(host)
            self.facts.stale(host)
            session.start()
        gone = [h for h in (self.sessions if changed is None else changed)
                if h not in hosts and h in self.sessions]
        for host in gone:
            self._changed_hosts.add(host)
            self.facts.stale(host)
            self._fresh_cache.pop(host, None)
            self._status_cache.pop(host, None)
            asyncio.get_running_loop().create_task(self.sessions.pop(host).close())
        if gone:  # (start health is only ever counted for hosts with a session: every pass's set was this)
            self.start_health.forget(set(self.mirror.hosts))
        if self.workers is None:  # workers pace their own sessions
            interval = self._pacer.update(len(self.sessions))
            if interval is not None:
                pace_sessions(cast(Iterable[AgentSession], self.sessions.values()), self._pacer.pace,
                              interval, who="leader")
            elif self._pacer.due is not None and self._repace_later is None:  # held back: a pass then
                self._repace_later = asyncio.get_running_loop().call_later(
                    max(0.0, self._pacer.due - time.monotonic()), self._repace_due)

    def _repace_due(self) -> None:
        self._repace_later = None
        self.poke()

    def _new_session(self, host: HostId, address: str) -> Session:
        if self.workers is not None:
            return self.workers.session(host, address, on_change=self._host_changed)
        return AgentSession(host, address, credentials=self.settings.credentials,
                            on_change=self._host_changed,
                            heartbeat_timeout=self._pacer.pace.heartbeat_for(self._pacer.interval),
                            usage_interval=self._pacer.interval, stalls=self.stalls, gate=self.gate,
                            keepalive=self.settings.agent_keepalive)

    def _host_facts(self, changed: set[HostId], *, whole: bool) -> tuple[dict[HostId, HostStatus],
                                                                          set[HostId] | None]:
        """Every host's status for this pass, and the hosts judged afresh (None: all), with the rest of
        what the pass reads of them (``scheduler.host_facts``): of the hosts whose records or statuses
        ``changed``, whose sessions said so, whose start failures changed or are counted, or every host
        if ``whole``."""
        assert self.mirror is not None
        also = changed | self.start_health.take_changed()
        also.update(self.start_health.counted())
        judged = self.facts.refresh(self.mirror, self.sessions, judge=self._status, fresh=self._fresh,
                                    also=also, whole=whole)
        return dict(self.facts.statuses), judged

    def _world(self, statuses: dict[HostId, HostStatus] | None = None, *,
               scope: reconcile.Scope | None = None, now: float | None = None,
               recording: frozenset[str] = frozenset(), lost_from: float = 0.0) -> reconcile.World:
        """The world a pass decides from: with ``statuses`` from ``_host_facts`` (a pass's), what else it
        reads of each host from there too; without, all of it worked out afresh."""
        assert self.mirror is not None
        if statuses is None:
            facts = HostFacts()
            facts.refresh(self.mirror, self.sessions, judge=self._status, fresh=self._fresh)
            statuses = facts.statuses
        else:
            facts = self.facts
        # A scoped pass reads the mirror's replicas, not a copy: nothing changes them while it decides (no
        # await), and what reads its world after its commit (the placement metric, its log line) does not
        # read them. A full pass's idle end refreshes the view cache from them after the commit: a copy.
        replicas = self.mirror.replicas if scope is not None else dict(self.mirror.replicas)
        return reconcile.World(
            services=dict(self.mirror.services), replicas=replicas,
            hosts=dict(facts.records), statuses=statuses, observed=dict(facts.observed),
            now=time.time() if now is None else now, busy=frozenset(self.actuator.busy) | recording,
            launch_failures=dict(self.actuator.failures),
            unreachable_since=self._unreachable_since({h: statuses[h] for h in facts.not_ready}),
            host_grace=self.settings.host_grace, agent_down_grace=self.settings.agent_down_grace,
            max_lost_share=self.settings.max_lost_share, lost_from=lost_from,
            agent_down=frozenset(facts.agent_down),
            # The mirror's own index, not a copy: the step reads it before anything changes the mirror.
            by_service=self.mirror.by_service, scope=scope,
            settled=self._settled if scope is not None else None, by_host=self.mirror.by_host,
            place_budget=PLACE_BUDGET, place_from=self._place_from, draining=frozenset(facts.draining))

    def _unreachable_since(self, statuses: dict[HostId, HostStatus]) -> dict[HostId, float]:
        """Since when each host this leader cannot follow has been so, later by as long as this leader's
        own loop was stalled since (the host could not be heard then, whatever it did), as far as the
        leader is still behind because of it (``LoopStalls.excused``).

        A new leader gives every host the whole grace period to be connected to before it moves
        anything: the clock starts no earlier than its session to the host. Once that session has
        failed too (an error, or nothing heard for the heartbeat timeout), the recorded status change
        counts — written by a previous leader when it lost the host — so that the grace does not start
        again with every term (at 1,000 hosts, terms shorter than heartbeat timeout + grace meant lost
        replicas were never replaced). A host with no recorded status (``since`` 0: no leader has
        judged it yet) has only this leader's clock."""
        out: dict[HostId, float] = {}
        now = time.time()
        for host, status in statuses.items():
            if status.ready:
                continue
            session = self.sessions.get(host)
            if session is None:
                since = max(status.since, now)
            elif 0 < status.since < session.started_at and self._confirmed_lost(session):
                since = status.since
            else:
                since = max(status.since, session.started_at)
            out[host] = since + self._unheard(host, since)
        return out

    def _unheard(self, host: HostId, since: float) -> float:
        """How much later than ``since`` this leader's view of a host it cannot follow may be.

        In-process, the leader's own stalls since then, as far as it is still behind reading its hosts
        (``LoopStalls.excused``). With session workers, the leader knows each worker's sessions exactly
        as of the newest message it has read from it (each is stamped, and one comes at least every
        ``session_worker.BEAT_S``): what it has not read yet, and no more. Excusing the leader's stalls
        there (it read no report itself, so it excused them in full) had every pass of a mass failure
        push the rest of the lost hosts' grace back by its own length (docs/scaling.md, part 10)."""
        if self.workers is not None:
            return self.workers.unheard(host)
        return self.stalls.excused(self.stalls.stalled_since(since))

    @staticmethod
    def _confirmed_lost(session: Session) -> bool:
        """This leader's own session has failed to follow the host (an error, or its watchdog found it
        silent: that is an error too), not merely not connected yet."""
        return bool(session.error)

    def _fresh(self, record: HostRecord) -> HostRecord:
        """The host record with the capacity and conditions its agent reported last (each second),
        which are fresher than the registration's (every few seconds)."""
        session = self.sessions.get(record.id)
        info = session.info if session is not None else None
        if info is None:
            return record
        # A new report arrives every second and rarely changes what is taken from it: one copy of the
        # record per change, not one per host per pass.
        cached = self._fresh_cache.get(record.id)
        if cached is not None and cached[0] is record and cached[1] is info:
            return cached[3]
        key = (info.cpu_allocatable_millis, info.memory_allocatable_bytes, info.cpu_committed_millis,
               info.memory_committed_bytes, info.disk_free_bytes, tuple(c.type for c in info.conditions))
        if cached is not None and cached[0] is record and cached[2] == key:
            self._fresh_cache[record.id] = (record, info, key, cached[3])
            return cached[3]
        fresh = replace(record, capacity=Capacity(
            cpu_allocatable_millis=info.cpu_allocatable_millis,
            memory_allocatable_bytes=info.memory_allocatable_bytes,
            cpu_committed_millis=info.cpu_committed_millis,
            memory_committed_bytes=info.memory_committed_bytes, disk_free_bytes=info.disk_free_bytes,
        ), conditions=tuple(c.type for c in info.conditions))
        self._fresh_cache[record.id] = (record, info, key, fresh)
        return fresh

    def _status(self, host: HostId) -> HostStatus:
        """Whether the leader trusts this host now (its session follows it completely), and whether it
        keeps failing to start containers.

        Asked of every host by a full pass and of the hosts that changed by a scoped one
        (``scheduler.host_facts``), and nearly always the same answer: a host with no start failures is
        judged only from its recorded status, its session's observation and its session's error, so the
        last answer stands while those are the same objects (an observation is replaced, never changed,
        when its host's view changes). Judged afresh, the 5,000 hosts of an idle pass were about half of
        its cost (docs/scaling.md, part 24)."""
        assert self.mirror is not None
        known = self.mirror.statuses.get(host)
        session = self.sessions.get(host)
        if known is not None and session is not None and self.start_health.untroubled(host):
            cached = self._status_cache.get(host)
            if cached is not None and cached[0] is known and cached[1] is session \
                    and cached[2] is session.observation and cached[3] == session.error:
                return cached[4]
            status = self._judge(host, known, session)
            if self.start_health.untroubled(host):  # (judging resumes a previous leader's count)
                self._status_cache[host] = (known, session, session.observation, session.error, status)
            return status
        return self._judge(host, known, session)

    def _judge(self, host: HostId, known: HostStatus | None, session: Session | None) -> HostStatus:
        """``_status`` worked out."""
        known = known or HostStatus(id=host)
        self.start_health.resume(known)
        complete = session is not None and _followed(session)
        now = time.time()
        # A session still connecting that has seen nothing wrong yet (a new leader's, every host at once)
        # keeps the recorded status: otherwise every failover would flip every host to not ready for the
        # moment reconnecting takes. The session's error ends it (and pokes a pass): a failed attempt, or
        # its watchdog finding the host silent for the heartbeat timeout from the attempt's start. No
        # deadline of the leader's own: sessions wait their turn to connect (scheduler.connect_gate), and
        # in a session worker the leader cannot see the worker's backlog; a deadline counted here had a
        # new leader take 5,000 hosts still connecting for lost (docs/scaling.md, part 7). Nothing is
        # launched meanwhile (reconcile waits for a complete view). Whether the session has listed the host
        # is the session's (its observation), not the record's: written, it flipped every host's status
        # twice per term, 10,000 writes at 5,000 hosts that a new term's first pass waited on before it
        # acted (docs/scaling.md, part 39).
        ready = complete or (known.ready and session is not None and not session.error)
        reason = "" if ready else (session.error if session is not None and session.error
                                   else "connecting to its agent")
        starts = self.start_health.state(host)
        failing = self.start_health.failing(host, now)
        # Nearly always unchanged: compared before any copy.
        if (known.ready, known.reason, known.start_failures, known.last_start_failure,
                known.start_failure_reason, known.start_failing) == (
                ready, reason, starts.failures, starts.last_at, starts.reason, failing):
            return known
        return dataclasses.replace(
            known, ready=ready, reason=reason,
            since=now if known.ready != ready else known.since,
            start_failures=starts.failures, last_start_failure=starts.last_at,
            start_failure_reason=starts.reason, start_failing=failing)

    def _view(self, world: reconcile.World) -> ClusterView:
        """The placement view of ``world``: hosts that did not change since the last pass's view are copied
        from it (``ViewCache``), and so is each host's set of replicas its agent counts."""
        started = time.perf_counter()
        view = self.views.build(self._view_inputs(world))
        self.view_pace.brought_up(at=time.time(), cost=time.perf_counter() - started)
        return view

    def _refresh_view(self, world: reconcile.World) -> None:
        """The view cache brought up to ``world`` without building a view (``ViewCache.refresh``)."""
        started = time.perf_counter()
        self.views.refresh(self._view_inputs(world))
        self.view_pace.brought_up(at=time.time(), cost=time.perf_counter() - started)

    def _view_inputs(self, world: reconcile.World) -> ViewInputs:
        counted: dict[HostId, frozenset[ReplicaId]] = {}
        known = self._counted
        for host, obs in world.observed.items():
            if not obs.complete:
                # Not listed since its session (re)connected: which replicas the agent counts is not
                # known, and the view's phase rule says (``view.not_started``). Taken for "none", every
                # running replica counted on top of the agent's figures, and every host of a new term
                # counted again once its session had listed them (docs/scaling.md, part 38).
                continue
            entry = known.get(host)
            if entry is None or entry[0] is not obs:
                entry = known[host] = (obs, frozenset(ReplicaId(cid) for cid, c in obs.containers.items()
                                                      if c.state is not ContainerState.EXITED))
            counted[host] = entry[1]
        for host in known.keys() - counted.keys():
            del known[host]
        return ViewInputs(hosts=world.hosts, statuses=world.statuses, replicas=world.replicas,
                          services=world.services, counted_by_agent=counted)

    # -- for the API --------------------------------------------------------------------------------

    def host_info(self, host: HostId) -> pb.HostInfo | None:
        session = self.sessions.get(host)
        return session.info if session is not None else None

    def host_info_json(self, host: HostId) -> str:
        info = self.host_info(host)
        return json_format.MessageToJson(info, preserving_proto_field_name=True) if info is not None else ""


def _rejudged(statuses: Mapping[HostId, HostStatus], judged: Iterable[HostId] | None,
              recorded: Mapping[HostId, HostStatus]) -> list[HostStatus]:
    """Of the statuses judged (``judged``; None: all), those that differ from their records."""
    return [status for host in (statuses if judged is None else sorted(judged))
            if (status := statuses.get(host)) is not None
            and status is not (known := recorded.get(host)) and status != known]


def _conflict_said(conflict: KeyConflict) -> str:
    """A conflict, and for a replica the last decision its record now holds: whose write it met."""
    decisions = getattr(conflict.current, "decisions", ())
    return f"{conflict} ({decisions[-1].action}: {decisions[-1].reason})" if decisions else str(conflict)


def _followed(session: Session) -> bool:
    """The session follows its host completely: connected, and its listing and events complete."""
    obs = session.observation
    return obs is not None and obs.connected and obs.complete


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Nobody awaits a commit cancelled with its term: its outcome is taken here, so it is not logged."""
    if not future.cancelled():
        future.exception()


class _Resync(Exception):
    """The mirror must be rebuilt from a new snapshot (the watch ended or its revision was compacted)."""


class _Launching:
    """A pass's actions as its transactions land. A host's launches go out once the records of all of them
    have landed, not once every transaction of the pass has: a mass failure's marking pass waited
    0.6-2.1 s for etcd before any launch went (docs/scaling.md, part 16). They still go in one call per
    host: sent per transaction, a placing pass's launches made three times as many calls and halved the
    rate of placement at 5,000 hosts. A host with a launch whose record this pass does not write (a
    starting replica launched again, its record unchanged) has all its launches sent after the commit,
    as is every other action; after a failed commit only the hosts whose launches had all landed have
    had them."""

    def __init__(self, plan: reconcile.Plan,
                 act: Callable[[tuple[reconcile.AgentAction, ...]], None]) -> None:
        written = {w.replica.id for w in plan.writes if isinstance(w, reconcile.WriteReplica)}
        by_host: dict[HostId, list[reconcile.Launch]] = {}
        for action in plan.actions:
            if isinstance(action, reconcile.Launch):
                by_host.setdefault(action.host, []).append(action)
        self._by_host = {host: launches for host, launches in by_host.items()
                         if all(a.replica in written for a in launches)}
        self.waiting: dict[ReplicaId, reconcile.Launch] = {
            a.replica: a for launches in self._by_host.values() for a in launches}
        self._left = {host: len(launches) for host, launches in self._by_host.items()}
        self._plan = plan
        self._act = act
        self._sent: set[ReplicaId] = set()
        self.handed: list[float] = []  # when launches went early (perf_counter), one entry per launch

    def first(self, writes: Sequence[reconcile.RecordWrite]) -> list[reconcile.RecordWrite]:
        """The pass's writes in the order to commit them: the records its early launches wait for first,
        each host's together (in the order of its first launch), then the rest as decided.

        The step decides service by service, so a host's records were spread through the whole commit:
        each replacement of a mass failure written just after the lost replica it replaces was marked,
        and a placing pass's four or so launches per host (from as many services) ready only near its
        end. A commit is many transactions anyway; one that fails part-way now errs toward a replica too
        many for a pass rather than one too few: a replacement written before the lost replica it
        replaces is marked (the next pass marks it: its host is still lost), a rolling update's new
        replica before the old one is stopped (the update goes on from there)."""
        # ``waiting`` holds those launches in that order, and every one of them has its record written.
        early = {w.replica.id: w for w in writes
                 if isinstance(w, reconcile.WriteReplica) and w.replica.id in self.waiting}
        return [early[rid] for rid in self.waiting] + [
            w for w in writes if not (isinstance(w, reconcile.WriteReplica) and w.replica.id in early)]

    def landed(self, records: tuple[Record, ...]) -> None:
        ready: list[reconcile.Launch] = []
        for record in records:
            if isinstance(record, Replica) and (launch := self.waiting.pop(record.id, None)) is not None:
                self._left[launch.host] -= 1
                if not self._left[launch.host]:
                    ready += self._by_host[launch.host]
        if ready:
            self._sent.update(a.replica for a in ready)
            self.handed += [time.perf_counter()] * len(ready)
            self._act(tuple(ready))

    def spread(self, since: float) -> str:
        """When the early launches went, in seconds after ``since`` (the commit's start) — the first, the
        median and the last — for the long pass's log line ("" when none went early)."""
        if not self.handed:
            return ""
        first, middle, last = (t - since for t in (self.handed[0], self.handed[len(self.handed) // 2],
                                                   self.handed[-1]))
        return f"; {len(self.handed)} launches went {first:.2f}/{middle:.2f}/{last:.2f}s into the commit"

    def rest(self) -> tuple[reconcile.AgentAction, ...]:
        """The actions not sent yet (all of them when nothing went early)."""
        if not self._sent:
            return self._plan.actions
        return tuple(a for a in self._plan.actions
                     if not (isinstance(a, reconcile.Launch) and a.replica in self._sent))


__all__ = ["COMMIT_IN_FLIGHT", "FULL_PASS_INTERVAL", "FULL_PASS_SHARE", "PLACE_BUDGET", "AutoscaleSettings",
           "Controller", "ControllerSettings", "Mirror", "new_replica_id"]
