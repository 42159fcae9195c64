"""The scheduler's agent session reads every page of an agent's listing (issue 12, finding 7), then
watches events from the sequence the first page carried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proto.agent.v1 import agent_pb2 as pb
from scheduler.agents import AgentSession
from scheduler.model import LABEL_SERVICE, HostId


class _Stop(Exception):
    pass


class FakeContainers:
    """Three pages of two managed containers each; records what was asked."""

    def __init__(self) -> None:
        self.list_requests: list[pb.ListContainersRequest] = []
        self.watch_requests: list[pb.WatchEventsRequest] = []

    async def ListContainers(self, request: pb.ListContainersRequest) -> pb.ListContainersResponse:
        self.list_requests.append(request)
        page = int(request.page_token or "0")
        ctrs = [pb.Container(id=f"c{page}{i}", state=pb.CONTAINER_STATE_RUNNING,
                             spec=pb.ContainerSpec(labels={LABEL_SERVICE: "web"})) for i in range(2)]
        return pb.ListContainersResponse(containers=ctrs, event_sequence=7, event_epoch="e",
                                         next_page_token=str(page + 1) if page < 2 else "")

    def WatchEvents(self, request: pb.WatchEventsRequest) -> AsyncIterator[pb.Event]:
        self.watch_requests.append(request)

        async def events() -> AsyncIterator[pb.Event]:
            raise _Stop
            yield pb.Event()  # pragma: no cover - makes this an async generator

        return events()


    def WatchHost(self, request: pb.WatchHostRequest) -> AsyncIterator[pb.HostUpdateBytes]:
        return self.WatchEvents(request.events)  # type: ignore[return-value]  # (it raises at once)


@pytest.mark.parametrize("one_stream", [True, False], ids=["WatchHost", "WatchEvents"])
def test_the_session_pages_through_the_listing_before_watching(one_stream: bool) -> None:
    async def scenario() -> tuple[AgentSession, FakeContainers]:
        session = AgentSession(HostId("h" * 32), "127.0.0.1:1", credentials=None, on_change=lambda _h: None)
        fake = FakeContainers()
        session.containers = fake  # type: ignore[assignment]
        session.one_stream = one_stream
        session._watch_host = fake.WatchHost  # type: ignore[assignment]
        with pytest.raises(_Stop):
            await session._follow_containers()
        await session.channel.close()
        return session, fake

    session, fake = asyncio.run(scenario())
    assert [r.page_token for r in fake.list_requests] == ["", "1", "2"]
    assert all(r.all for r in fake.list_requests)
    assert sorted(session.observation.containers) == ["c00", "c01", "c10", "c11", "c20", "c21"]
    assert [(r.after_sequence, r.epoch, r.with_container) for r in fake.watch_requests] == [(7, "e", True)]
