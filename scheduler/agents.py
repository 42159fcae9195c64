"""The leader's connection to each host's agent: what runs there, kept current, and a client to act.

One ``AgentSession`` per registered host, over one gRPC channel to the agent's advertised address with
the scheduler's certificate (mTLS; the agent authorizes the "scheduler" role). It keeps a
``HostObservation`` of the host's Shoal containers (those with the ``shoal.service`` label) the way the
agent's API is built to be followed: ``ListContainers`` gives the containers and the event sequence the
listing reflects, ``WatchEvents`` continues from exactly there, and each event refreshes its container
(sent along with the event, ``with_container``; from ``GetContainer`` when an agent does not; a removal
drops it). The view is *complete* once a listing arrived after the latest
(re)connection; a lost stream, or a history the agent no longer has (``OUT_OF_RANGE``), means relisting.
Along with the events, usage snapshots bring the host's capacity and conditions once a second — and are
the heartbeat (``--agent-keepalive`` adds HTTP/2 pings, off by default). Both come on one ``WatchHost``
stream (a stream costs the session's process memory per host: docs/scaling.md, part 15); an agent
from before ``WatchHost`` (``UNIMPLEMENTED``) is followed with ``WatchEvents`` and ``WatchUsage`` side
by side, as before. A session is connected while its streams are, and no snapshot for
``heartbeat_timeout`` seconds makes it *silent* — not connected, with the silence as its error, as a
network cut shows only silence — until the next snapshot; seconds in which the leader's own loop was
stalled do not count, nor as much of the silence as other hosts' reports are read late
(``scheduler.loop_stalls``). Only a silence of ``BREAK_AFTER``
heartbeat timeouts breaks the streams and relists. A busy leader hears reports late — they wait behind its
backlog, seconds longer than any stall its monitor sees (2 s more at 2,000 hosts) — and breaking every late
session made each relist all over again: a storm in which all 2,000 sessions broke within seconds and the
leader fell further behind (docs/scaling.md).

Every change calls ``on_change(host)`` so the controller can reconcile — a usage snapshot only when it
changes what a pass reads of the host (its room and conditions), not once a second per host. Sessions
never decide anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

import grpc

from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc
from scheduler import session_breaks
from scheduler.cancellation import raise_if_cancelling
from scheduler.connect_gate import ConnectGate
from scheduler.loop_stalls import LoopStalls
from scheduler.model import (
    LABEL_GENERATION,
    LABEL_REPLICA,
    LABEL_SERVICE,
    HostId,
    HostPort,
    Replica,
    ReplicaId,
    ServiceName,
)
from scheduler.observed import ContainerState, ContainerUsage, Health, HostObservation, ObservedContainer
from scheduler.usage_pace import HEARTBEAT_TIMEOUT, UsagePace

log = logging.getLogger(__name__)

# Reconnecting to an agent that went away: soon (a restarted agent is back within a second or two),
# then at most every half second (a refused connection costs nothing, and a restarted agent must be
# followed again well within the host grace period), and from the start after each connection.
RETRY_INITIAL = 0.1
RETRY_CAP = 0.5
# Ask agents for a usage report this often (0: every sample, once a second). A leader following
# thousands of hosts pays for every report: 250-400 us of cpu each, nearly all grpc.aio's (docs/scaling.md);
# the controller and session workers choose it by how many hosts they follow (scheduler.usage_pace).
USAGE_INTERVAL = 0.0
# Silent this many heartbeat timeouts: the streams are given up and the host relisted (a host that is
# gone for good is found by its connection's error or by this).
BREAK_AFTER = 3

_STATES = {
    pb.CONTAINER_STATE_CREATED: ContainerState.CREATED, pb.CONTAINER_STATE_RUNNING: ContainerState.RUNNING,
    pb.CONTAINER_STATE_RESTARTING: ContainerState.RESTARTING,
    pb.CONTAINER_STATE_EXITED: ContainerState.EXITED,
}
_HEALTH = {
    pb.HEALTH_STATUS_NONE: Health.NONE, pb.HEALTH_STATUS_STARTING: Health.STARTING,
    pb.HEALTH_STATUS_HEALTHY: Health.HEALTHY, pb.HEALTH_STATUS_UNHEALTHY: Health.UNHEALTHY,
}


WATCH_USAGE = "/shoal.agent.v1.Host/WatchUsage"
WATCH_HOST = "/shoal.agent.v1.Host/WatchHost"


def usage_of(snapshot: pb.UsageSnapshot, received: float | None = None) -> dict[str, ContainerUsage]:
    """The usage of the scheduler's containers in one snapshot (those carrying the replica label); taken
    at the snapshot's time, or when it was ``received`` (default: now) if it has none."""
    if snapshot.HasField("time"):
        at = snapshot.time.ToNanoseconds() / 1e9
    else:
        at = received if received is not None else time.time()
    return {c.id: ContainerUsage(
        cpu_milli=round(c.cpu_cores * 1000), memory_bytes=c.memory_working_set_bytes,
        started_at=c.started_at.ToNanoseconds() / 1e9 if c.HasField("started_at") else 0.0, at=at)
        for c in snapshot.containers if LABEL_REPLICA in c.labels}


