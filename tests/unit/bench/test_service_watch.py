"""bench.service_watch over a fake scheduler stub: the points it records from Watch events, what
``wait_until`` answers (the state at ``since``, a later point, nothing), and a broken stream reopened
from the last revision seen."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from bench.service_watch import Point, ServiceWatch
from proto.scheduler.v1 import scheduler_pb2 as spb

RUNNING = spb.REPLICA_STATE_RUNNING
STARTING = spb.REPLICA_STATE_STARTING


class Broken(grpc.RpcError):  # type: ignore[misc]  # grpc is untyped here
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the scheduler went away"


class FakeCall:
    """A server stream: yields what the test sends, ends on ``None``, raises what the test sends."""

    def __init__(self) -> None:
        self.events: queue.Queue[spb.WatchEvent | Exception | None] = queue.Queue()

    def __iter__(self) -> Iterator[spb.WatchEvent]:
        while True:
            item = self.events.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self) -> None:
        self.events.put(None)


class FakeStub:
    def __init__(self, *, declared: int, replicas: list[spb.Replica], revision: int) -> None:
        self.declared = declared
        self.replicas = replicas
        self.revision = revision
        self.requests: list[spb.WatchRequest] = []
        self.calls: list[FakeCall] = []
        self.opened = threading.Semaphore(0)

    def ListReplicas(self, request: spb.ListReplicasRequest, timeout: float) -> spb.ListReplicasResponse:
        return spb.ListReplicasResponse(replicas=self.replicas, revision=self.revision)

    def GetService(self, request: spb.GetServiceRequest, timeout: float) -> spb.Service:
        return spb.Service(spec=spb.ServiceSpec(name=request.name, replicas=self.declared))

    def Watch(self, request: spb.WatchRequest) -> FakeCall:
        call = FakeCall()
        self.requests.append(request)
        self.calls.append(call)
        self.opened.release()
        return call

    def stream(self) -> FakeCall:
        assert self.opened.acquire(timeout=5), "the watch opened no stream"
        return self.calls[-1]


def replica(rid: str, state: int = RUNNING, *, ready: bool = True) -> spb.Replica:
    return spb.Replica(id=rid, service="web", state=state, ready=ready)  # type: ignore[arg-type]


def put_replica(revision: int, r: spb.Replica) -> spb.WatchEvent:
    return spb.WatchEvent(revision=revision, type="put", replica=r)


def put_service(revision: int, declared: int) -> spb.WatchEvent:
    return spb.WatchEvent(revision=revision, type="put",
                          service=spb.Service(spec=spb.ServiceSpec(name="web", replicas=declared)))


@pytest.fixture
def stub() -> FakeStub:
    return FakeStub(declared=1, replicas=[replica("web-a")], revision=10)


def test_events_become_points_and_the_stream_asks_from_the_listing(stub: FakeStub) -> None:
    watch = ServiceWatch(stub, "web")  # type: ignore[arg-type]
    try:
        call = stub.stream()
        assert stub.requests[0].after_revision == 10
        assert list(stub.requests[0].kinds) == ["service", "replica"] and stub.requests[0].service == "web"
        assert watch.last.declared == 1 and watch.last.ready == 1
        since = time.perf_counter()
        call.events.put(put_service(11, 3))
        call.events.put(put_replica(12, replica("web-b", STARTING, ready=False)))
        call.events.put(put_replica(13, replica("web-b")))
        call.events.put(spb.WatchEvent(revision=14, type="delete", name="web-a"))
        decided = watch.wait_until(lambda p: p.declared == 3, since=since, timeout=5)
        assert decided is not None and decided.t >= since and decided.revision == 11
        two = watch.wait_until(lambda p: p.ready == 2, since=since, timeout=5)
        assert two is not None and (two.replicas, two.running, two.revision) == (2, 2, 13)
        gone = watch.wait_until(lambda p: p.replicas == 1, since=two.t, timeout=5)
        assert gone is not None and gone.revision == 14
    finally:
        watch.close()


def test_the_state_at_since_counts_stamped_since_and_an_unmet_wait_ends(stub: FakeStub) -> None:
    watch = ServiceWatch(stub, "web")  # type: ignore[arg-type]
    try:
        stub.stream()
        since = time.perf_counter()
        now = watch.wait_until(lambda p: p.ready == 1, since=since, timeout=5)
        assert now == Point(since, 1, 1, 1, 1, 10)
        assert watch.wait_until(lambda p: p.declared == 7, since=since, timeout=0.3) is None
    finally:
        watch.close()


def test_an_event_that_changes_nothing_watched_adds_no_point(stub: FakeStub) -> None:
    watch = ServiceWatch(stub, "web")  # type: ignore[arg-type]
    try:
        call = stub.stream()
        call.events.put(put_replica(11, replica("web-a")))  # the same state, say a new reason
        call.events.put(put_service(12, 2))
        assert watch.wait_until(lambda p: p.declared == 2, since=time.perf_counter(), timeout=5) is not None
        assert [p.revision for p in watch.points] == [10, 12]
    finally:
        watch.close()


def test_a_broken_stream_is_opened_again_from_the_last_revision(stub: FakeStub) -> None:
    watch = ServiceWatch(stub, "web")  # type: ignore[arg-type]
    try:
        first = stub.stream()
        first.events.put(put_service(15, 4))
        first.events.put(Broken())
        second = stub.stream()
        assert stub.requests[-1].after_revision == 15
        assert watch.error == "UNAVAILABLE: the scheduler went away"
        second.events.put(put_replica(16, replica("web-b")))
        assert watch.wait_until(lambda p: p.ready == 2, since=time.perf_counter(), timeout=5) is not None
    finally:
        watch.close()
    assert len(stub.calls) == 2  # closing opened no third stream
