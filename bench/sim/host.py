"""One simulated host: the agent API the scheduler uses, answered from records instead of containers.

A ``SimHost`` keeps its containers as ``pb.Container`` records and its history in the real agent's
``EventLog`` (in memory), so sequences, epochs, replay, ``HistoryTruncated`` and ``WatcherTooSlow`` are
the agent's own. ``CreateContainer(start=true)`` records the container ``created`` (event CREATED),
waits the host's start delay, then makes it ``running`` (event STARTED) and answers, as the real agent's
create-and-start does; stop and kill make it ``exited`` (EXITED), remove drops it (REMOVED). Fences are
checked like the agent's (the highest epoch per owner; an older one is ``FAILED_PRECONDITION`` with
``shoal-error: StaleEpoch``). ``ListContainers`` pages with the agent's own cursor (``agent.paging``),
optionally at most ``page_size`` per page so tests can force several pages. ``WatchUsage`` sends a
snapshot at once and then every ``usage_interval`` with the host's capacity, committed requests and each
container's (made-up, constant) usage. ``WatchHost`` sends both on one stream as the agent does, made
as cheaply as the simulator can (``bench.sim.watch_host``); their events and snapshots count as
``WatchEvents.event`` and ``WatchUsage.snapshot`` either way.

Failure injection: ``fail("refuse")`` closes the port (the scheduler sees "connection refused": an agent
down on a live host), ``fail("silent")`` keeps it open but answers nothing and sends no usage (a hung
agent: its gRPC core still answers the scheduler's keepalive pings, so only the heartbeat timeout
notices), ``fail("cut")`` is silent with the host's packets dropped as well (a dead machine or a cut
network: ``bench.sim.netcut``, which the fleet applies); ``recover()`` undoes any of them, and
``recover(reboot=True)`` comes back with no containers and a new event epoch and boot id, like a host
that rebooted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from agent import paging
from agent.errors import InvalidArgument
from agent.runtime.events import Event, EventLog, EventType, HistoryTruncated, WatcherTooSlow
from agent.server_options import SERVER_OPTIONS
from agent.streams import singly
from bench.sim.watch_host import add_host_servicer, host_updates, usage_interval, usage_tail
from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc

AGENT_VERSION = "sim"
PAGE_BYTES = 2 << 20  # the real agent's page budget
CONTAINER_MEMORY = 20 << 20  # the working set every simulated container reports
CONTAINER_CPU = 0.002        # cores every simulated container reports

_EVENT_TO_PB = {
    EventType.CREATED: pb.EVENT_TYPE_CREATED, EventType.STARTED: pb.EVENT_TYPE_STARTED,
    EventType.EXITED: pb.EVENT_TYPE_EXITED, EventType.OOM_KILLED: pb.EVENT_TYPE_OOM_KILLED,
    EventType.RESTARTING: pb.EVENT_TYPE_RESTARTING, EventType.HEALTH_CHANGED: pb.EVENT_TYPE_HEALTH_CHANGED,
    EventType.REMOVED: pb.EVENT_TYPE_REMOVED, EventType.START_FAILED: pb.EVENT_TYPE_START_FAILED,
    EventType.EVICTED: pb.EVENT_TYPE_EVICTED,
}


def host_id_of(name: str) -> str:
    """A stable 32-hex-digit host id for a simulated host's name (the scheduler's id format)."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class HostSpec:
    name: str                                   # also the hostname
    port: int                                   # 127.0.0.1:port serves its agent API
    labels: dict[str, str] = field(default_factory=dict)
    cpu_millis: int = 32_000                    # allocatable
    memory_bytes: int = 128 << 30               # allocatable
    start_delay: float = 0.0                    # created → running
    usage_interval: float = 1.0
    page_size: int = 0                          # at most this many per ListContainers page; 0: bytes only
    events_with_container: bool = True          # False: an agent from before WatchEvents.with_container
    watch_host: bool = True                     # False: an agent from before WatchHost
    batch_events: bool = True                   # False: an agent from before WatchHostRequest.batch_events

    @property
    def host_id(self) -> str:
        return host_id_of(self.name)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class SimError(Exception):
    """An error as the agent reports it: a status code and ``shoal-error`` (plus facts) in the trailers."""

    def __init__(self, code: grpc.StatusCode, kind: str, message: str,
                 extra: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.metadata = (("shoal-error", kind), *extra)


def _error_of(err: Exception) -> SimError:
    if isinstance(err, SimError):
        return err
    if isinstance(err, HistoryTruncated):
        facts = (("shoal-event-epoch", err.epoch), ("shoal-oldest-sequence", str(err.oldest_sequence)))
        return SimError(grpc.StatusCode.OUT_OF_RANGE, "HistoryTruncated", str(err), facts)
    if isinstance(err, WatcherTooSlow):
        return SimError(grpc.StatusCode.RESOURCE_EXHAUSTED, "WatcherTooSlow", str(err),
                        (("shoal-resume-after", str(err.last_sequence)),))
    if isinstance(err, InvalidArgument):
        return SimError(grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgument", str(err))
    raise err


async def _abort(context: Any, err: Exception) -> None:
    sim = _error_of(err)
    context.set_trailing_metadata(sim.metadata)
    await context.abort(sim.code, str(sim))


def _requests(spec: pb.ContainerSpec) -> tuple[int, int]:
    """(cpu millis, memory bytes) a container reserves: its requests, a request left 0 being its limit."""
    res = spec.resources
    return (res.cpu_request_millis or res.cpu_millis, res.memory_request_bytes or res.memory_bytes)


class SimHost:
    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.boot_id = secrets.token_hex(16)
        self.events = EventLog(None)
        self.containers: dict[str, pb.Container] = {}
        self.fences: dict[str, int] = {}
        self.started_at = time.time()
        self.server: grpc.aio.Server | None = None
        self.silent = False
        self.cut = False  # its packets are dropped (the fleet cuts and mends: ``bench.sim.netcut``)
        self._answering = asyncio.Event()
        self._answering.set()
        self._next_port = 30000
        self._usage_sequence = 0
        # What a usage snapshot says changes only when a container does: built once per change, then each
        # report is a copy with a new sequence and time (building one for 20 containers costs ~1 ms;
        # a simulator process sends a thousand a second).
        self._version = 0
        self._built: tuple[int, pb.UsageSnapshot] | None = None
        self._built_bytes: tuple[int, bytes] | None = None  # the same, serialized (``WatchHost``)
        self._starts: dict[str, asyncio.Task[None]] = {}
        self.calls: dict[str, int] = {}  # calls answered, by method (what the scheduler costs a host)
        self.usage_streams = 0  # usage streams open now (who follows this host)
        self.usage_intervals_asked: list[float] = []  # each usage stream's interval_seconds, in order
        self.events_after_asked: list[int | None] = []  # each event stream's after_sequence, in order
        self.event_messages = 0  # messages that carried events (one per event unless batched)
        # How late its usage reports went out (a simulator process short of cpu delays every host's:
        # the scheduler then sees silence that is the simulator's, not its own).
        self.usage_late_max = 0.0
        self.usage_late_over_1s = 0

    def usage_late(self, seconds: float) -> None:
        self.usage_late_max = max(self.usage_late_max, seconds)
        if seconds > 1.0:
            self.usage_late_over_1s += 1

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        # The agent's own options: the scheduler's keepalive pings are allowed as the agent allows them.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *SERVER_OPTIONS])
        pb_grpc.add_ContainersServicer_to_server(_Containers(self), server)
        add_host_servicer(_Host(self), server)
        if server.add_insecure_port(self.spec.address) == 0:
            raise OSError(f"cannot listen on {self.spec.address}")
        await server.start()
        self.server = server

    async def stop(self) -> None:
        server, self.server = self.server, None
        for task in self._starts.values():
            task.cancel()
        if server is not None:
            await server.stop(grace=None)

    async def fail(self, mode: str) -> None:
        """``refuse``: the port closes; ``silent``: the port stays open and nothing is answered; ``cut``:
        silent, and marked for the fleet to drop its packets."""
        if mode == "refuse":
            await self.stop()
        elif mode in ("silent", "cut"):
            self.silent = True
            self.cut = mode == "cut"
            self._answering.clear()
        else:
            raise ValueError(f"unknown failure mode {mode!r}: refuse, silent or cut")

    async def recover(self, *, reboot: bool = False) -> None:
        if reboot:
            for task in self._starts.values():
                task.cancel()
            self.containers.clear()
            self._version += 1
            self.fences.clear()
            self.events = EventLog(None)  # a new epoch: watchers must re-list
            self.boot_id = secrets.token_hex(16)
            self.started_at = time.time()
        self.silent = self.cut = False
        self._answering.set()
        if self.server is None:
            await self.start()

    async def answering(self, method: str, count: int = 1) -> None:
        """Wait while the host is silent (a call to a dead machine hangs until its deadline); then count
        ``count`` calls of ``method``."""
        await self._answering.wait()
        self.calls[method] = self.calls.get(method, 0) + count

    # -- what the agent reports -----------------------------------------------------------------

    def info(self) -> pb.HostInfo:
        spec = self.spec
        cpu = memory = running = 0
        for ctr in self.containers.values():
            if ctr.state != pb.CONTAINER_STATE_EXITED:
                c, m = _requests(ctr.spec)
                cpu += c
                memory += m
            running += ctr.state == pb.CONTAINER_STATE_RUNNING
        info = pb.HostInfo(
            host_id=spec.host_id, hostname=spec.name, agent_version=AGENT_VERSION, labels=spec.labels,
            cpu_cores=math.ceil(spec.cpu_millis / 1000), memory_total_bytes=spec.memory_bytes,
            memory_allocatable_bytes=spec.memory_bytes, memory_used_bytes=memory,
            memory_committed_bytes=memory, cpu_committed_millis=cpu, containers=len(self.containers),
            containers_running=running, cpu_allocatable_millis=spec.cpu_millis,
            disk_total_bytes=1 << 40, disk_free_bytes=1 << 39, architecture="amd64", os="linux",
            boot_id=self.boot_id, storage_limit_enforcement="measured")
        info.started_at.FromSeconds(int(self.started_at))
        return info

    def snapshot(self) -> pb.UsageSnapshot:
        if self._built is None or self._built[0] != self._version:
            self._built = (self._version, self._build_snapshot())
        self._usage_sequence += 1
        snap = pb.UsageSnapshot()
        snap.CopyFrom(self._built[1])
        snap.sequence = self._usage_sequence
        snap.time.GetCurrentTime()
        return snap

    def _build_snapshot(self) -> pb.UsageSnapshot:
        snap = pb.UsageSnapshot(host=self.info(), sample_seconds=0.0)
        for ctr in self.containers.values():
            if ctr.state != pb.CONTAINER_STATE_RUNNING:
                continue
            stats = snap.containers.add(id=ctr.id, name=ctr.name, image=ctr.spec.image,
                                        cpu_cores=CONTAINER_CPU, memory_usage_bytes=CONTAINER_MEMORY,
                                        memory_working_set_bytes=CONTAINER_MEMORY,
                                        memory_rss_bytes=CONTAINER_MEMORY,
                                        memory_limit_bytes=ctr.spec.resources.memory_bytes, pids=1)
            stats.labels.update(ctr.spec.labels)
            stats.started_at.CopyFrom(ctr.started_at)
        return snap

    # -- the streams --------------------------------------------------------------------------------

    def event_stream(self, request: pb.WatchEventsRequest) -> AsyncGenerator[pb.Event, None]:
        """What ``WatchEvents`` sends; the log's errors are raised."""
        return singly(self.event_batches(request, most=1))

    async def event_batches(self, request: pb.WatchEventsRequest, *, most: int
                            ) -> AsyncGenerator[list[pb.Event], None]:
        """The same as lists of the events already waiting (``WatchHost`` with ``batch_events``)."""
        log = self.events
        after = request.after_sequence if request.HasField("after_sequence") else None
        self.events_after_asked.append(after)
        async with contextlib.aclosing(log.batches(after_sequence=after, labels=dict(request.labels) or None,
                                                   epoch=request.epoch, most=most)) as batches:
            async for batch in batches:
                await self.answering("WatchEvents.event", len(batch))
                self.event_messages += 1
                messages = []
                for event in batch:
                    message = event_to_pb(event, epoch=log.epoch)
                    if request.with_container and self.spec.events_with_container:
                        ctr = self.containers.get(event.container_id)
                        if ctr is not None:
                            message.container.CopyFrom(ctr)
                    messages.append(message)
                yield messages

    def usage_update(self) -> bytes:
        """The next usage report as a serialized ``HostUpdate`` (``WatchHost``): the snapshot's body,
        serialized once per change, then its time and sequence (``bench.sim.watch_host``)."""
        if self._built_bytes is None or self._built_bytes[0] != self._version:
            self._built_bytes = (self._version, self._build_snapshot().SerializeToString())
        self._usage_sequence += 1
        body = self._built_bytes[1] + usage_tail(self._usage_sequence, time.time_ns())
        return pb.HostUpdateBytes(usage=body).SerializeToString()

    async def usage_stream(self, request: pb.WatchUsageRequest) -> AsyncGenerator[pb.UsageSnapshot, None]:
        """What ``WatchUsage`` sends: a snapshot at once, then one an interval."""
        interval = usage_interval(self, request)
        due = time.monotonic()
        self.usage_streams += 1
        try:
            while True:
                # A silent host sends nothing (a cut network): the scheduler's heartbeat timeout notices.
                await self.answering("WatchUsage.snapshot")
                if not self.silent:
                    self.usage_late(time.monotonic() - due)
                yield self.snapshot()
                await asyncio.sleep(interval)
                due = time.monotonic()
        finally:
            self.usage_streams -= 1

    # -- the container verbs ----------------------------------------------------------------------

    def check_fence(self, fence: pb.Fence) -> None:
        if not fence.owner or not fence.epoch:
            return
        highest = self.fences.get(fence.owner, 0)
        if fence.epoch < highest:
            raise SimError(grpc.StatusCode.FAILED_PRECONDITION, "StaleEpoch",
                           f"fence epoch {fence.epoch} of {fence.owner!r} is older than {highest}")
        self.fences[fence.owner] = fence.epoch

    def resolve(self, ref: str) -> pb.Container:
        ctr = self.containers.get(ref)
        if ctr is None:
            ctr = next((c for c in self.containers.values() if c.name == ref), None)
        if ctr is None:
            raise SimError(grpc.StatusCode.NOT_FOUND, "NotFound", f"no such container: {ref}")
        return ctr

    def _event(self, type: EventType, ctr: pb.Container, *, exit_code: int = 0, reason: str = "") -> None:
        self.events.append(type, container_id=ctr.id, container_name=ctr.name, labels=dict(ctr.spec.labels),
                           exit_code=exit_code, reason=reason)

    async def create(self, request: pb.CreateContainerRequest) -> pb.Container:
        self.check_fence(request.fence)
        cid = request.id or secrets.token_hex(32)
        ctr = self.containers.get(cid)
        if ctr is None:
            ctr = pb.Container(id=cid, name=request.name or cid, spec=request.spec,
                               state=pb.CONTAINER_STATE_CREATED, hostname=request.spec.hostname or cid[:12],
                               image_id="sha256:" + hashlib.sha256(request.spec.image.encode()).hexdigest(),
                               created_by=request.fence)
            ctr.created_at.GetCurrentTime()
            for port in request.spec.ports:
                mapped = ctr.ports.add()
                mapped.CopyFrom(port)
                if not mapped.host_port:
                    mapped.host_port = self._next_port
                    self._next_port += 1
            self.containers[cid] = ctr
            self._version += 1
            self._event(EventType.CREATED, ctr)
        if request.start:
            return await self.start_container(cid)
        return ctr

    async def start_container(self, cid: str) -> pb.Container:
        ctr = self.resolve(cid)
        if ctr.state == pb.CONTAINER_STATE_RUNNING:
            return ctr
        if self.spec.start_delay <= 0 and ctr.id not in self._starts:
            # Nothing to wait for: started here, without a task, a shield and a callback per container
            # (15 % of the simulator's samples in a profile of bench/event_stream_cost.py); the
            # scheduler sees the same two events.
            self._started(ctr)
            return ctr
        pending = self._starts.get(ctr.id)
        if pending is None:
            pending = asyncio.get_running_loop().create_task(self._start_after_delay(ctr.id))
            self._starts[ctr.id] = pending
            pending.add_done_callback(lambda _: self._starts.pop(cid, None))
        try:
            await asyncio.shield(pending)
        except asyncio.CancelledError:
            if not pending.cancelled():
                raise  # this call itself was cancelled
            # stopped, removed or rebooted while starting: answer with what is there now
        return self.resolve(cid)

    async def _start_after_delay(self, cid: str) -> None:
        if self.spec.start_delay > 0:
            await asyncio.sleep(self.spec.start_delay)
        ctr = self.containers.get(cid)
        if ctr is None:
            raise SimError(grpc.StatusCode.NOT_FOUND, "NotFound", f"{cid} was removed while starting")
        self._started(ctr)

    def _started(self, ctr: pb.Container) -> None:
        ctr.state = pb.CONTAINER_STATE_RUNNING
        self._version += 1
        ctr.pid = 10_000 + len(self.containers)
        ctr.started_at.GetCurrentTime()
        ctr.ClearField("finished_at")
        ctr.exit_code = 0
        ctr.reason = ""
        self._event(EventType.STARTED, ctr)

    def exit(self, cid: str, *, exit_code: int, reason: str) -> pb.Container:
        ctr = self.resolve(cid)
        pending = self._starts.pop(ctr.id, None)
        if pending is not None:
            pending.cancel()
        if ctr.state == pb.CONTAINER_STATE_EXITED:
            return ctr
        ctr.state = pb.CONTAINER_STATE_EXITED
        self._version += 1
        ctr.pid = 0
        ctr.exit_code = exit_code
        ctr.reason = reason
        ctr.finished_at.GetCurrentTime()
        self._event(EventType.EXITED, ctr, exit_code=exit_code, reason=reason)
        return ctr

    def remove(self, request: pb.RemoveContainerRequest) -> pb.RemoveContainerResponse:
        self.check_fence(request.fence)
        try:
            ctr = self.resolve(request.id)
        except SimError:
            if request.missing_ok:
                return pb.RemoveContainerResponse(id=request.id, already_removed=True)
            raise
        if ctr.state == pb.CONTAINER_STATE_RUNNING:
            if not request.force:
                raise SimError(grpc.StatusCode.FAILED_PRECONDITION, "FailedPrecondition",
                               f"container {ctr.id} is running: stop it first, or force")
            self.exit(ctr.id, exit_code=137, reason="Killed")
        pending = self._starts.pop(ctr.id, None)
        if pending is not None:
            pending.cancel()
        del self.containers[ctr.id]
        self._version += 1
        self._event(EventType.REMOVED, ctr)
        return pb.RemoveContainerResponse(id=ctr.id)

    def listing(self, request: pb.ListContainersRequest) -> pb.ListContainersResponse:
        if request.page_size < 0:
            raise InvalidArgument(f"page size must not be negative, got {request.page_size}")
        cursor = paging.decode(request.page_token) if request.page_token else paging.Cursor(
            after=(-math.inf, ""), event_sequence=self.events.last_sequence, event_epoch=self.events.epoch)
        wanted = dict(request.labels)
        found = [c for c in self.containers.values()
                 if (request.all or c.state == pb.CONTAINER_STATE_RUNNING)
                 and all(c.spec.labels.get(k) == v for k, v in wanted.items())
                 and (not request.name or c.name == request.name)
                 and (not request.states or c.state in request.states)]
        ordered = sorted((c for c in found if _position(c) > cursor.after), key=_position)
        limits = [n for n in (request.page_size, self.spec.page_size) if n > 0]
        page, more = paging.take_page(ordered, size_of=lambda c: c.ByteSize(),
                                      page_size=min(limits) if limits else 0, budget=PAGE_BYTES)
        response = pb.ListContainersResponse(containers=page, event_sequence=cursor.event_sequence,
                                             event_epoch=cursor.event_epoch)
        if more:
            response.next_page_token = paging.encode(replace(cursor, after=_position(page[-1])))
        return response


def _position(ctr: pb.Container) -> paging.Position:
    return (ctr.created_at.ToNanoseconds() / 1e9, ctr.id)


def event_to_pb(event: Event, *, epoch: str) -> pb.Event:
    out = pb.Event(sequence=event.sequence, type=_EVENT_TO_PB[event.type], container_id=event.container_id,
                   container_name=event.container_name, labels=event.labels, exit_code=event.exit_code,
                   reason=event.reason, restart_count=event.restart_count, message=event.message,
                   epoch=epoch)
    out.time.FromNanoseconds(int(event.time * 1e9))
    return out


class _Containers(pb_grpc.ContainersServicer):
    def __init__(self, host: SimHost) -> None:
        self.host = host

    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Any) -> pb.Container:
        await self.host.answering("CreateContainer")
        try:
            return await self.host.create(request)
        except (SimError, InvalidArgument) as err:
            await _abort(context, err)
            raise

    async def CreateContainers(self, request: pb.CreateContainersRequest, context: Any
                               ) -> pb.CreateContainersResponse:
        """Each item as CreateContainer would answer it; each counts as one CreateContainer call too (what
        the benchmark counts as a launch), the batch once as CreateContainers and its items as
        CreateContainers.items (the unary calls are the difference)."""
        await self.host.answering("CreateContainers")
        await self.host.answering("CreateContainer", len(request.containers))
        await self.host.answering("CreateContainers.items", len(request.containers))
        if self.host.spec.start_delay > 0:  # the items' start delays run side by side
            results = await asyncio.gather(*(self._create_result(item) for item in request.containers))
        else:  # each answers without waiting: in turn, without a task per item
            results = [await self._create_result(item) for item in request.containers]
        return pb.CreateContainersResponse(results=results)

    async def _create_result(self, request: pb.CreateContainerRequest) -> pb.CreateResult:
        try:
            return pb.CreateResult(container=await self.host.create(request))
        except (SimError, InvalidArgument) as err:
            sim = _error_of(err)
            return pb.CreateResult(error=pb.CallError(code=sim.code.name, message=str(sim),
                                                      metadata=dict(sim.metadata)))

    async def StartContainer(self, request: pb.StartContainerRequest, context: Any) -> pb.Container:
        await self.host.answering("StartContainer")
        try:
            self.host.check_fence(request.fence)
            return await self.host.start_container(request.id)
        except SimError as err:
            await _abort(context, err)
            raise

    async def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> pb.Container:
        await self.host.answering("StopContainer")
        try:
            self.host.check_fence(request.fence)
            return self.host.exit(request.id, exit_code=0, reason="Completed")
        except SimError as err:
            await _abort(context, err)
            raise

    async def KillContainer(self, request: pb.KillContainerRequest, context: Any) -> pb.Container:
        await self.host.answering("KillContainer")
        try:
            self.host.check_fence(request.fence)
            return self.host.exit(request.id, exit_code=137, reason="Killed")
        except SimError as err:
            await _abort(context, err)
            raise

    async def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Any
                              ) -> pb.RemoveContainerResponse:
        await self.host.answering("RemoveContainer")
        try:
            return self.host.remove(request)
        except SimError as err:
            await _abort(context, err)
            raise

    async def GetContainer(self, request: pb.ContainerRef, context: Any) -> pb.Container:
        await self.host.answering("GetContainer")
        try:
            return self.host.resolve(request.id)
        except SimError as err:
            await _abort(context, err)
            raise

    async def ListContainers(self, request: pb.ListContainersRequest, context: Any
                             ) -> pb.ListContainersResponse:
        await self.host.answering("ListContainers")
        try:
            return self.host.listing(request)
        except InvalidArgument as err:
            await _abort(context, err)
            raise

    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Any) -> AsyncIterator[pb.Event]:
        await self.host.answering("WatchEvents")
        try:
            async for message in self.host.event_stream(request):
                yield message
        except (HistoryTruncated, WatcherTooSlow, InvalidArgument) as err:
            await _abort(context, err)

    # Not used by the scheduler: a simulated host has no processes, logs or exits to wait for.
    async def WaitContainer(self, request: pb.ContainerRef, context: Any) -> pb.WaitContainerResponse:
        await _unimplemented(context, "WaitContainer")
        raise AssertionError("unreachable")

    async def ContainerLogs(self, request: pb.ContainerLogsRequest, context: Any
                            ) -> AsyncIterator[pb.LogEntry]:
        await _unimplemented(context, "ContainerLogs")
        yield pb.LogEntry()  # pragma: no cover - makes this an async generator

    async def RunContainer(self, request: pb.CreateContainerRequest, context: Any
                           ) -> AsyncIterator[pb.RunOutput]:
        await _unimplemented(context, "RunContainer")
        yield pb.RunOutput()  # pragma: no cover

    async def Exec(self, request: pb.ExecRequest, context: Any) -> AsyncIterator[pb.ExecOutput]:
        await _unimplemented(context, "Exec")
        yield pb.ExecOutput()  # pragma: no cover