def observe_container(ctr: pb.Container) -> ObservedContainer | None:
    """A container as the scheduler sees it; None for one that is not the scheduler's."""
    labels = ctr.spec.labels
    service = labels.get(LABEL_SERVICE)
    if not service:
        return None
    try:
        generation = int(labels.get(LABEL_GENERATION, "0"))
    except ValueError:
        generation = 0
    # One string where two are equal, and one per service name: a session keeps every container it
    # follows, and a leader's worker follows 100,000 of them (docs/scaling.md, part 14).
    cid = ctr.id
    replica = labels.get(LABEL_REPLICA, cid)
    return ObservedContainer(
        id=cid, service=ServiceName(sys.intern(service)),
        replica=ReplicaId(cid if replica == cid else replica),
        generation=generation, state=_STATES.get(ctr.state, ContainerState.EXITED),
        health=_HEALTH.get(ctr.health, Health.NONE), exit_code=ctr.exit_code, reason=ctr.reason,
        error=ctr.error, restart_count=ctr.restart_count,
        ports=tuple(HostPort(container_port=p.container_port, host_port=p.host_port,
                             protocol=p.protocol or "tcp") for p in ctr.ports if p.host_port),
    )


class Session(Protocol):
    """What the controller and the actuator use of a host's session: an ``AgentSession`` in the leader's
    process, or a ``scheduler.session_workers.RemoteSession`` whose session runs in a worker."""

    host: HostId
    address: str
    started_at: float
    heartbeat_timeout: float
    observation: HostObservation
    info: pb.HostInfo | None
    error: str
    agent_down: bool

    @property
    def usage(self) -> dict[str, ContainerUsage]: ...

    @property
    def containers(self) -> pb_grpc.ContainersStub: ...

    def apply(self, ctr: pb.Container) -> None: ...

    def forget(self, container_id: str) -> None: ...

    def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Credentials:
    """The scheduler's client certificate for agents (None: plain TCP, tests only)."""

    ca: bytes
    cert: bytes
    key: bytes

    def channel(self, address: str, options: tuple[tuple[str, int], ...] | None = None) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                             certificate_chain=self.cert)
        return grpc.aio.secure_channel(address, creds,
                                       options=CHANNEL_OPTIONS if options is None else options)


# One channel per host, each paid for in memory (bench/session_memory.py; docs/scaling.md, parts 12, 14
# and 15). Retries off: Shoal sets no retry policy, and gRPC's retry state was ~11 KiB of a channel with
# its streams; a call that fails is decided again by the next reconcile pass. No channelz (gRPC's
# introspection, which nothing reads here) and the minimal filter stack (without the idle, census and
# message-size filters: a session's channel is never idle, and its deadlines hold, as a test checks
# against a silent host): 6 KiB a host together.
CHANNEL_OPTIONS = (("grpc.enable_retries", 0), ("grpc.enable_channelz", 0), ("grpc.minimal_stack", 1))

