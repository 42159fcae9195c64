"""The scheduler API's Watch through the generated stubs over a MemoryStore: events after a revision for
services, replicas, hosts and endpoints, the kinds and service filters, delete events carrying the name,
and a compacted revision answered with OUT_OF_RANGE and shoal-error RevisionCompacted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import grpc

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler.model import HostPort, ReplicaPhase
from scheduler.store.base import Delete, Listing, Snapshot
from scheduler.store.keys import KeyRange, KeyRef, R
from scheduler.store.memory import MemoryStore
from tests.fixtures.scheduler_api import (
    Api,
    apply,
    host_id,
    put,
    register,
    rejected,
    replica,
    run,
    service_yaml,
    shoal_error,
)

Event = tuple[str, str, str, str]  # (kind of object, type, name, extra)


@contextlib.asynccontextmanager
async def watching(api: Api, request: pb.WatchRequest) -> AsyncIterator[grpc.aio.UnaryStreamCall]:
    call = api.scheduler.Watch(request)
    try:
        yield call
    finally:
        call.cancel()


def describe(event: pb.WatchEvent) -> Event:
    """An event as a comparable tuple; ``extra`` is what the object says that the test checks."""
    kind = event.WhichOneof("object") or ""
    extra = ""
    if kind == "service":
        extra = str(event.service.spec.replicas)
    elif kind == "replica":
        extra = pb.ReplicaState.Name(event.replica.state)
    elif kind == "host":
        extra = pb.HostState.Name(event.host.state)
    elif kind == "endpoints":
        extra = ",".join(e.address for e in event.endpoints.endpoints)
    return kind, event.type, event.name, extra


async def take(call: grpc.aio.UnaryStreamCall, n: int) -> list[pb.WatchEvent]:
    events: list[pb.WatchEvent] = []
    for _ in range(n):
        event = await call.read()
        assert event is not grpc.aio.EOF, f"the watch ended after {events}"
        events.append(event)
    return events


def test_events_after_a_revision_for_every_kind_of_object() -> None:
    async def scenario(api: Api) -> None:
        after = await api.store.current_revision()
        async with watching(api, pb.WatchRequest(after_revision=after)) as call:
            await apply(api, service_yaml("web", replicas=1))
            assert [describe(e) for e in await take(call, 1)] == [("service", "put", "web", "1")]
            await register(api, 1, address="192.0.2.1:7070", ready=None)
            assert [describe(e) for e in await take(call, 1)] == [
                ("host", "put", host_id(1), "HOST_STATE_NOT_READY")]
            revision = await put(api, replica("web", "web-1", host=1, phase=ReplicaPhase.STARTING))
            starting = await take(call, 2)
            assert [describe(e) for e in starting] == [("replica", "put", "web-1", "REPLICA_STATE_STARTING"),
                                                       ("endpoints", "put", "web", "")]
            await put(api, replica("web", "web-1", host=1, phase=ReplicaPhase.RUNNING, ready=True,
                                   ports=((8080, 31001),), revision=revision))
            running = await take(call, 2)
            assert [describe(e) for e in running] == [("replica", "put", "web-1", "REPLICA_STATE_RUNNING"),
                                                      ("endpoints", "put", "web", "192.0.2.1:31001")]
        revisions = [e.revision for e in starting + running]
        assert revisions == [revision, revision, revision + 1, revision + 1] and revision > after
        assert running[1].endpoints.revision == revision + 1

    run(scenario)


def test_a_watch_resumes_after_the_revision_it_names() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=1))
        middle = await api.store.current_revision()
        await api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=2))
        await api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=3))
        async with watching(api, pb.WatchRequest(after_revision=middle, kinds=["service"])) as call:
            events = await take(call, 2)
        assert [e.revision for e in events] == [middle + 1, middle + 2]
        assert [describe(e)[:3] for e in events] == [("service", "put", "web")] * 2

    run(scenario)


def test_a_watch_from_revision_zero_starts_now() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=1))
        before = await api.store.current_revision()
        async with watching(api, pb.WatchRequest(kinds=["service"])) as call:
            # The server reads the current revision when the stream starts, which the client cannot see:
            # write until a change arrives.
            replicas = 1
            while True:
                replicas += 1
                await api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=replicas))
                with contextlib.suppress(asyncio.TimeoutError):
                    event = await asyncio.wait_for(call.read(), 0.2)
                    break
        assert event.revision > before  # the service as applied before the watch is not replayed
        assert event.service.spec.replicas >= 2

    run(scenario)


def test_delete_events_carry_the_name_only() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=1))
        await register(api, 1, ready=None)
        await put(api, replica("web", "web-1"))
        after = await api.store.current_revision()
        service = await api.store.get(api.store.schema.service("web"))
        one = await api.store.get(api.store.schema.replica("web", "web-1"))
        host = await api.store.get(api.store.schema.host(host_id(1)))
        assert service is not None and one is not None and host is not None
        async with watching(api, pb.WatchRequest(after_revision=after, kinds=["service", "replica",
                                                                               "host"])) as call:
            await api.store.commit([Delete(one)])  # what the leader does once the container is gone
            await api.store.commit([Delete(service)])
            await api.store.commit([Delete(host)])
            events = await take(call, 3)
        assert [describe(e) for e in events] == [("", "delete", "web-1", ""), ("", "delete", "web", ""),
                                                 ("", "delete", host_id(1), "")]

    run(scenario)


def test_the_service_filter_keeps_that_services_objects_only() -> None:
    async def scenario(api: Api) -> None:
        after = await api.store.current_revision()
        async with watching(api, pb.WatchRequest(after_revision=after, service="web")) as call:
            await apply(api, service_yaml("api", replicas=1))
            await register(api, 1, ready=None)
            await put(api, replica("api", "api-1", host=1))
            await apply(api, service_yaml("web", replicas=1))
            await put(api, replica("web", "web-1", host=1))
            events = await take(call, 3)
        assert [describe(e)[:3] for e in events] == [("service", "put", "web"), ("replica", "put", "web-1"),
                                                     ("endpoints", "put", "web")]

    run(scenario)


def test_the_kinds_filter() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=1))
        await register(api, 1, address="192.0.2.1:7070")
        after = await api.store.current_revision()
        async with watching(api, pb.WatchRequest(after_revision=after, kinds=["endpoint"])) as call:
            await api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=2))
            await api.scheduler.CordonHost(pb.HostRequest(host="node-1"))
            await put(api, replica("web", "web-1", host=1, phase=ReplicaPhase.RUNNING, ready=True,
                                   ports=((8080, 31001),)))
            [event] = await take(call, 1)
        assert describe(event) == ("endpoints", "put", "web", "192.0.2.1:31001")

        err = await rejected(api.scheduler.Watch(pb.WatchRequest(kinds=["pods"])).read())
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and shoal_error(err) == "InvalidArgument"
        assert "unknown watch kinds ['pods']" in (err.details() or "")

    run(scenario)


def test_a_compacted_revision_is_out_of_range_with_revision_compacted() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=1))
        old = await api.store.current_revision()
        await api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=2))
        await api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=3))
        await api.store.compact(await api.store.current_revision())
        err = await rejected(api.scheduler.Watch(pb.WatchRequest(after_revision=old)).read())
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE and shoal_error(err) == "RevisionCompacted"
        assert "list again" in (err.details() or "")
        # As the error says: list, then watch from the listing's revision.
        listing = await api.scheduler.ListServices(pb.ListServicesRequest())
        async with watching(api, pb.WatchRequest(after_revision=listing.revision)) as call:
            await api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=4))
            [event] = await take(call, 1)
        assert describe(event) == ("service", "put", "web", "4")

    run(scenario)


class CountingStore(MemoryStore):
    """Counts the reads (snapshots, lists, gets) made of it."""

    reads = 0

    async def snapshot(self) -> Snapshot:
        self.reads += 1
        return await super().snapshot()

    async def list(self, key_range: KeyRange[R]) -> Listing[R]:
        self.reads += 1
        return await super().list(key_range)

    async def get(self, ref: KeyRef[R]) -> R | None:
        self.reads += 1
        return await super().get(ref)


def test_a_watch_reads_the_store_once_not_once_per_event() -> None:
    """Converting each event with a fresh snapshot made a watcher of N replica changes read N snapshots
    of everything: a scale to 1,000 kept the scheduler busy for minutes for one `get replicas -w`."""
    async def scenario(api: Api) -> None:
        assert isinstance(api.store, CountingStore)
        await apply(api, service_yaml("web", replicas=40))
        await register(api, 1, address="192.0.2.1:7070")
        after = await api.store.current_revision()
        reads = api.store.reads
        async with watching(api, pb.WatchRequest(after_revision=after)) as call:
            placed = [replica("web", f"web-{i:02d}", host=1, phase=ReplicaPhase.STARTING) for i in range(40)]
            revision = await put(api, *placed[:20])
            await put(api, *placed[20:])
            await api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=41))
            running = [dataclasses.replace(r, phase=ReplicaPhase.RUNNING, ready=True,
                                           ports=(HostPort(8080, 31000 + i),), revision=revision)
                       for i, r in enumerate(placed[:20])]
            await put(api, *running)
            events: list[pb.WatchEvent] = []
            def done() -> bool:  # every change seen, and the endpoints event that follows the last one
                return (sum(describe(e)[0] in ("replica", "service") for e in events) >= 40 + 1 + 20
                        and any(describe(e)[0] == "endpoints" and len(e.endpoints.endpoints) == 20
                                for e in events))
            for _ in range(200):  # bounded: 61 changes and at most one endpoints event each
                if done():
                    break
                events += await take(call, 1)
            assert done(), events
            calls = api.store.reads - reads
        endpoints = [e for e in events if describe(e)[0] == "endpoints"]
        assert endpoints[-1].endpoints.endpoints[-1].address == "192.0.2.1:31019"
        # The stream's state came from the follower (no read of the store); the scale read the service.
        assert calls == 1, calls

    run(scenario, store=CountingStore)


def test_an_event_carries_the_state_as_of_its_revision() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", replicas=2))
        await register(api, 1, address="192.0.2.1:7070")
        after = await api.store.current_revision()
        request = pb.WatchRequest(after_revision=after, service="web", kinds=["replica", "endpoint"])
        async with watching(api, request) as call:
            await put(api, replica("web", "web-0"))
            await take(call, 2)  # the replica and the (empty) endpoints: the stream is live
            revision = await put(api, replica("web", "web-1", host=1, phase=ReplicaPhase.STARTING))
            await put(api, replica("web", "web-1", host=1, phase=ReplicaPhase.RUNNING, ready=True,
                                   ports=((8080, 31001),), revision=revision))
            events = await take(call, 3)
        # Written back to back, converted whenever the server got to them: the endpoint appears with the
        # change that made it, not earlier.
        assert [(describe(e), e.revision) for e in events] == [
            (("replica", "put", "web-1", "REPLICA_STATE_STARTING"), revision),
            (("replica", "put", "web-1", "REPLICA_STATE_RUNNING"), revision + 1),
            (("endpoints", "put", "web", "192.0.2.1:31001"), revision + 1)]

    run(scenario)
