"""The agent's gRPC API: protobuf in, domain values to the runtime, protobuf out.

This module is the only place that knows about protobuf messages and status codes. Every ShoalError is
mapped to a status code with its message unchanged, so the CLI can print exactly what went wrong;
anything else is a bug and becomes INTERNAL with a log line. Every error the agent raises also carries
trailing metadata ``shoal-error`` naming its kind (``StaleEpoch``, ``HistoryTruncated``, ...) plus the
facts a client needs to act on it (``shoal-event-epoch``, ``shoal-oldest-sequence``,
``shoal-resume-after``, ``shoal-launch-kind``). Every call is authorized first (``agent.roles``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from agent import durable, errors, paging, roles
from agent.host_update import EVENT_BATCH, host_update
from agent.images.abort import Abort
from agent.images.pull import Puller
from agent.images.store import Image, ImageStore, ImportProgress
from agent.network.manager import Attachment
from agent.network.ports import ANY_ADDRESS, PortMapping, parse_port_spec
from agent.runtime import events as evlog
from agent.runtime import validation
from agent.runtime.container import Hold
from agent.runtime.containers import Container, ContainerRuntime, PullPolicy
from agent.runtime.core import ExitStatus
from agent.runtime.fencing import Fence
from agent.runtime.health import HealthCheck, HealthResult, HealthStatus, ProbeKind
from agent.runtime.logs import LogEntry
from agent.runtime.restart import RestartMode, RestartPolicy
from agent.runtime.spec import (
    ContainerSpec,
    NetworkMode,
    Resources,
    parse_env,
)
from agent.runtime.state import State
from agent.security.seccomp_profile import SeccompMode, SeccompOption
from agent.streams import LatestPerKey, drain_coalesced, interleave, singly, write_stream_to
from agent.usage.host import Condition
from agent.usage.metrics import AgentMetrics
from agent.usage.sampler import HostSample, Snapshot, UsageSampler
from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[errors.ShoalError], grpc.StatusCode]] = [
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.LaunchError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
]

_STATE_TO_PB = {
    State.CREATED: pb.CONTAINER_STATE_CREATED,
    State.RUNNING: pb.CONTAINER_STATE_RUNNING,
    State.RESTARTING: pb.CONTAINER_STATE_RESTARTING,
    State.EXITED: pb.CONTAINER_STATE_EXITED,
    State.REMOVING: pb.CONTAINER_STATE_EXITED,
    State.REMOVED: pb.CONTAINER_STATE_EXITED,
}
_PB_TO_STATES: dict[pb.ContainerState.ValueType, set[State]] = {
    pb.CONTAINER_STATE_CREATED: {State.CREATED}, pb.CONTAINER_STATE_RUNNING: {State.RUNNING},
    pb.CONTAINER_STATE_RESTARTING: {State.RESTARTING, State.STARTING},
    pb.CONTAINER_STATE_EXITED: {State.EXITED},
}


def state_to_pb(ctr: Container) -> pb.ContainerState.ValueType:
    """A launch in flight is not a state of the API: it shows as created before the first run and as
    restarting before a later one."""
    if ctr.lc.state is State.STARTING:
        return pb.CONTAINER_STATE_CREATED if ctr.lc.started_at is None else pb.CONTAINER_STATE_RESTARTING
    return _STATE_TO_PB[ctr.lc.state]

_RESTART_TO_PB = {RestartMode.NO: pb.RESTART_MODE_NO, RestartMode.ON_FAILURE: pb.RESTART_MODE_ON_FAILURE,
                  RestartMode.ALWAYS: pb.RESTART_MODE_ALWAYS}
_RESTART_FROM_PB = {v: k for k, v in _RESTART_TO_PB.items()}
_HEALTH_TO_PB = {
    HealthStatus.NONE: pb.HEALTH_STATUS_NONE, HealthStatus.STARTING: pb.HEALTH_STATUS_STARTING,
    HealthStatus.HEALTHY: pb.HEALTH_STATUS_HEALTHY, HealthStatus.UNHEALTHY: pb.HEALTH_STATUS_UNHEALTHY,
}
_EVENT_TO_PB = {
    evlog.EventType.CREATED: pb.EVENT_TYPE_CREATED, evlog.EventType.STARTED: pb.EVENT_TYPE_STARTED,
    evlog.EventType.EXITED: pb.EVENT_TYPE_EXITED, evlog.EventType.OOM_KILLED: pb.EVENT_TYPE_OOM_KILLED,
    evlog.EventType.RESTARTING: pb.EVENT_TYPE_RESTARTING,
    evlog.EventType.HEALTH_CHANGED: pb.EVENT_TYPE_HEALTH_CHANGED,
    evlog.EventType.REMOVED: pb.EVENT_TYPE_REMOVED, evlog.EventType.START_FAILED: pb.EVENT_TYPE_START_FAILED,
    evlog.EventType.EVICTED: pb.EVENT_TYPE_EVICTED,
}

_PULL = {
    pb.PULL_POLICY_UNSPECIFIED: PullPolicy.NEVER, pb.PULL_POLICY_NEVER: PullPolicy.NEVER,
    pb.PULL_POLICY_MISSING: PullPolicy.MISSING, pb.PULL_POLICY_ALWAYS: PullPolicy.ALWAYS,
}

T = TypeVar("T")

# How often an import or pull stream sends progress (per layer, the newest report only).
PROGRESS_INTERVAL = 0.1
# A ListContainers page stops before this many encoded bytes (one container always fits: create caps
# its description), far below a client's default 4 MiB receive limit.
PAGE_BYTES = 2 << 20
# The longest status message sent, in bytes (percent-encoding may triple it on the wire; 8 KiB is the
# default limit for all trailers together).
MAX_STATUS_MESSAGE = 1024
# The most items one CreateContainers call takes (the scheduler sends a host's launches of one pass).
MAX_CREATE_BATCH = 256


def status_for(err: errors.ShoalError) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(err, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def error_metadata(err: errors.ShoalError) -> tuple[tuple[str, str], ...]:
    """"shoal-error" tells a client this status came from the agent itself (a registry being UNAVAILABLE
    is not the agent being unreachable) and which kind it is; some kinds carry what to do next."""
    metadata: tuple[tuple[str, str], ...] = (("shoal-error", type(err).__name__),)
    if isinstance(err, errors.LaunchError):
        metadata += (("shoal-launch-kind", err.kind),)
    if isinstance(err, evlog.HistoryTruncated):
        metadata += (("shoal-event-epoch", err.epoch), ("shoal-oldest-sequence", str(err.oldest_sequence)))
    if isinstance(err, evlog.WatcherTooSlow):
        metadata += (("shoal-resume-after", str(err.last_sequence)),)
    return metadata


def status_message(text: str, *, limit: int = MAX_STATUS_MESSAGE) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes: the status message travels in the trailers, which a client
    refuses whole above its metadata limit (8 KiB by default) — the caller would see no error at all."""
    raw = text.encode(errors="replace")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore") + f"… (message cut from {len(raw)} bytes)"