# Keepalive (``--agent-keepalive``, off by default): an HTTP/2 ping on each agent's connection once it has
# read nothing for the period, answered by the agent's gRPC core (not its event loop), and the connection
# closed when one goes unanswered for twice the period (``ping_timeout_ms`` is what gRPC applies to a
# keepalive ping's answer; ``keepalive_timeout_ms`` alone did not end the connection). A dead machine or
# a cut network shows only silence: with pings, the host's stream fails within about three periods of
# its last word, whatever the pace of usage reports (3 s apart at 5,000 hosts in one process, so twice
# that before a missed report shows it). Pings carry no data: the limit on pings without data is off, and
# the agent allows them every half second (``agent.server_options``). Off by default: a ping costs the
# process following the host about a third of what a report does in grpc.aio (66 µs), and at 5,000 hosts
# on a 2-core machine a ping every second overloaded it (docs/scaling.md, part 22).
KEEPALIVE_MIN_S = 1.0


def keepalive_options(period: float) -> tuple[tuple[str, int], ...]:
    """The channel options for a keepalive ping every ``period`` seconds (0: none)."""
    if period <= 0:
        return ()
    timeout_ms = int(2 * period * 1000)
    return (("grpc.keepalive_time_ms", int(period * 1000)), ("grpc.keepalive_timeout_ms", timeout_ms),
            ("grpc.http2.ping_timeout_ms", timeout_ms), ("grpc.http2.max_pings_without_data", 0))


class _Methods:
    """Stands in for a channel while a generated stub is built: records how each method is made."""

    def __getattr__(self, kind: str) -> Callable[..., tuple[str, tuple[Any, ...], dict[str, Any]]]:
        return lambda *args, **kwargs: (kind, args, kwargs)


class LazyStub:
    """A generated gRPC stub whose methods are made on a channel when first used. A stub makes every
    method at once (thirteen for ``Containers``: 8 KiB of RSS a host in a session worker following
    thousands, docs/scaling.md part 14), and a session calls three or four of them."""

    def __init__(self, stub: type[Any], channel: grpc.aio.Channel) -> None:
        specs = _STUB_SPECS.get(stub)
        if specs is None:
            specs = _STUB_SPECS[stub] = dict(vars(stub(_Methods())))
        self._specs = specs
        self._channel = channel

    def __getattr__(self, name: str) -> Any:
        specs = self.__dict__.get("_specs", {})  # (empty before __init__ ran: copy, pickle)
        if name not in specs:
            raise AttributeError(name)
        kind, args, kwargs = specs[name]
        method = getattr(self._channel, kind)(*args, **kwargs)
        setattr(self, name, method)  # found without __getattr__ from now on
        return method


_STUB_SPECS: dict[type[Any], dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]]] = {}


def open_channel(address: str, credentials: Credentials | None, *, keepalive: float = 0.0
                 ) -> grpc.aio.Channel:
    options = CHANNEL_OPTIONS + keepalive_options(keepalive)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return credentials.channel(address, options)