async def _unimplemented(context: Any, method: str) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"a simulated host does not implement {method}")


class _Host(pb_grpc.HostServicer):
    def __init__(self, host: SimHost) -> None:
        self.host = host

    async def GetHost(self, request: pb.GetHostRequest, context: Any) -> pb.HostInfo:
        await self.host.answering("GetHost")
        return self.host.info()

    async def WatchUsage(self, request: pb.WatchUsageRequest, context: Any
                         ) -> AsyncIterator[pb.UsageSnapshot]:
        await self.host.answering("WatchUsage")
        try:
            async for snapshot in self.host.usage_stream(request):
                yield snapshot
        except InvalidArgument as err:
            await _abort(context, err)

    # Bytes, not HostUpdate: add_host_servicer registers it without a serializer (bench.sim.watch_host).
    async def WatchHost(self, request: pb.WatchHostRequest,  # type: ignore[override]
                        context: Any) -> AsyncIterator[bytes]:
        if not self.host.spec.watch_host:
            await _unimplemented(context, "WatchHost")
        await self.host.answering("WatchHost")
        try:
            async for update in host_updates(self.host, request):
                yield update
        except (HistoryTruncated, WatcherTooSlow, InvalidArgument) as err:
            await _abort(context, err)


__all__ = ["HostSpec", "SimError", "SimHost", "event_to_pb", "host_id_of"]
