"""The one place the leader acts on agents: carrying out the reconcile step's agent actions.

``Launch`` becomes ``CreateContainer(id=replica, start=true)`` — the agent's create-and-start, idempotent
on the id — with the service's template, Shoal's labels on it, the image pulled if missing, and the
leader's fence (owner ``scheduler``, epoch = its term), so a deposed leader's late call is refused by
the agent. ``Retire`` is stop-then-remove with ``missing_ok``. Both are retried by the next reconcile
pass if they fail, never here.

Each action runs as a task; while it runs its container id is *busy* (the reconcile step leaves it
alone), and the outcome is handed to the host's session at once (the container as created, or its
removal), so the next pass sees it without waiting for the event stream. A launch that produced no
container (the image could not be pulled, the host refused) is remembered as a ``LaunchFailure`` for the
next pass. A stale fence means this instance is no longer the leader: it stops acting. Every launch's
outcome also goes to ``start_health``, which tells a host that keeps failing to start containers from a
service that cannot start anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import json_format

from proto.agent.v1 import agent_pb2 as pb
from scheduler.agents import AgentSession
from scheduler.model import (
    FENCE_OWNER,
    LABEL_GENERATION,
    LABEL_REPLICA,
    LABEL_SERVICE,
    HostId,
    ReplicaId,
    Service,
    ServiceName,
)
from scheduler.reconcile import AgentAction, Launch, LaunchFailure, Retire
from scheduler.start_health import StartHealth, host_fault

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10
CALL_TIMEOUT = 120.0  # a create may pull an image first


@dataclass(frozen=True)
class Settings:
    epoch: int                  # the leader's term: the fence epoch sent with every call
    max_per_host: int = 16      # calls in flight to one agent


class Templates:
    """Each service's template as the agent's ``ContainerSpec``, parsed once per template generation.

    ``json_format.Parse`` of a template was about 3 % of the leader's samples while placing (one per
    launch, docs/scaling.md); a copy of the parsed message costs a fraction of that. One entry per
    service, replaced when its template generation (or text) changes, dropped when a launch finds its
    service gone.
    """

    def __init__(self) -> None:
        self._parsed: dict[ServiceName, tuple[int, str, pb.ContainerSpec]] = {}

    def spec(self, service: Service, replica: ReplicaId, generation: int) -> pb.ContainerSpec:
        """A new spec of the service's template, with the labels that tie the container to its replica."""
        known = self._parsed.get(service.name)
        template = service.spec.template_json
        if known is None or known[0] != service.template_generation or known[1] != template:
            known = (service.template_generation, template, json_format.Parse(template, pb.ContainerSpec()))
            self._parsed[service.name] = known
        spec = pb.ContainerSpec()
        spec.CopyFrom(known[2])
        spec.labels[LABEL_SERVICE] = service.name
        spec.labels[LABEL_REPLICA] = replica
        spec.labels[LABEL_GENERATION] = str(generation)
        return spec

    def forget(self, service: ServiceName) -> None:
        self._parsed.pop(service, None)


def container_spec(service: Service, replica: ReplicaId, generation: int) -> pb.ContainerSpec:
    """The template as the agent's spec, with the labels that tie the container to its replica (parsed
    afresh: the actuator keeps ``Templates`` instead)."""
    return Templates().spec(service, replica, generation)


class Actuator:
    def __init__(self, settings: Settings, *, session: Callable[[HostId], AgentSession | None],
                 service: Callable[[ServiceName], Service | None], on_done: Callable[[], None],
                 on_deposed: Callable[[str], None], start_health: StartHealth | None = None) -> None:
        self.settings = settings
        self.start_health = start_health or StartHealth()
        self._session = session
        self._service = service
        self._on_done = on_done
        self._on_deposed = on_deposed
        self.busy: set[str] = set()
        self.failures: dict[ReplicaId, LaunchFailure] = {}
        self._limits: dict[HostId, asyncio.Semaphore] = {}
        self.templates = Templates()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def fence(self) -> pb.Fence:
        return pb.Fence(owner=FENCE_OWNER, epoch=self.settings.epoch)

    def submit(self, actions: tuple[AgentAction, ...]) -> None:
        for action in actions:
            key = action.replica if isinstance(action, Launch) else action.container
            if key in self.busy:
                continue
            self.busy.add(key)
            task = asyncio.get_running_loop().create_task(self._run(action, key), name=f"act-{key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def absorbed(self, replicas: set[ReplicaId]) -> None:
        """The replicas whose launch failures a committed reconcile pass has recorded."""
        for rid in replicas:
            self.failures.pop(rid, None)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, action: AgentAction, key: str) -> None:
        session = self._session(action.host)
        try:
            if session is None:
                return
            limit = self._limits.setdefault(action.host, asyncio.Semaphore(self.settings.max_per_host))
            async with limit:
                if isinstance(action, Launch):
                    await self._launch(session, action)
                else:
                    await self._retire(session, action)
        except grpc.aio.AioRpcError as err:
            trailing = dict(err.trailing_metadata() or ())
            if trailing.get("shoal-error") == "StaleEpoch":
                self._on_deposed(err.details() or "stale epoch")
            elif isinstance(action, Launch):
                log.info("launch of %s on %s failed: %s", action.replica, action.host, err.details())
            else:
                log.info("retiring %s on %s failed: %s", action.container, action.host, err.details())
        finally:
            self.busy.discard(key)
            self._on_done()

    async def _launch(self, session: AgentSession, action: Launch) -> None:
        service = self._service(action.service)
        if service is None:
            self.templates.forget(action.service)
            return
        if action.replace:
            await session.containers.RemoveContainer(pb.RemoveContainerRequest(
                id=action.replica, force=True, missing_ok=True, fence=self.fence), timeout=CALL_TIMEOUT)
            session.forget(action.replica)
        request = pb.CreateContainerRequest(
            id=action.replica, name=action.replica,
            spec=self.templates.spec(service, action.replica, action.generation),
            pull=pb.PULL_POLICY_MISSING, start=True, fence=self.fence)
        try:
            created = await session.containers.CreateContainer(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            metadata = {k: v if isinstance(v, str) else v.decode(errors="replace")
                        for k, v in (err.trailing_metadata() or ())}
            if host_fault(err.code().name, metadata):
                self.start_health.failed(action.host, at=time.time(), reason=err.details() or err.code().name)
            stale = metadata.get("shoal-error") == "StaleEpoch"
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION and not stale:
                # A launch failure (command not found...): the container exists, exited; its state
                # says why, and the next pass sees it through the session.
                try:
                    session.apply(await session.containers.GetContainer(pb.ContainerRef(id=action.replica)))
                    return
                except grpc.aio.AioRpcError:
                    pass
            if not stale:
                self.failures[action.replica] = LaunchFailure(
                    reason=f"could not create its container on {action.host}: {err.details()}",
                    at=time.time())
            raise
        self.start_health.succeeded(action.host)
        session.apply(created)

    async def _retire(self, session: AgentSession, action: Retire) -> None:
        try:
            await session.containers.StopContainer(pb.StopContainerRequest(
                id=action.container, timeout_seconds=STOP_GRACE_SECONDS, fence=self.fence),
                timeout=STOP_GRACE_SECONDS + 40)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        await session.containers.RemoveContainer(pb.RemoveContainerRequest(
            id=action.container, force=True, missing_ok=True, fence=self.fence), timeout=CALL_TIMEOUT)
        session.forget(action.container)


__all__ = ["Actuator", "Settings", "Templates", "container_spec"]