class AgentSession:
    """Follows one host's agent; ``containers`` is the client the actuator uses."""

    def __init__(self, host: HostId, address: str, *, credentials: Credentials | None,
                 on_change: Callable[[HostId], None], heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
                 usage_interval: float = USAGE_INTERVAL, stalls: LoopStalls | None = None,
                 gate: ConnectGate | None = None, keepalive: float = 0.0) -> None:
        self.host = host
        self.started_at = time.time()  # when this session began following the host
        self.heartbeat_timeout = heartbeat_timeout
        self.usage_interval = usage_interval  # what its usage stream asks for (``pace`` changes it)
        self._paced: tuple[float, float] | None = None  # (interval, heartbeat) for the next subscription
        # The leader's own stalls, not counted as the host's silence (the controller's, shared by every
        # session; a session on its own keeps one of its own).
        self._own_stalls = stalls is None
        self._stalls = LoopStalls() if stalls is None else stalls
        self.stalls_excused = 0  # times the watchdog would have made it silent but for a stall or backlog
        self._heard = time.monotonic()  # the latest sign of life (a usage snapshot, or a new attempt)
        self._heard_stalled = self._stalls.stalled()  # the loop's stalled seconds at that moment
        self._excused = False           # the current silence was already excused once (counted)
        self._gate = gate               # shared by the process's sessions: so many connecting at once
        self._in_gate = False           # this session holds one of its slots
        self.silent = False             # no report for a heartbeat timeout: not connected, streams kept
        self.address = address
        self._credentials = credentials
        self._on_change = on_change
        self.observation = HostObservation(host=host)
        self.info: pb.HostInfo | None = None
        self._decided: tuple[object, ...] | None = None  # decided_by(info), kept: asked once a second
        # The latest usage snapshot as it arrived, decoded into ``usage`` only when something reads it
        # (the autoscaler, on its own clock): decoding every host's containers every second cost ~65 µs
        # each for 30 containers, most of a session's cpu at thousands of hosts. Kept as bytes: a decoded
        # report holds 20.6 KiB for 20 containers, its bytes 4.7 KiB (docs/scaling.md, part 14).
        self._report: bytes | None = None
        self._usage: dict[str, ContainerUsage] | None = {}
        self.last_seen = 0.0      # wall time of the latest usage snapshot
        self.error = ""           # why it is not connected, for a person
        # The host itself answered the latest attempt (connection refused): only the agent is down, and
        # its containers are most likely still running (the supervisor outlives the agent).
        self.agent_down = False
        self.channel = open_channel(address, credentials, keepalive=keepalive)
        self.containers = cast(pb_grpc.ContainersStub, LazyStub(pb_grpc.ContainersStub, self.channel))
        # Events and usage on one stream, the reports left undecoded (``_report``); False once the agent
        # answered that it has no WatchHost (an older agent): then two streams, each on its own call.
        self.one_stream = True
        self._watch_host = self.channel.unary_stream(
            WATCH_HOST, request_serializer=pb.WatchHostRequest.SerializeToString,
            response_deserializer=_host_update)
        self._task: asyncio.Task[None] | None = None
        self._usage_ok = False
        self._events_ok = False

    @property
    def usage(self) -> dict[str, ContainerUsage]:
        """The latest usage of each scheduler-managed container (its id is its replica's id)."""
        if self._usage is None:
            self._usage = ({} if self._report is None
                           else usage_of(pb.UsageSnapshot.FromString(self._report), self.last_seen))
        return self._usage

    def start(self) -> None:
        if self._own_stalls:
            self._stalls.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"agent-{self.host[:8]}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._own_stalls:
            await self._stalls.close()
        await self.channel.close()

    # -- what the actuator reports back -----------------------------------------------------------

    def apply(self, ctr: pb.Container) -> None:
        """A container the actuator just created or started: known at once, before its events."""
        seen = observe_container(ctr)
        if seen is not None:
            self._set(seen.id, seen)

    def forget(self, container_id: str) -> None:
        self._set(container_id, None)

    def pace(self, interval: float, heartbeat_timeout: float) -> None:
        """Ask for usage every ``interval`` seconds from now on, silent after ``heartbeat_timeout``: the
        stream subscribes again after its next report (the view is untouched: events continue after the
        last one seen), and the new heartbeat applies from that subscription, so that no report of the old
        pace is judged by the new one."""
        if (interval, heartbeat_timeout) == (self.usage_interval, self.heartbeat_timeout):
            self._paced = None
        else:
            self._paced = (interval, heartbeat_timeout)

    # -- following the agent ------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RETRY_INITIAL
        while True:
            if self._gate is not None:
                await self._gate.enter()
                self._in_gate = True
            # Each attempt gets a whole heartbeat timeout from when it begins (not from a wait for the
            # gate); the watchdog says why a host that never answered is not ready.
            self._hear()
            said = (self.error, self.agent_down)
            try:
                await _first_error(self._follow_containers(), self._watchdog(),
                                   *(() if self.one_stream else (self._follow_usage(),)))
            except asyncio.CancelledError:
                self._leave_gate()
                raise
            except _OlderAgent:
                log.info("agent at %s (host %s) has no WatchHost: following its events and usage on two "
                         "streams", self.address, self.host)
                self._leave_gate()
                self._disconnected()
                continue  # at once, and not a break: it answered
            except grpc.aio.AioRpcError as err:
                raise_if_cancelling()
                self.error = f"{err.code().name}: {err.details()}"
                self.agent_down = "connection refused" in (err.details() or "").lower()
                kind = err.code().name
            except HeartbeatMissed as err:
                self.error = str(err)
                self.agent_down = False
                kind = "heartbeat missed"
            except Exception as err:  # a bug must not end the session for good
                raise_if_cancelling()
                log.exception("agent session %s failed", self.host)
                self.error = str(err)
                kind = type(err).__name__
            self._leave_gate()
            connected_before = self.observation.complete
            if connected_before:
                session_breaks.breaks.add(kind)
            changed = self._disconnected()
            if not changed and (self.error, self.agent_down) != said:
                # An attempt that never connected failed otherwise than the last: the controller judges a
                # host's status only when its session says it changed (``Controller._host_facts``).
                self._on_change(self.host)
            if connected_before:
                delay = RETRY_INITIAL
            await asyncio.sleep(delay)
            delay = min(RETRY_CAP, delay * 2)

    def _leave_gate(self) -> None:
        if self._in_gate:
            assert self._gate is not None  # only ever entered through it
            self._in_gate = False
            self._gate.leave()

    def _followed_now(self) -> None:
        """The attempt follows its host (connected, completely listed): its gate slot is for another."""
        if self._in_gate and self.observation.connected and self.observation.complete:
            self._leave_gate()

    def _disconnected(self) -> bool:
        """Whether that changed the observation (and the controller was told)."""
        self._usage_ok = self._events_ok = False
        self.silent = False
        if self.observation.connected or self.observation.complete:
            self.observation = replace(self.observation, connected=False, complete=False)
            self._on_change(self.host)
            return True
        return False

    async def _follow_containers(self) -> None:
        while True:
            listing = await self.containers.ListContainers(pb.ListContainersRequest(all=True))
            seen = {}
            while True:
                for ctr in listing.containers:
                    observed = observe_container(ctr)
                    if observed is not None:
                        seen[observed.id] = observed
                if not listing.next_page_token:
                    break
                # Every page repeats the first page's event sequence: watching from it after the last
                # page misses nothing that changed while paging.
                listing = await self.containers.ListContainers(
                    pb.ListContainersRequest(all=True, page_token=listing.next_page_token))
            self._events_ok = True
            self.agent_down = False
            self.observation = HostObservation(host=self.host, connected=self._usage_ok and not self.silent,
                                               complete=True, containers=seen)
            if not self.silent:
                self.error = ""
            self._followed_now()
            self._on_change(self.host)
            try:
                if self.one_stream:
                    await self._watch(listing.event_sequence, listing.event_epoch)
                else:
                    await self._watch_events(listing.event_sequence, listing.event_epoch)
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    continue  # history gone, or we fell behind: relist
                if err.code() == grpc.StatusCode.UNIMPLEMENTED and self.one_stream:
                    self.one_stream = False
                    raise _OlderAgent from err
                raise

    async def _watch(self, sequence: int, epoch: str) -> None:
        """Events after ``sequence`` and usage on one ``WatchHost`` stream. Paced anew, it subscribes again
        after its next report, continuing after the last event it saw: the view needs no relist."""
        while True:
            self._take_pace()
            call = self._watch_host(pb.WatchHostRequest(
                events=pb.WatchEventsRequest(after_sequence=sequence, epoch=epoch, with_container=True),
                usage=pb.WatchUsageRequest(interval_seconds=self.usage_interval), batch_events=True))
            async for kind, payload in call:
                if kind == _USAGE:
                    self._on_usage(payload)
                    if self._paced is not None:
                        break  # subscribe again at the new pace; the agent answers with a report at once
                    continue
                # A batch (what the agent had waiting), or one event from an agent that does not batch.
                events = pb.EventBatch.FromString(payload).events if kind == _EVENTS else (
                    pb.Event.FromString(payload),)
                for event in events:
                    sequence, epoch = event.sequence, event.epoch or epoch
                    await self._on_event(event)
            else:
                raise ConnectionError("the agent ended its stream")
            call.cancel()

    async def _watch_events(self, sequence: int, epoch: str) -> None:
        """Events after ``sequence`` on ``WatchEvents``, for an agent from before ``WatchHost``."""
        request = pb.WatchEventsRequest(after_sequence=sequence, epoch=epoch, with_container=True)
        async for event in self.containers.WatchEvents(request):
            await self._on_event(event)
        raise ConnectionError("the agent ended its event stream")

    async def _on_event(self, event: pb.Event) -> None:
        if LABEL_SERVICE not in event.labels:
            return
        if event.type == pb.EVENT_TYPE_REMOVED:
            self._set(event.container_id, None)
            return
        if event.HasField("container"):  # the agent sent it along: no round trip per event
            self.apply(event.container)
            return
        try:  # an agent that does not send it, or the container is gone (its REMOVED event follows)
            ctr = await self.containers.GetContainer(pb.ContainerRef(id=event.container_id))
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            self._set(event.container_id, None)  # removed since: its REMOVED event follows
            return
        self.apply(ctr)

    def _hear(self) -> None:
        self._heard = time.monotonic()
        self._heard_stalled = self._stalls.stalled()
        self._excused = False

    async def _watchdog(self) -> None:
        """Makes the session silent when the host has sent nothing for the heartbeat timeout, and breaks
        it after ``BREAK_AFTER`` of them — not counting the time the leader's loop itself was stalled,
        when the host's reports waited unread in the socket (a stall longer than the timeout made every
        session look silent at once), as far as the leader is still behind, nor as much of the silence
        as other hosts' reports are read late now (``LoopStalls.excused_silence``)."""
        while True:
            timeout = self.heartbeat_timeout  # (``pace`` may change it)
            silent = time.monotonic() - self._heard
            excused = self._stalls.excused_silence(silent, self._stalls.stalled() - self._heard_stalled)
            unexcused = silent - excused
            if unexcused >= BREAK_AFTER * timeout:
                raise HeartbeatMissed(f"no report from the agent for {silent:.1f} s (unreachable?)")
            if unexcused >= timeout:
                self._go_silent(f"no report from the agent for {silent:.1f} s (unreachable?)")
                await asyncio.sleep(BREAK_AFTER * timeout - unexcused)
                continue
            if silent >= timeout and not self._excused:  # counted once per silence
                self._excused = True
                self.stalls_excused += 1
            await asyncio.sleep(timeout - unexcused)

    def _go_silent(self, why: str) -> None:
        if self.silent:
            return
        self.silent = True
        self.error = why
        self.agent_down = False
        if self.observation.connected:
            self.observation = replace(self.observation, connected=False)
        self._on_change(self.host)  # also while connecting: its error ends the host's borrowed status

    def _take_pace(self) -> None:
        """The pace asked for since the last subscription, for the next one."""
        if self._paced is not None:
            (self.usage_interval, self.heartbeat_timeout), self._paced = self._paced, None

    async def _follow_usage(self) -> None:
        """Usage on ``WatchUsage``, for an agent from before ``WatchHost``."""
        watch_usage = self.channel.unary_stream(  # the reports undecoded: ``_report``
            WATCH_USAGE, request_serializer=pb.WatchUsageRequest.SerializeToString)
        while True:
            self._take_pace()
            request = pb.WatchUsageRequest(labels={}, interval_seconds=self.usage_interval)
            call = watch_usage(request)
            async for report in call:
                self._on_usage(report)
                if self._paced is not None:
                    break  # subscribe again at the new pace; the agent answers with a report at once
            else:
                raise ConnectionError("the agent ended its usage stream")
            call.cancel()

    def _on_usage(self, report: bytes) -> None:
        snapshot = pb.UsageSnapshot.FromString(report)
        # A copy: a submessage kept would keep the whole decoded report alive with it.
        info = pb.HostInfo()
        info.CopyFrom(snapshot.host)
        decided = decided_by(info)
        changed = decided != self._decided
        self.info, self._decided = info, decided
        self.last_seen = time.time()
        if snapshot.HasField("time"):  # how far behind the leader reads its hosts
            self._stalls.read(self.last_seen - snapshot.time.ToNanoseconds() / 1e9)
        self._report, self._usage = report, None
        self._hear()
        if self.silent or not self._usage_ok:
            if self.silent:  # heard again on the same streams: nothing was missed, nothing to relist
                self.silent = False
                self.error = ""
            self._usage_ok = True
            changed = True
            if self._events_ok:
                self.observation = replace(self.observation, connected=True)
                self._followed_now()
        # A snapshot that changes nothing a reconcile pass reads is only a heartbeat: every host sends
        # one a second, and a pass for each kept the leader busy with passes that decided nothing
        # (docs/scaling.md). Usage itself is read by the autoscaler on its own clock.
        if changed:
            self._on_change(self.host)

    def _set(self, container_id: str, seen: ObservedContainer | None) -> None:
        observation = self.observation.with_container(container_id, seen)
        if observation is not self.observation:
            self.observation = observation
            self._on_change(self.host)


