"""The one place the leader acts on agents: carrying out the reconcile step's agent actions.

``Launch`` becomes ``CreateContainer(id=replica, start=true)`` — the agent's create-and-start, idempotent
on the id — with the service's template, Shoal's labels on it, the image pulled if missing, and the
leader's fence (owner ``scheduler``, epoch = its term), so a deposed leader's late call is refused by
the agent. A pass's launches on one host go in one ``CreateContainers`` call (up to ``max_batch``), each
with its own outcome: a unary call cost the leader about 0.2 ms of cpu, the largest single item while
placing (docs/scaling.md); an agent that does not know the call (UNIMPLEMENTED) gets one call per launch
from then on. ``Retire`` is stop-then-remove with ``missing_ok``. Both are retried by the next reconcile
pass if they fail, never here.

Each action (or batch) runs as a task; while it runs its container ids are *busy* (the reconcile step
leaves them alone), and the outcome is handed to the host's session at once (the container as created,
or its removal), so the next pass sees it without waiting for the event stream. A launch that produced
no container (the image could not be pulled, the host refused) is remembered as a ``LaunchFailure`` for
the next pass. A stale fence means this instance is no longer the leader: it stops acting. Every call's
outcome also goes to ``start_health``, which tells a host that keeps failing to start containers from a
service that cannot start anywhere, and each launch's time from hand-over to answer to ``timings``
(``scheduler.timings``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format

from proto.agent.v1 import agent_pb2 as pb
from scheduler.agents import Session
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
from scheduler.timings import NO_TIMINGS, Timings

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10
CALL_TIMEOUT = 120.0  # a create may pull an image first


@dataclass(frozen=True)
class Settings:
    epoch: int                  # the leader's term: the fence epoch sent with every call
    max_per_host: int = 16      # calls in flight to one agent
    max_batch: int = 128        # launches in one CreateContainers call (the agent takes up to 256)


@dataclass(frozen=True)
class CallFailure:
    """A failed create, from a unary call's error or a batch item's ``CallError``."""

    code: str                   # the gRPC status code's name
    details: str
    metadata: Mapping[str, str]

    @classmethod
    def of(cls, err: grpc.aio.AioRpcError) -> CallFailure:
        metadata = {k: v if isinstance(v, str) else v.decode(errors="replace")
                    for k, v in (err.trailing_metadata() or ())}
        return cls(err.code().name, err.details() or err.code().name, metadata)

    @property
    def stale(self) -> bool:
        return self.metadata.get("shoal-error") == "StaleEpoch"


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
    def __init__(self, settings: Settings, *, session: Callable[[HostId], Session | None],
                 service: Callable[[ServiceName], Service | None], on_done: Callable[[], None],
                 on_deposed: Callable[[str], None], start_health: StartHealth | None = None,
                 timings: Timings = NO_TIMINGS) -> None:
        self.settings = settings
        self.start_health = start_health or StartHealth()
        self.timings = timings
        self._session = session
        self._service = service
        self._on_done = on_done
        self._on_deposed = on_deposed
        self.busy: set[str] = set()
        self.failures: dict[ReplicaId, LaunchFailure] = {}
        self._limits: dict[HostId, asyncio.Semaphore] = {}
        self.templates = Templates()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unbatched: set[HostId] = set()  # agents that answered CreateContainers UNIMPLEMENTED
        self.calls = {"single": 0, "batch": 0}  # create calls made, for tests and benchmarks

    @property
    def fence(self) -> pb.Fence:
        return pb.Fence(owner=FENCE_OWNER, epoch=self.settings.epoch)

    def submit(self, actions: tuple[AgentAction, ...]) -> None:
        handed = time.perf_counter()  # each launch's time runs from here to its agent's answer
        batches: dict[HostId, list[Launch]] = {}
        for action in actions:
            key = action.replica if isinstance(action, Launch) else action.container
            if key in self.busy:
                continue
            self.busy.add(key)
            if isinstance(action, Launch) and not action.replace and action.host not in self._unbatched:
                batches.setdefault(action.host, []).append(action)
            else:
                self._spawn(self._run(action, key, handed), f"act-{key}")
        size = max(1, self.settings.max_batch)
        for host, launches in batches.items():
            if len(launches) == 1:
                self._spawn(self._run(launches[0], launches[0].replica, handed), f"act-{launches[0].replica}")
                continue
            for i in range(0, len(launches), size):
                self._spawn(self._run_batch(host, launches[i:i + size], handed), f"launch-{host[:8]}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
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

    def _timed(self, handed: float, outcome: str) -> None:
        if outcome:
            self.timings.launched(time.perf_counter() - handed, outcome)

    async def _run(self, action: AgentAction, key: str, handed: float) -> None:
        session = self._session(action.host)
        outcome = ""  # a launch's: "created", "failed", or "" when nothing was asked of the agent
        try:
            if session is None:
                return
            limit = self._limits.setdefault(action.host, asyncio.Semaphore(self.settings.max_per_host))
            async with limit:
                if isinstance(action, Launch):
                    outcome = "failed"  # until the agent says otherwise
                    outcome = await self._launch(session, action)
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
            self._timed(handed, outcome)
            self._on_done()

    async def _run_batch(self, host: HostId, launches: list[Launch], handed: float) -> None:
        session = self._session(host)
        outcomes: dict[ReplicaId, str] = {}
        try:
            if session is None:
                return
            limit = self._limits.setdefault(host, asyncio.Semaphore(self.settings.max_per_host))
            async with limit:
                outcomes = {action.replica: "failed" for action in launches}  # until the agent answers
                outcomes = await self._launch_batch(session, launches)
        finally:
            for action in launches:
                self.busy.discard(action.replica)
                self._timed(handed, outcomes.get(action.replica, ""))
            self._on_done()

    def _request(self, action: Launch) -> pb.CreateContainerRequest | None:
        """The create for a launch; None when its service is gone (nothing to launch)."""
        service = self._service(action.service)
        if service is None:
            self.templates.forget(action.service)
            return None
        return pb.CreateContainerRequest(
            id=action.replica, name=action.replica,
            spec=self.templates.spec(service, action.replica, action.generation),
            pull=pb.PULL_POLICY_MISSING, start=True, fence=self.fence)

    async def _launch(self, session: Session, action: Launch) -> str:
        """"created" once the agent answered with the container, "failed" when it refused ("" when the
        service is gone: nothing to launch)."""
        request = self._request(action)
        if request is None:
            return ""
        if action.replace:
            await session.containers.RemoveContainer(pb.RemoveContainerRequest(
                id=action.replica, force=True, missing_ok=True, fence=self.fence), timeout=CALL_TIMEOUT)
            session.forget(action.replica)
        self.calls["single"] += 1
        try:
            created = await session.containers.CreateContainer(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            failure = CallFailure.of(err)
            self._count_health(action.host, failure)
            await self._launch_failed(session, action, failure)
            return "failed"
        self.start_health.succeeded(action.host)
        session.apply(created)
        return "created"

    async def _launch_batch(self, session: Session, launches: list[Launch]) -> dict[ReplicaId, str]:
        """Each launch's outcome, as ``_launch`` says it (none for a launch whose service is gone)."""
        sent = [(action, request) for action in launches if (request := self._request(action)) is not None]
        if not sent:
            return {}
        outcomes = {action.replica: "failed" for action, _ in sent}
        self.calls["batch"] += 1
        try:
            response = await session.containers.CreateContainers(
                pb.CreateContainersRequest(containers=[request for _, request in sent]), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:  # an older agent: one call per launch from now on
                self._unbatched.add(session.host)
                # Batched launches never replace a container, so a single launch raises nothing.
                each = await asyncio.gather(*(self._launch(session, action) for action, _ in sent))
                return {action.replica: outcome for (action, _), outcome in zip(sent, each, strict=True)}
            failure = CallFailure.of(err)
        else:
            if len(response.results) == len(sent):
                for (action, _), result in zip(sent, response.results, strict=True):
                    if result.HasField("error"):
                        error = result.error
                        failure = CallFailure(error.code, error.message or error.code, dict(error.metadata))
                        self._count_health(action.host, failure)
                        await self._launch_failed(session, action, failure)
                    else:
                        self.start_health.succeeded(action.host)
                        session.apply(result.container)
                        outcomes[action.replica] = "created"
                return outcomes
            failure = CallFailure("INTERNAL", f"the agent answered {len(response.results)} results for "
                                              f"{len(sent)} containers", {})
        self._count_health(session.host, failure)  # the call failed as a whole: counted once, not per launch
        for action, _ in sent:
            await self._launch_failed(session, action, failure)
        return outcomes

    def _count_health(self, host: HostId, failure: CallFailure) -> None:
        if host_fault(failure.code, failure.metadata):
            self.start_health.failed(host, at=time.time(), reason=failure.details)

    async def _launch_failed(self, session: Session, action: Launch, failure: CallFailure) -> None:
        """What a failed create leaves: the term's end (a stale fence), the exited container to follow
        (the container exists and failed to start: its state says why), or a launch failure for the
        next pass."""
        if failure.stale:
            self._on_deposed(failure.details)
            return
        if failure.code == "FAILED_PRECONDITION":
            try:
                session.apply(await session.containers.GetContainer(pb.ContainerRef(id=action.replica)))
                return
            except grpc.aio.AioRpcError:
                pass
        log.info("launch of %s on %s failed: %s", action.replica, action.host, failure.details)
        self.failures[action.replica] = LaunchFailure(
            reason=f"could not create its container on {action.host}: {failure.details}", at=time.time())

    async def _retire(self, session: Session, action: Retire) -> None:
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


__all__ = ["Actuator", "CallFailure", "Settings", "Templates", "container_spec"]
