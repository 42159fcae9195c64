"""The agent's gRPC API: protobuf in, domain values to the runtime, protobuf out.

This module is the only place that knows about protobuf messages and status codes. Every ShoalError is
mapped to a status code with its message unchanged, so the CLI can print exactly what went wrong;
anything else is a bug and becomes INTERNAL with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from agent import errors
from agent.images.store import Image, ImageStore, ImportProgress
from agent.runtime.containers import Container, ContainerRuntime, PullPolicy
from agent.runtime.spec import (
    ContainerSpec,
    NetworkMode,
    Resources,
    parse_env,
)
from agent.runtime.state import State
from agent.streams import drain_until_done, threadsafe_putter
from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[errors.ShoalError], grpc.StatusCode]] = [
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
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
    State.EXITED: pb.CONTAINER_STATE_EXITED,
    State.REMOVING: pb.CONTAINER_STATE_EXITED,
}
_PB_TO_STATE = {v: k for k, v in _STATE_TO_PB.items() if k is not State.REMOVING}

_PULL = {
    pb.PULL_POLICY_UNSPECIFIED: PullPolicy.NEVER, pb.PULL_POLICY_NEVER: PullPolicy.NEVER,
    pb.PULL_POLICY_MISSING: PullPolicy.MISSING, pb.PULL_POLICY_ALWAYS: PullPolicy.ALWAYS,
}

T = TypeVar("T")


def status_for(err: errors.ShoalError) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(err, kind):
            return code
    return grpc.StatusCode.UNKNOWN


async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: BaseException) -> None:
    if isinstance(err, errors.ShoalError):
        # "shoal-error" tells a client this status came from the agent itself (a registry being
        # UNAVAILABLE is not the agent being unreachable).
        metadata: tuple[tuple[str, str], ...] = (("shoal-error", type(err).__name__),)
        if isinstance(err, errors.LaunchError):
            metadata += (("shoal-launch-kind", err.kind),)
        context.set_trailing_metadata(metadata)
        await context.abort(status_for(err), str(err))
    log.exception("internal error", exc_info=err)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {err}")


def unary(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
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
            async for item in fn(self, request, context):
                yield item
        except (errors.ShoalError, OSError, ValueError) as err:
            await _abort(context, err)

    return wrapper


def _ts(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


# -- conversions ---------------------------------------------------------------------------------

def spec_from_pb(msg: pb.ContainerSpec) -> ContainerSpec:
    if not msg.image:
        raise errors.InvalidArgument("an image is required")
    res = msg.resources
    for value, what in ((res.memory_bytes, "memory"), (res.cpu_millis, "cpu"), (res.pids_max, "pids")):
        if value < 0:
            raise errors.InvalidArgument(f"{what} limit must not be negative")
    network = NetworkMode.HOST if msg.network == pb.NETWORK_MODE_HOST else NetworkMode.NONE
    return ContainerSpec(
        image=msg.image, entrypoint=tuple(msg.entrypoint), command=tuple(msg.command),
        env=parse_env(tuple(msg.env)), working_dir=msg.working_dir, user=msg.user,
        hostname=msg.hostname,
        resources=Resources(
            memory_bytes=res.memory_bytes or None, cpu_millis=res.cpu_millis or None,
            pids_max=res.pids_max or None,
        ),
        read_only=msg.read_only, network=network, labels=tuple(sorted(msg.labels.items())),
        auto_remove=msg.auto_remove,
    )


def spec_to_pb(spec: ContainerSpec) -> pb.ContainerSpec:
    return pb.ContainerSpec(
        image=spec.image, entrypoint=spec.entrypoint, command=spec.command, env=spec.env,
        working_dir=spec.working_dir, user=spec.user, hostname=spec.hostname,
        resources=pb.Resources(
            memory_bytes=spec.resources.memory_bytes or 0, cpu_millis=spec.resources.cpu_millis or 0,
            pids_max=spec.resources.pids_max or 0,
        ),
        read_only=spec.read_only,
        network=pb.NETWORK_MODE_HOST if spec.network is NetworkMode.HOST else pb.NETWORK_MODE_NONE,
        labels=dict(spec.labels), auto_remove=spec.auto_remove,
    )


def container_to_pb(ctr: Container) -> pb.Container:
    p = ctr.record.prepared
    out = pb.Container(
        id=ctr.id, name=ctr.name, spec=spec_to_pb(ctr.spec), state=_STATE_TO_PB[ctr.state],
        pid=ctr.pid, image_id=p.image_id, argv=p.argv, resolved_env=p.env,
        resolved_working_dir=p.working_dir, uid=p.uid, gid=p.gid, layers=p.lower_dirs,
        upper_dir=p.upper_dir, cgroup_paths=ctr.cgroup_paths,
        log_path=str(ctr.directory / "ctr.log"), hostname=p.hostname,
    )
    if ctr.exit is not None:
        out.exit_code, out.reason, out.error = ctr.exit.exit_code, ctr.exit.reason, ctr.exit.error
    for field, value in (("created_at", ctr.record.created_at), ("started_at", ctr.started_at),
                         ("finished_at", ctr.finished_at)):
        ts = _ts(value)
        if ts is not None:
            getattr(out, field).CopyFrom(ts)
    return out


def progress_to_pb(event: ImportProgress) -> pb.ImportImageProgress:
    return pb.ImportImageProgress(
        phase=event.phase, layer=event.layer or "", index=event.index, total=event.total,
        bytes=event.bytes, bytes_total=event.bytes_total or 0, already_present=event.already_present,
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

class ContainersService(pb_grpc.ContainersServicer):
    def __init__(self, runtime: ContainerRuntime) -> None:
        self.runtime = runtime

    @unary
    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Any) -> pb.Container:
        ctr = await self.runtime.create(container_id=request.id, name=request.name,
                                        spec=spec_from_pb(request.spec), pull=_PULL[request.pull])
        if request.start:
            ctr = await self.runtime.start(ctr.id)
        return container_to_pb(ctr)

    @unary
    async def StartContainer(self, request: pb.ContainerRef, context: Any) -> pb.Container:
        return container_to_pb(await self.runtime.start(request.id))

    @unary
    async def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> pb.Container:
        timeout = request.timeout_seconds if request.HasField("timeout_seconds") else 10
        return container_to_pb(await self.runtime.stop(request.id, timeout=timeout))

    @unary
    async def KillContainer(self, request: pb.KillContainerRequest, context: Any) -> pb.Container:
        return container_to_pb(await self.runtime.kill(request.id, request.signal or "KILL"))

    @unary
    async def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Any
                              ) -> pb.RemoveContainerResponse:
        return pb.RemoveContainerResponse(id=await self.runtime.remove(request.id, force=request.force))

    @unary
    async def GetContainer(self, request: pb.ContainerRef, context: Any) -> pb.Container:
        return container_to_pb(self.runtime.resolve(request.id))

    @unary
    async def ListContainers(self, request: pb.ListContainersRequest, context: Any
                             ) -> pb.ListContainersResponse:
        states: set[State] = {_PB_TO_STATE[s] for s in request.states if s in _PB_TO_STATE}
        found = self.runtime.list_containers(all=request.all, labels=dict(request.labels), name=request.name,
                                  states=states or None)
        return pb.ListContainersResponse(containers=[container_to_pb(c) for c in found])

    @unary
    async def WaitContainer(self, request: pb.ContainerRef, context: Any) -> pb.WaitContainerResponse:
        status = await self.runtime.wait(request.id)
        return pb.WaitContainerResponse(exit_code=status.exit_code, reason=status.reason,
                                        error=status.error)

    @streaming
    async def ContainerLogs(self, request: pb.ContainerLogsRequest, context: Any
                            ) -> AsyncIterator[pb.LogEntry]:
        async for entry in self.runtime.logs(request.id, follow=request.follow,
                                             tail=request.tail or None):
            msg = pb.LogEntry(
                stream=pb.LOG_STREAM_STDERR if entry.stream == "stderr" else pb.LOG_STREAM_STDOUT,
                line=entry.text, partial=entry.partial,
            )
            msg.time.FromNanoseconds(entry.time_ns)
            yield msg

    @streaming
    async def Exec(self, request: pb.ExecRequest, context: Any) -> AsyncIterator[pb.ExecOutput]:
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


    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Any) -> AsyncIterator[pb.Event]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "events are not available yet")
        yield pb.Event()  # pragma: no cover - abort raises


class ImagesService(pb_grpc.ImagesServicer):
    def __init__(self, store: ImageStore, runtime: ContainerRuntime, *, scratch: Path) -> None:
        self.store = store
        self.runtime = runtime
        self.scratch = scratch

    @streaming
    async def ImportImage(self, request_iterator: AsyncIterator[pb.ImportImageRequest], context: Any
                          ) -> AsyncIterator[pb.ImportImageProgress]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise errors.InvalidArgument("import needs a path or archive bytes")
        name = first.name or None
        upload: Path | None = None
        if first.WhichOneof("source") == "path":
            source = Path(first.path)
            if not source.exists():
                raise errors.NotFound(f"no such file or directory on the agent's host: {source}")
        else:
            self.scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".tar", dir=self.scratch)
            upload = source = Path(tmp)
            with os.fdopen(fd, "wb") as f:
                if first.chunk:
                    f.write(first.chunk)
                async for req in request_iterator:
                    f.write(req.chunk)
        try:
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
        """Run ``work`` (import or pull) in a thread; stream its progress, then the image."""
        queue: asyncio.Queue[pb.ImportImageProgress] = asyncio.Queue()
        put = threadsafe_putter(queue)

        def report(event: ImportProgress) -> None:
            if event.phase != "done":  # the final "done" below carries the image
                put(progress_to_pb(event))

        job = asyncio.ensure_future(asyncio.to_thread(work, report))
        async for msg in drain_until_done(job, queue):
            yield msg
        yield pb.ImportImageProgress(phase="done", image=image_to_pb(job.result()))

    @streaming
    async def PullImage(self, request: pb.PullImageRequest, context: Any
                        ) -> AsyncIterator[pb.ImportImageProgress]:
        puller = self.runtime.puller
        async for msg in self._progress_stream(lambda report: puller.pull(request.ref, progress=report)):
            yield msg

    @unary
    async def PruneImages(self, request: pb.PruneImagesRequest, context: Any) -> pb.PruneImagesResponse:
        report = await asyncio.to_thread(self.runtime.prune_images)
        return pb.PruneImagesResponse(images=report.images, layers=report.layers, blobs=report.blobs,
                                      freed_bytes=report.freed_bytes)

    @unary
    async def ListImages(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        images = await asyncio.to_thread(self.store.list_images)
        return pb.ListImagesResponse(images=[image_to_pb(i) for i in images])

    @unary
    async def GetImage(self, request: pb.ImageRef, context: Any) -> pb.Image:
        return image_to_pb(self.store.resolve(request.ref))

    @unary
    async def RemoveImage(self, request: pb.RemoveImageRequest, context: Any) -> pb.RemoveImageResponse:
        image = self.store.resolve(request.ref)
        if self.runtime.image_in_use(image.id):
            # Stricter than docker (which untags freely): a tag a container was created from stays.
            raise errors.FailedPrecondition(
                f"image {request.ref} is in use by a container; remove the container first"
            )
        result = await asyncio.to_thread(self.store.remove, request.ref, in_use=self.runtime.image_in_use)
        untagged = [r for r in result if not r.startswith("sha256:")]
        deleted = [r for r in result if r.startswith("sha256:")]
        return pb.RemoveImageResponse(untagged=untagged, deleted=deleted)


class SystemService(pb_grpc.SystemServicer):
    def __init__(self, runtime: ContainerRuntime) -> None:
        self.runtime = runtime

    @unary
    async def DiskUsage(self, request: pb.DiskUsageRequest, context: Any) -> pb.DiskUsageResponse:
        usage = await asyncio.to_thread(self.runtime.disk_usage)
        return pb.DiskUsageResponse(
            images=[pb.ImageUsage(id=i.id, repo_tags=i.repo_tags, size=i.size, shared_size=i.shared_size,
                                  containers=i.containers) for i in usage.images],
            layers=usage.layers, layers_bytes=usage.layers_bytes, blobs_bytes=usage.blobs_bytes,
            containers=[pb.ContainerUsage(id=c.id, name=c.name, image=c.image, state=_STATE_TO_PB[c.state],
                                          writable_bytes=c.writable_bytes) for c in usage.containers],
        )


def add_services(server: grpc.aio.Server, *, runtime: ContainerRuntime, store: ImageStore,
                 scratch: Path) -> None:
    pb_grpc.add_ContainersServicer_to_server(ContainersService(runtime), server)
    pb_grpc.add_ImagesServicer_to_server(ImagesService(store, runtime, scratch=scratch), server)
    pb_grpc.add_SystemServicer_to_server(SystemService(runtime), server)