def pace_sessions(sessions: Iterable[AgentSession], pace: UsagePace, interval: float, *, who: str) -> None:
    """Have a process's sessions ask for usage every ``interval`` seconds (``UsagePace.interval_for``)."""
    sessions = list(sessions)
    log.info("%s: asking %d agents for usage %s (--usage-interval auto, at most %g reports a second)", who,
             len(sessions), f"every {interval:g} s" if interval > 0 else "every second",
             pace.reports_per_second)
    heartbeat = pace.heartbeat_for(interval)
    for session in sessions:
        session.pace(interval, heartbeat)


class ReplicaUsage(Mapping[str, ContainerUsage]):
    """Replicas' latest usage by replica (= container) id, looked up through the session of the host the
    replica is on, so only the snapshots of hosts asked about are decoded."""

    def __init__(self, sessions: Mapping[HostId, Session],
                 replicas: Mapping[ReplicaId, Replica]) -> None:
        self._sessions = sessions
        self._replicas = replicas

    def __getitem__(self, key: str) -> ContainerUsage:
        replica = self._replicas.get(ReplicaId(key))
        session = self._sessions.get(replica.host) if replica is not None and replica.host else None
        if session is None:
            raise KeyError(key)
        return session.usage[key]

    def __iter__(self) -> Iterator[str]:
        for session in self._sessions.values():
            yield from session.usage

    def __len__(self) -> int:
        return sum(len(session.usage) for session in self._sessions.values())