def failure_status(err: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The status a call failing with ``err`` answers: code, message and trailing metadata."""
    if isinstance(err, OSError):
        # An OSError no layer below wrapped: a full disk is still RESOURCE_EXHAUSTED.
        err = durable.os_error(err, op="serve the request at", path=getattr(err, "filename", None) or "?")
    if isinstance(err, errors.ShoalError):
        return status_for(err), status_message(str(err)), error_metadata(err)
    log.exception("internal error", exc_info=err)
    return grpc.StatusCode.INTERNAL, status_message(f"internal error: {err}"), ()


async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: BaseException) -> None:
    code, message, metadata = failure_status(err)
    if metadata:
        context.set_trailing_metadata(metadata)
    await context.abort(code, message)


def unary(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
            roles.authorize(roles.caller_of(context))
            return await fn(self, request, context)
        except (errors.ShoalError, OSError, ValueError) as err:
            await _abort(context, err)
            raise AssertionError("unreachable") from err

    return wrapper


def streaming(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
                      ) -> AsyncIterator[T]:
        try:
            roles.authorize(roles.caller_of(context))
            async for item in fn(self, request, context):
                yield item
        except (errors.ShoalError, OSError, ValueError) as err:
            await _abort(context, err)

    return wrapper


def fence_from_pb(msg: pb.Fence) -> Fence:
    return Fence(owner=msg.owner, epoch=msg.epoch)


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


# -- conversions ---------------------------------------------------------------------------------

_NETWORK_FROM_PB = {pb.NETWORK_MODE_NONE: NetworkMode.NONE, pb.NETWORK_MODE_HOST: NetworkMode.HOST,
                    pb.NETWORK_MODE_BRIDGE: NetworkMode.BRIDGE}
_NETWORK_TO_PB = {v: k for k, v in _NETWORK_FROM_PB.items()}


def port_from_pb(msg: pb.PortMapping) -> PortMapping:
    text = f"{msg.host_ip + ':' if msg.host_ip else ''}{msg.host_port}:{msg.container_port}"
    return parse_port_spec(f"{text}/{msg.protocol}" if msg.protocol else text)


def port_to_pb(port: PortMapping) -> pb.PortMapping:
    host_ip = "" if port.host_ip == ANY_ADDRESS else str(port.host_ip)
    return pb.PortMapping(host_ip=host_ip, host_port=port.host_port, container_port=port.container_port,
                          protocol=port.protocol)


def spec_from_pb(msg: pb.ContainerSpec, *, default_network: NetworkMode = NetworkMode.NONE) -> ContainerSpec:
    if not msg.image:
        raise errors.InvalidArgument("an image is required")
    res = msg.resources
    # 0 means "not set" on the wire; negative values stay and are refused by validate().
    resources = Resources(
        memory_bytes=res.memory_bytes or None, cpu_millis=res.cpu_millis or None,
        pids_max=res.pids_max or None, memory_request_bytes=res.memory_request_bytes or None,
        cpu_request_millis=res.cpu_request_millis or None, storage_bytes=res.storage_bytes or None,
    )
    size = msg.ByteSize()
    if size > validation.MAX_SPEC_BYTES:
        raise errors.InvalidArgument(f"the container spec is {size} bytes: the most a container may have "
                                     f"is {validation.MAX_SPEC_BYTES} (put large data in a file instead)")
    network = default_network if msg.network == pb.NETWORK_MODE_UNSPECIFIED else _enum(
        _NETWORK_FROM_PB, msg.network, what="network mode", known="1 (none), 2 (host) or 3 (bridge)")
    restart = RestartPolicy(mode=_enum(_RESTART_FROM_PB, msg.restart.mode, what="restart mode",
                                       known="0 (no), 1 (on-failure) or 2 (always)"),
                            max_retries=msg.restart.max_retries)
    return validation.validate_spec(ContainerSpec(
        image=msg.image, entrypoint=tuple(msg.entrypoint), command=tuple(msg.command),
        env=parse_env(tuple(msg.env)), working_dir=msg.working_dir, user=msg.user,
        hostname=msg.hostname, resources=resources.validate(),
        read_only=msg.read_only, network=network, labels=tuple(sorted(msg.labels.items())),
        auto_remove=msg.auto_remove, restart=restart,
        health=health_from_pb(msg.health) if msg.HasField("health") else None,
        ports=tuple(port_from_pb(p) for p in msg.ports), seccomp=seccomp_from_pb(msg.seccomp),
    ))


def seccomp_from_pb(msg: pb.Seccomp) -> SeccompOption:
    if msg.unconfined and msg.profile_json:
        raise errors.InvalidArgument("seccomp: a profile was given with unconfined: give one or the other")
    if msg.unconfined:
        return SeccompOption(SeccompMode.UNCONFINED)
    if msg.profile_json:
        return SeccompOption(SeccompMode.CUSTOM, profile=msg.profile_json)
    return SeccompOption()


def seccomp_to_pb(option: SeccompOption) -> pb.Seccomp:
    return pb.Seccomp(unconfined=option.mode is SeccompMode.UNCONFINED, profile_json=option.profile)


def _enum(table: dict[Any, T], value: int, *, what: str, known: str) -> T:
    """An enum value of the request; one this agent does not know is the caller's mistake (a newer
    client, a bad encoder), never silently the default."""
    try:
        return table[value]
    except KeyError:
        raise errors.InvalidArgument(f"unknown {what} {value}: this agent knows {known}") from None


def _pull(value: int) -> PullPolicy:
    return _enum(_PULL, value, what="pull policy", known="0/3 (never), 1 (missing) or 2 (always)")


def _exit_pb(status: ExitStatus) -> pb.WaitContainerResponse:
    return pb.WaitContainerResponse(exit_code=status.exit_code, reason=status.reason, error=status.error)


def _log_pb(entry: LogEntry) -> pb.LogEntry:
    msg = pb.LogEntry(stream=pb.LOG_STREAM_STDERR if entry.stream == "stderr" else pb.LOG_STREAM_STDOUT,
                      line=entry.text, partial=entry.partial)
    msg.time.FromNanoseconds(entry.time_ns)
    return msg


def health_from_pb(msg: pb.HealthCheck) -> HealthCheck:
    which = msg.WhichOneof("probe")
    if which is None:
        raise errors.InvalidArgument("a health check needs a probe: exec, tcp or http")
    common: dict[str, Any] = {
        "interval": msg.interval_seconds or 30.0, "timeout": msg.timeout_seconds or 30.0,
        "retries": msg.retries or 3, "start_period": msg.start_period_seconds,
        "restart_on_unhealthy": msg.restart_on_unhealthy,
    }
    if which == "exec":
        return HealthCheck(kind=ProbeKind.EXEC, command=tuple(msg.exec.command), **common)
    if which == "tcp":
        return HealthCheck(kind=ProbeKind.TCP, port=msg.tcp.port, **common)
    return HealthCheck(kind=ProbeKind.HTTP, port=msg.http.port, path=msg.http.path or "/", **common)


def health_to_pb(check: HealthCheck) -> pb.HealthCheck:
    out = pb.HealthCheck(
        interval_seconds=check.interval, timeout_seconds=check.timeout, retries=check.retries,
        start_period_seconds=check.start_period, restart_on_unhealthy=check.restart_on_unhealthy,
    )
    if check.kind is ProbeKind.EXEC:
        out.exec.command.extend(check.command)
    elif check.kind is ProbeKind.TCP:
        out.tcp.port = check.port
    else:
        out.http.port, out.http.path = check.port, check.path
    return out


def spec_to_pb(spec: ContainerSpec) -> pb.ContainerSpec:
    return pb.ContainerSpec(
        image=spec.image, entrypoint=spec.entrypoint, command=spec.command, env=spec.env,
        working_dir=spec.working_dir, user=spec.user, hostname=spec.hostname,
        resources=pb.Resources(
            memory_bytes=spec.resources.memory_bytes or 0, cpu_millis=spec.resources.cpu_millis or 0,
            pids_max=spec.resources.pids_max or 0,
            memory_request_bytes=spec.resources.memory_request_bytes or 0,
            cpu_request_millis=spec.resources.cpu_request_millis or 0,
            storage_bytes=spec.resources.storage_bytes or 0,
        ),
        read_only=spec.read_only, network=_NETWORK_TO_PB[spec.network],
        ports=[port_to_pb(p) for p in spec.ports],
        labels=dict(spec.labels), auto_remove=spec.auto_remove,
        restart=pb.RestartPolicy(mode=_RESTART_TO_PB[spec.restart.mode],
                                 max_retries=spec.restart.max_retries),
        health=health_to_pb(spec.health) if spec.health is not None else None,
        seccomp=seccomp_to_pb(spec.seccomp),
    )


def container_to_pb(ctr: Container, attachment: Attachment | None = None) -> pb.Container:
    p, lc = ctr.record.prepared, ctr.lc
    out = pb.Container(
        id=ctr.id, name=ctr.name, spec=spec_to_pb(ctr.spec), state=state_to_pb(ctr),
        pid=lc.pid, image_id=p.image_id, argv=p.argv, resolved_env=p.env,
        resolved_working_dir=p.working_dir, uid=p.uid, gid=p.gid, layers=p.lower_dirs,
        upper_dir=p.upper_dir, cgroup_paths=ctr.cgroup_paths,
        log_path=str(ctr.directory / "ctr.log"), hostname=p.hostname,
        health=_HEALTH_TO_PB[lc.health], restart_count=lc.restart_count,
        health_log=[_health_result_pb(r) for r in lc.health_log],
    )
    if ctr.record.owner:
        out.created_by.owner, out.created_by.epoch = ctr.record.owner, ctr.record.epoch
    if lc.next_restart_at is not None:
        out.next_restart_at.CopyFrom(_ts(lc.next_restart_at))
    if attachment is not None:
        out.ip_address, out.gateway = str(attachment.address.ip), str(attachment.gateway)
        out.mac_address = attachment.mac
        out.ports.extend(port_to_pb(port) for port in attachment.ports)
    if lc.exit is not None:
        out.exit_code, out.reason, out.error = lc.exit.exit_code, lc.exit.reason, lc.exit.error
    for field, value in (("created_at", ctr.record.created_at), ("started_at", lc.started_at),
                         ("finished_at", lc.finished_at)):
        if value is not None:
            getattr(out, field).CopyFrom(_ts(value))
    return out


def progress_to_pb(event: ImportProgress) -> pb.ImportImageProgress:
    return pb.ImportImageProgress(
        phase=event.phase, layer=event.layer or "", index=event.index, total=event.total,
        bytes=event.bytes, bytes_total=event.bytes_total or 0, already_present=event.already_present,
    )


def _health_result_pb(result: HealthResult) -> pb.HealthResult:
    return pb.HealthResult(start=_ts(result.start), end=_ts(result.end), ok=result.ok, output=result.output)


def event_to_pb(event: evlog.Event, *, epoch: str) -> pb.Event:
    return pb.Event(
        sequence=event.sequence, time=_ts(event.time), type=_EVENT_TO_PB[event.type],
        container_id=event.container_id, container_name=event.container_name, labels=dict(event.labels),
        exit_code=event.exit_code, reason=event.reason, health=_HEALTH_TO_PB[event.health],
        restart_count=event.restart_count, message=event.message, epoch=epoch,
    )


def image_to_pb(image: Image) -> pb.Image:
    cfg = image.config
    out = pb.Image(
        id=image.id, manifest_digest=image.manifest_digest or "", repo_tags=image.repo_tags,
        size=image.size, layers=image.layers, architecture=image.architecture, os=image.os,
        repo_digests=image.repo_digests,
        config=pb.ImageConfig(
            entrypoint=cfg.entrypoint, cmd=cfg.cmd, env=cfg.env, working_dir=cfg.working_dir,
            user=cfg.user, labels=dict(cfg.labels), exposed_ports=cfg.exposed_ports,
            stop_signal=cfg.stop_signal or "",
        ),
    )
    created = _created_seconds(image.created)
    if created is not None:
        out.created.FromNanoseconds(int(created * 1e9))
    return out


def _created_seconds(created: Any) -> float | None:
    if created is None or created == "":
        return None
    if isinstance(created, int | float):
        return float(created)
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- services ------------------------------------------------------------------------------------

def _position(ctr: Container) -> paging.Position:
    """Where a container sits in a listing: oldest first, the id breaking ties."""
    return (ctr.record.created_at, ctr.id)


class ContainersService(pb_grpc.ContainersServicer):
    def __init__(self, runtime: ContainerRuntime, metrics: AgentMetrics | None = None) -> None:
        self.runtime = runtime
        self.metrics = metrics

    def _pb(self, ctr: Container) -> pb.Container:
        try:
            return container_to_pb(ctr, self.runtime.attachment(ctr))
        except ValueError as err:
            # A record from before create checked everything (a uid past int32): that one container
            # shows what it can, and listing and inspect keep working for all the others.
            log.warning("container %s cannot be described fully: %s", ctr.id, err)
            return pb.Container(id=ctr.id, name=ctr.name, state=state_to_pb(ctr), error=status_message(
                f"this container's record holds values the API cannot carry ({err}); remove it"))

    async def _start(self, ref: str, *, fence: Fence) -> Container:
        started = time.perf_counter()
        try:
            ctr = await self.runtime.start(ref, fence=fence)
        except errors.ShoalError:
            if self.metrics is not None:
                self.metrics.record_start(seconds=time.perf_counter() - started, ok=False)
            raise
        if self.metrics is not None:
            self.metrics.record_start(seconds=time.perf_counter() - started, ok=True)
        return ctr

    @unary
    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Any) -> pb.Container:
        return await self._create(request)

    @unary
    async def CreateContainers(self, request: pb.CreateContainersRequest, context: Any
                               ) -> pb.CreateContainersResponse:
        if len(request.containers) > MAX_CREATE_BATCH:
            raise errors.InvalidArgument(f"CreateContainers takes at most {MAX_CREATE_BATCH} containers "
                                         f"per call, not {len(request.containers)}")
        results = await asyncio.gather(*(self._create_result(item) for item in request.containers))
        return pb.CreateContainersResponse(results=results)

    async def _create_result(self, request: pb.CreateContainerRequest) -> pb.CreateResult:
        """One item of a batch: its container, or the status its own CreateContainer would have failed
        with (a bug in one item fails that item, not the batch)."""
        try:
            return pb.CreateResult(container=await self._create(request))
        except Exception as err:  # reported per item, as a unary call would report it
            code, message, metadata = failure_status(err)
            error = pb.CallError(code=code.name, message=message, metadata=dict(metadata))
            return pb.CreateResult(error=error)

    async def _create(self, request: pb.CreateContainerRequest) -> pb.Container:
        fence = fence_from_pb(request.fence)
        if request.start:
            return self._pb(await self._create_and_start(request, fence))
        ctr = await self.runtime.create(container_id=request.id, name=request.name,
                                        spec=self._spec(request), pull=_pull(request.pull), fence=fence)
        return self._pb(ctr)

    def _spec(self, request: pb.CreateContainerRequest) -> ContainerSpec:
        default = NetworkMode.BRIDGE if self.runtime.network is not None else NetworkMode.NONE
        return spec_from_pb(request.spec, default_network=default)

    async def _create_and_start(self, request: pb.CreateContainerRequest, fence: Fence,
                                hold: Hold | None = None) -> Container:
        return await self.runtime.create_and_start(
            container_id=request.id, name=request.name, spec=self._spec(request), pull=_pull(request.pull),
            fence=fence, hold=hold, start=functools.partial(self._start, fence=fence))

    @streaming
    async def RunContainer(self, request: pb.CreateContainerRequest, context: Any
                           ) -> AsyncIterator[pb.RunOutput]:
        hold = Hold()
        try:
            ctr = await self._create_and_start(request, fence_from_pb(request.fence), hold)
            yield pb.RunOutput(started=self._pb(ctr))
            async for item in self.runtime.attached_run(ctr, hold):
                if isinstance(item, ExitStatus):
                    yield pb.RunOutput(exit=_exit_pb(item))
                else:
                    yield pb.RunOutput(log=_log_pb(item))
        finally:
            hold.release()  # a caller gone mid-create: the container runs on, removed when it exits

    @unary
    async def StartContainer(self, request: pb.StartContainerRequest, context: Any) -> pb.Container:
        return self._pb(await self._start(request.id, fence=fence_from_pb(request.fence)))

    @unary
    async def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> pb.Container:
        timeout = request.timeout_seconds if request.HasField("timeout_seconds") else 10
        return self._pb(await self.runtime.stop(request.id, timeout=timeout,
                                                fence=fence_from_pb(request.fence)))

    @unary
    async def KillContainer(self, request: pb.KillContainerRequest, context: Any) -> pb.Container:
        return self._pb(await self.runtime.kill(request.id, request.signal or "KILL",
                                                fence=fence_from_pb(request.fence)))

    @unary
    async def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Any
                              ) -> pb.RemoveContainerResponse:
        removed, already = await self.runtime.remove(request.id, force=request.force,
                                                     missing_ok=request.missing_ok,
                                                     fence=fence_from_pb(request.fence))
        return pb.RemoveContainerResponse(id=removed, already_removed=already)

    @unary
    async def GetContainer(self, request: pb.ContainerRef, context: Any) -> pb.Container:
        return self._pb(self.runtime.resolve(request.id))

    @unary
    async def ListContainers(self, request: pb.ListContainersRequest, context: Any
                             ) -> pb.ListContainersResponse:
        if request.page_size < 0:
            raise errors.InvalidArgument(f"page size must not be negative, got {request.page_size}")
        cursor = paging.decode(request.page_token) if request.page_token else None
        states: set[State] = set().union(*(_PB_TO_STATES.get(s, set()) for s in request.states))
        found = self.runtime.listing(all=request.all, labels=dict(request.labels), name=request.name,
                                     states=states or None)
        if cursor is None:
            cursor = paging.Cursor(after=(-math.inf, ""), event_sequence=found.event_sequence,
                                   event_epoch=found.event_epoch)
        ordered = sorted((c for c in found.containers if _position(c) > cursor.after), key=_position)
        page, more = paging.take_page(((c, self._pb(c)) for c in ordered), size_of=lambda m: m[1].ByteSize(),
                                      page_size=request.page_size, budget=PAGE_BYTES)
        response = pb.ListContainersResponse(containers=[m for _, m in page],
                                             event_sequence=cursor.event_sequence,
                                             event_epoch=cursor.event_epoch)
        if more:
            response.next_page_token = paging.encode(replace(cursor, after=_position(page[-1][0])))
        return response

    @unary
    async def WaitContainer(self, request: pb.ContainerRef, context: Any) -> pb.WaitContainerResponse:
        return _exit_pb(await self.runtime.wait(request.id))

    @streaming
    async def ContainerLogs(self, request: pb.ContainerLogsRequest, context: Any
                            ) -> AsyncIterator[pb.LogEntry]:
        async for entry in self.runtime.logs(request.id, follow=request.follow,
                                             tail=request.tail or None):
            yield _log_pb(entry)

    @streaming
    async def Exec(self, request: pb.ExecRequest, context: Any) -> AsyncIterator[pb.ExecOutput]:
        # The same bounds as create: execve would refuse these later, with a less helpful error.
        validation.check_strings(request.command, what="exec argument")
        validation.check_strings(request.env, what="exec environment variable")
        validation.check_exec_size(request.command, request.env, source="the exec request")
        if request.working_dir:
            validation.check_path(request.working_dir, what="exec working directory")
        if request.user:
            validation.check_user(request.user)
        async for kind, payload in self.runtime.exec(
            request.id, argv=list(request.command), env=list(parse_env(tuple(request.env))),
            working_dir=request.working_dir, user=request.user,
        ):
            if kind == "exit":
                assert isinstance(payload, int)
                yield pb.ExecOutput(exit_code=payload)
            elif kind == "stdout":
                assert isinstance(payload, bytes)
                yield pb.ExecOutput(stdout=payload)
            else:
                assert isinstance(payload, bytes)
                yield pb.ExecOutput(stderr=payload)


    @streaming
    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Any) -> AsyncIterator[pb.Event]:
        async for message in self.events(request):
            yield message

    def events(self, request: pb.WatchEventsRequest) -> AsyncGenerator[pb.Event, None]:
        """What ``WatchEvents`` streams (``WatchHost`` streams it too)."""
        return singly(self.event_batches(request, most=1))

    async def event_batches(self, request: pb.WatchEventsRequest, *, most: int
                            ) -> AsyncGenerator[list[pb.Event], None]:
        """The same events, as lists of those already waiting (``EventLog.batches``): what ``WatchHost``
        sends as one ``HostUpdate.events`` when its client asks for batches."""
        after = request.after_sequence if request.HasField("after_sequence") else None
        log_ = self.runtime.events
        async with contextlib.aclosing(log_.batches(after_sequence=after, labels=dict(request.labels) or None,
                                                    epoch=request.epoch, most=most)) as batches:
            async for batch in batches:
                messages = []
                for event in batch:
                    message = event_to_pb(event, epoch=log_.epoch)
                    if request.with_container and (ctr := self.runtime.get(event.container_id)) is not None:
                        message.container.CopyFrom(self._pb(ctr))
                    messages.append(message)
                yield messages


class ImagesService(pb_grpc.ImagesServicer):
    def __init__(self, store: ImageStore, runtime: ContainerRuntime, *, scratch: Path,
                 puller: Puller | None = None, metrics: AgentMetrics | None = None) -> None:
        self.store = store
        self.runtime = runtime
        self.scratch = scratch
        self._puller = puller
        self.metrics = metrics

    @property
    def puller(self) -> Puller:
        if self._puller is None:
            raise errors.FailedPrecondition("this agent was started without registry access")
        return self._puller

    @streaming
    async def ImportImage(self, request_iterator: AsyncIterator[pb.ImportImageRequest], context: Any
                          ) -> AsyncIterator[pb.ImportImageProgress]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise errors.InvalidArgument("import needs a path or archive bytes")
        name = first.name or None
        upload: Path | None = None
        try:
            if first.WhichOneof("source") == "path":
                roles.require_local(roles.caller_of(context), what="importing from a path")
                source = Path(first.path)
                if not source.exists():
                    raise errors.NotFound(f"no such file or directory on the agent's host: {source}")
            else:
                try:
                    self.scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".tar", dir=self.scratch)
                except OSError as err:
                    raise durable.os_error(err, op="create an upload file in", path=self.scratch) from err
                os.close(fd)
                upload = source = Path(tmp)
                # Written in a worker thread while the next chunks arrive: a big upload never stalls
                # the event loop, and a full disk is RESOURCE_EXHAUSTED.
                await write_stream_to(upload, (req.chunk async for req in request_iterator),
                                      first=first.chunk)
            async for msg in self._progress_stream(
                lambda report: self.store.import_archive(source, name=name, progress=report)
            ):
                yield msg
        finally:
            if upload is not None:
                with contextlib.suppress(FileNotFoundError):
                    upload.unlink()

    async def _progress_stream(self, work: Callable[[Callable[[ImportProgress], None]], Image]
                               ) -> AsyncIterator[pb.ImportImageProgress]:
        """Run ``work`` (import or pull) in a thread; stream its progress, then the image.

        Reports are coalesced per (layer, phase) and sent at most every PROGRESS_INTERVAL: the workers
        report per chunk, and a message per report cost the pull its event loop and the GIL. A slow
        client keeps one pending report per key, never a backlog, and never slows the work (which
        other pulls of the same layers share)."""
        mailbox: LatestPerKey[tuple[str | None, str], ImportProgress] = LatestPerKey(
            asyncio.get_running_loop())

        def report(event: ImportProgress) -> None:
            if event.phase != "done":  # the final "done" below carries the image
                mailbox.put((event.layer, event.phase), event)

        job = asyncio.ensure_future(asyncio.to_thread(work, report))
        async for event in drain_coalesced(job, mailbox, interval=PROGRESS_INTERVAL):
            yield progress_to_pb(event)
        yield pb.ImportImageProgress(phase="done", image=image_to_pb(job.result()))

    @streaming
    async def PullImage(self, request: pb.PullImageRequest, context: Any
                        ) -> AsyncIterator[pb.ImportImageProgress]:
        puller = self.puller
        abort = Abort()
        try:
            async for msg in self._progress_stream(
                    lambda report: puller.pull(request.ref, progress=report, abort=abort)):
                yield msg
        finally:
            # The call was cancelled (client gone, deadline, agent stopping) or failed: the worker
            # thread must not go on downloading for nobody. A no-op once the pull has finished.
            abort.set("the caller went away")
        if self.metrics is not None:
            self.metrics.record_pull()

    @unary
    async def PruneImages(self, request: pb.PruneImagesRequest, context: Any) -> pb.PruneImagesResponse:
        report = await asyncio.to_thread(self.store.prune, image_in_use=self.runtime.image_in_use,
                                         layers_in_use=self.runtime.layers_in_use)
        return pb.PruneImagesResponse(images=report.images, layers=report.layers, blobs=report.blobs,
                                      freed_bytes=report.freed_bytes)

    @unary
    async def ListImages(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        images = await asyncio.to_thread(self.store.list_images)
        return pb.ListImagesResponse(images=[image_to_pb(i) for i in images])

    @unary
    async def GetImage(self, request: pb.ImageRef, context: Any) -> pb.Image:
        return image_to_pb(await asyncio.to_thread(self.store.resolve, request.ref))

    @unary
    async def RemoveImage(self, request: pb.RemoveImageRequest, context: Any) -> pb.RemoveImageResponse:
        image = await asyncio.to_thread(self.store.resolve, request.ref)
        if self.runtime.image_in_use(image.id):
            # Stricter than docker (which untags freely): a tag a container was created from stays.
            raise errors.FailedPrecondition(
                f"image {request.ref} is in use by a container; remove the container first"
            )
        result = await asyncio.to_thread(self.store.remove, request.ref, in_use=self.runtime.image_in_use)
        untagged = [r for r in result if not r.startswith("sha256:")]
        deleted = [r for r in result if r.startswith("sha256:")]
        return pb.RemoveImageResponse(untagged=untagged, deleted=deleted)


_HOST_FIELDS = (
    "host_id", "hostname", "agent_version", "cpu_cores", "memory_total_bytes", "memory_allocatable_bytes",
    "memory_used_bytes", "memory_committed_bytes", "cpu_committed_millis", "containers",
    "containers_running", "cpu_used_cores", "cpu_allocatable_millis", "memory_limits_bytes",
    "cpu_limits_millis", "disk_total_bytes", "disk_free_bytes", "boot_id", "os", "architecture",
    "storage_limit_enforcement", "storage_limit_detail",
)
_STATS_FIELDS = (
    "id", "name", "image", "cpu_seconds", "cpu_cores", "cpu_fraction_of_limit", "cpu_throttled_seconds",
    "memory_usage_bytes", "memory_working_set_bytes", "memory_rss_bytes", "memory_limit_bytes",
    "oom_events", "pids", "network_rx_bytes", "network_tx_bytes", "network_rx_packets",
    "network_tx_packets", "writable_layer_bytes",
)


def condition_to_pb(condition: Condition) -> pb.HostCondition:
    return pb.HostCondition(type=condition.type, message=condition.message, since=_ts(condition.since))


def host_to_pb(host: HostSample, *, network: tuple[str, str]) -> pb.HostInfo:
    return pb.HostInfo(**{f: getattr(host, f) for f in _HOST_FIELDS}, labels=dict(host.labels),
                       started_at=_ts(host.started_at), subnet=network[0], bridge=network[1],
                       conditions=[condition_to_pb(c) for c in host.conditions])


def snapshot_to_pb(snapshot: Snapshot, *, network: tuple[str, str]) -> pb.UsageSnapshot:
    return pb.UsageSnapshot(
        time=_ts(snapshot.time), host=host_to_pb(snapshot.host, network=network),
        sample_seconds=snapshot.sample_seconds, sequence=snapshot.sequence,
        containers=[pb.ContainerStats(**{f: getattr(c, f) for f in _STATS_FIELDS}, labels=dict(c.labels),
                                      started_at=_ts(c.started_at)) for c in snapshot.containers],
    )


class HostService(pb_grpc.HostServicer):
    def __init__(self, sampler: UsageSampler, *, network: tuple[str, str],
                 event_batches: Callable[..., AsyncGenerator[list[pb.Event], None]]) -> None:
        self.sampler = sampler
        self.network = network  # (subnet, bridge), empty strings without bridge networking
        self.event_batches = event_batches  # what ``WatchHost`` interleaves with usage

    @unary
    async def GetHost(self, request: pb.GetHostRequest, context: Any) -> pb.HostInfo:
        latest = self.sampler.latest()
        host = latest.host if latest is not None else self.sampler.host()
        return host_to_pb(host, network=self.network)

    @streaming
    async def WatchUsage(self, request: pb.WatchUsageRequest, context: Any
                         ) -> AsyncIterator[pb.UsageSnapshot]:
        async for snapshot in self.usage(request):
            yield snapshot

    async def usage(self, request: pb.WatchUsageRequest) -> AsyncGenerator[pb.UsageSnapshot, None]:
        """What ``WatchUsage`` streams (``WatchHost`` streams it too)."""
        if request.interval_seconds < 0:
            raise errors.InvalidArgument(
                f"interval_seconds cannot be negative, got {request.interval_seconds}")
        async for snapshot in self.sampler.subscribe(dict(request.labels) or None,
                                                     every=request.interval_seconds):
            yield snapshot_to_pb(snapshot, network=self.network)

    @streaming
    async def WatchHost(self, request: pb.WatchHostRequest, context: Any) -> AsyncIterator[pb.HostUpdate]:
        most = EVENT_BATCH if request.batch_events else 1
        async for which, item in interleave(self.event_batches(request.events, most=most),
                                            self.usage(request.usage)):
            yield host_update(which, item, batched=request.batch_events)


class SystemService(pb_grpc.SystemServicer):
    def __init__(self, runtime: ContainerRuntime, store: ImageStore) -> None:
        self.runtime = runtime
        self.store = store

    @unary
    async def DiskUsage(self, request: pb.DiskUsageRequest, context: Any) -> pb.DiskUsageResponse:
        usage = await asyncio.to_thread(lambda: self.runtime.disk_usage(self.store.disk_usage()))
        return pb.DiskUsageResponse(
            images=[pb.ImageUsage(id=i.id, repo_tags=i.repo_tags, size=i.size, shared_size=i.shared_size,
                                  containers=i.containers) for i in usage.images],
            layers=usage.layers, layers_bytes=usage.layers_bytes, blobs_bytes=usage.blobs_bytes,
            containers=[pb.ContainerUsage(id=c.id, name=c.name, image=c.image, state=_STATE_TO_PB[c.state],
                                          writable_bytes=c.writable_bytes) for c in usage.containers],
        )


def add_services(server: grpc.aio.Server, *, runtime: ContainerRuntime, store: ImageStore,
                 scratch: Path, sampler: UsageSampler, network: tuple[str, str] = ("", ""),
                 puller: Puller | None = None, metrics: AgentMetrics | None = None) -> None:
    containers = ContainersService(runtime, metrics)
    pb_grpc.add_ContainersServicer_to_server(containers, server)
    pb_grpc.add_ImagesServicer_to_server(
        ImagesService(store, runtime, scratch=scratch, puller=puller, metrics=metrics), server)
    pb_grpc.add_SystemServicer_to_server(SystemService(runtime, store), server)
    pb_grpc.add_HostServicer_to_server(
        HostService(sampler, network=network, event_batches=containers.event_batches), server)
