"""A pass's launches on one host go in one ``CreateContainers`` call, each with its own outcome; an agent
that does not know the call gets one ``CreateContainer`` per launch. Over real gRPC against simulated
hosts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from bench.sim import host as sim
from bench.sim.host import HostSpec, SimError, SimHost
from proto.agent.v1 import agent_pb2 as pb
from scheduler.actuator import Actuator, Settings
from scheduler.agents import AgentSession
from scheduler.model import HostId, ReplicaId, Service, ServiceName, ServiceSpec, TemplateFacts
from scheduler.reconcile import Launch
from tests.fixtures.etcd import free_port
from tests.fixtures.sim_session import BOUND_S, following, until
from tests.fixtures.timings import KeptTimings

EPOCH = 5
WEB = Service(spec=ServiceSpec(name=ServiceName("web"), replicas=6,
                               template_json='{"image": "busybox:1", "command": ["sleep", "600"]}',
                               facts=TemplateFacts(image="busybox:1")), generation=1, template_generation=1)


class Scene:
    def __init__(self, hosts: dict[HostId, tuple[SimHost, AgentSession]]) -> None:
        self.hosts = hosts
        self.deposed: list[str] = []
        self.timings = KeptTimings()
        self.actuator = Actuator(Settings(epoch=EPOCH), session=lambda h: hosts[h][1] if h in hosts else None,
                                 service={WEB.name: WEB}.get, on_done=lambda: None,
                                 on_deposed=self.deposed.append, timings=self.timings)

    def launches(self, host: HostId, *ids: str) -> tuple[Launch, ...]:
        return tuple(Launch(host=host, replica=ReplicaId(i), service=WEB.name, generation=1) for i in ids)

    async def act(self, *launches: Launch) -> None:
        self.actuator.submit(launches)
        await until(lambda: not self.actuator.busy)


@contextlib.asynccontextmanager
async def scene(count: int) -> AsyncIterator[Scene]:
    async with contextlib.AsyncExitStack() as stack:
        hosts: dict[HostId, tuple[SimHost, AgentSession]] = {}
        for i in range(count):
            spec = HostSpec(name=f"batch-{i}", port=free_port(), usage_interval=0.05)
            pair = await stack.enter_async_context(following(spec))
            await until(lambda s=pair[1]: s.observation.complete)  # type: ignore[misc]
            hosts[HostId(spec.host_id)] = pair
        yield Scene(hosts)


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 4 * BOUND_S))


def test_launches_on_one_host_go_in_one_call_and_a_lone_launch_in_a_unary_one() -> None:
    async def scenario() -> None:
        async with scene(2) as s:
            (a, (host_a, session_a)), (b, (host_b, _)) = s.hosts.items()
            await s.act(*s.launches(a, "web-1", "web-2", "web-3", "web-4", "web-5"), *s.launches(b, "web-6"))
            assert host_a.calls.get("CreateContainers") == 1
            assert host_b.calls.get("CreateContainers") is None and host_b.calls["CreateContainer"] == 1
            assert set(host_a.containers) == {f"web-{i}" for i in range(1, 6)}
            assert set(host_b.containers) == {"web-6"}
            # Each outcome reached its session at once, before any event.
            assert {f"web-{i}" for i in range(1, 6)} <= set(session_a.observation.containers)
            assert s.actuator.calls == {"single": 1, "batch": 1}
            assert not s.actuator.failures and not s.deposed
            # Each launch timed from its hand-over to its answer, batched or not.
            assert s.timings.outcomes() == {"created": 6}
            assert all(seconds > 0 for seconds, _ in s.timings.launches)
            created = host_a.containers["web-3"]
            assert (created.created_by.owner, created.created_by.epoch) == ("scheduler", EPOCH)
            assert created.spec.labels["shoal.replica"] == "web-3"

    run(scenario())


def test_each_item_has_its_own_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    real = SimHost.create

    async def create(self: SimHost, request: pb.CreateContainerRequest) -> pb.Container:
        if request.id == "web-2":
            raise SimError(grpc.StatusCode.NOT_FOUND, "NotFound", "image busybox:1 not found in any registry")
        if request.id in ("web-3", "web-4"):
            raise SimError(grpc.StatusCode.INTERNAL, "ShoalError", "the host's disk failed")
        return await real(self, request)

    monkeypatch.setattr(SimHost, "create", create)

    async def scenario() -> None:
        async with scene(1) as s:
            ((a, (host, _)),) = s.hosts.items()
            await s.act(*s.launches(a, "web-1", "web-2", "web-3", "web-4"))
            assert host.calls.get("CreateContainers") == 1
            assert set(host.containers) == {"web-1"}
            assert set(s.actuator.failures) == {"web-2", "web-3", "web-4"}
            assert s.timings.outcomes() == {"created": 1, "failed": 3}
            assert "not found in any registry" in s.actuator.failures[ReplicaId("web-2")].reason
            # The host's own failures count against it, each (a missing image does not).
            assert s.actuator.start_health.state(a).failures == 2
            assert "disk failed" in s.actuator.start_health.state(a).reason

    run(scenario())


def test_a_stale_fence_in_a_batch_ends_the_term_and_records_no_failure() -> None:
    async def scenario() -> None:
        async with scene(1) as s:
            ((a, (host, _)),) = s.hosts.items()
            host.fences["scheduler"] = EPOCH + 1  # a newer leader has acted on this host
            await s.act(*s.launches(a, "web-1", "web-2"))
            assert not host.containers
            assert s.deposed and "older than" in s.deposed[0]
            assert not s.actuator.failures
            assert s.timings.outcomes() == {"failed": 2}

    run(scenario())


def test_an_agent_without_the_call_gets_one_call_per_launch_from_then_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def unimplemented(self: Any, request: pb.CreateContainersRequest, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    monkeypatch.setattr(sim._Containers, "CreateContainers", unimplemented)

    async def scenario() -> None:
        async with scene(1) as s:
            ((a, (host, _)),) = s.hosts.items()
            await s.act(*s.launches(a, "web-1", "web-2", "web-3"))
            assert set(host.containers) == {"web-1", "web-2", "web-3"}
            await s.act(*s.launches(a, "web-4", "web-5"))
            assert set(host.containers) == {f"web-{i}" for i in range(1, 6)}
            assert s.actuator.calls == {"single": 5, "batch": 1}  # one batch tried, then singles only
            assert not s.actuator.failures and not s.deposed
            assert s.timings.outcomes() == {"created": 5}  # each once, the batch tried first or not

    run(scenario())


def test_a_launch_is_timed_once_by_its_outcome_and_one_with_nothing_to_launch_is_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = SimHost.create

    async def create(self: SimHost, request: pb.CreateContainerRequest) -> pb.Container:
        if request.id == "web-2":
            raise SimError(grpc.StatusCode.INTERNAL, "ShoalError", "the host's disk failed")
        return await real(self, request)

    monkeypatch.setattr(SimHost, "create", create)

    async def scenario() -> None:
        async with scene(2) as s:
            (a, (host_a, _)), (b, (host_b, _)) = s.hosts.items()
            gone = Launch(host=b, replica=ReplicaId("old-1"), service=ServiceName("gone"), generation=1)
            await s.act(*s.launches(a, "web-1"), *s.launches(b, "web-2"), gone)
            assert set(host_a.containers) == {"web-1"} and not host_b.containers
            assert s.timings.outcomes() == {"created": 1, "failed": 1}  # the gone service's: never asked

    run(scenario())