def decided_by(info: pb.HostInfo) -> tuple[object, ...]:
    """What a reconcile pass reads of a host's report (``Controller._fresh``: room and conditions)."""
    return (info.cpu_allocatable_millis, info.memory_allocatable_bytes, info.cpu_committed_millis,
            info.memory_committed_bytes, tuple(c.type for c in info.conditions))


_USAGE, _EVENTS, _EVENT = "usage", "events", "event"  # what a HostUpdate carries


def _host_update(data: bytes) -> tuple[str, bytes]:
    """A ``HostUpdate`` as (what it carries, its payload's bytes). Only the payload is kept: a message
    held while the stream waits for the next would keep a second copy of each host's latest report."""
    update = pb.HostUpdateBytes.FromString(data)
    if update.HasField("usage"):
        return _USAGE, update.usage
    if update.HasField("events"):
        return _EVENTS, update.events
    return _EVENT, update.event


class HeartbeatMissed(Exception):
    """The agent went silent for longer than the heartbeat timeout."""


class _OlderAgent(Exception):
    """The agent has no ``WatchHost``: follow it again, on two streams."""


async def _first_error(*coros: Coroutine[Any, Any, None]) -> None:
    """Run ``coros`` together until the first one fails (or ends); cancel the rest, then re-raise.
    (``asyncio.gather`` would leave the others running after the first error.)"""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["HEARTBEAT_TIMEOUT", "USAGE_INTERVAL", "AgentSession", "Credentials", "HeartbeatMissed",
           "ReplicaUsage", "Session", "decided_by", "observe_container", "open_channel"]
