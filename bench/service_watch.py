"""One service as the scheduler's ``Watch`` shows it: its declared count and its replicas, every change
stamped on the benchmark's clock (``time.perf_counter``) the moment it arrives.

A benchmark that polls ``GetService`` every 50 ms sees a change up to 50 ms late and loads the API it
measures; a watch is told within about a millisecond of the etcd commit. ``ServiceWatch(stub, name)``
lists the replicas once (that listing's revision), reads the service, then watches ``service`` and
``replica`` events of that service from the listing's revision in a thread of its own. Each event that
changes what the benchmark looks at — the declared count (``spec.replicas``), the replica records that
exist, those running, those running and ready — appends a ``Point``. ``wait_until(predicate, since=,
timeout=)`` returns the first point at or after ``since`` that satisfies ``predicate`` (its ``t`` is the
measurement), waiting for it up to ``timeout`` seconds, or None. A stream that breaks (the scheduler
restarting) is opened again from the last revision seen, so no change is missed; ``close()`` cancels it.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from proto.scheduler.v1 import scheduler_pb2 as spb
from proto.scheduler.v1 import scheduler_pb2_grpc as spb_grpc

RETRY_AFTER = 0.2  # seconds before a broken stream is opened again


@dataclass(frozen=True)
class Point:
    t: float  # time.perf_counter() when the event that made this state arrived
    declared: int  # the service's spec.replicas
    replicas: int  # replica records of any state (a stopping one counts until it is gone)
    running: int
    ready: int  # running and ready
    revision: int


class ServiceWatch:
    def __init__(self, stub: spb_grpc.SchedulerStub, service: str) -> None:
        self.service = service
        self._stub = stub
        self._changed = threading.Condition()
        self._closed = False
        self._call: grpc.Future | None = None
        self.error = ""  # the last stream error (kept for the report; the stream is re-opened)
        listing = stub.ListReplicas(spb.ListReplicasRequest(service=service), timeout=10)
        self._replicas: dict[str, tuple[int, bool]] = {r.id: (r.state, r.ready) for r in listing.replicas}
        self._declared = stub.GetService(spb.GetServiceRequest(name=service), timeout=10).spec.replicas
        self._revision = listing.revision
        self.points: list[Point] = []
        with self._changed:
            self._record(time.perf_counter())
        self._thread = threading.Thread(target=self._follow, name=f"watch-{service}", daemon=True)
        self._thread.start()

    @property
    def last(self) -> Point:
        with self._changed:
            return self.points[-1]

    def wait_until(self, predicate: Callable[[Point], bool], *, since: float, timeout: float) -> Point | None:
        """The first state at or after ``since`` (a perf_counter time) that satisfies ``predicate``: the
        state at ``since`` itself (then stamped ``since``) or a later point; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            i = max(0, bisect.bisect_right([p.t for p in self.points], since) - 1)
            while True:
                for point in self.points[i:]:
                    if predicate(point):
                        return point if point.t >= since else dataclasses.replace(point, t=since)
                i = len(self.points)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.25))

    def between(self, start: float, end: float) -> list[Point]:
        """The points in [start, end], led by the state at ``start``."""
        with self._changed:
            before = [p for p in self.points if p.t < start]
            inside = [p for p in self.points if start <= p.t <= end]
        return ([dataclasses.replace(before[-1], t=start)] if before else []) + inside

    def close(self) -> None:
        with self._changed:
            self._closed = True
            call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=10)

    # -- the stream ------------------------------------------------------------------------------------

    def _follow(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                request = spb.WatchRequest(
                    after_revision=self._revision, kinds=["service", "replica"], service=self.service
                )
                call = self._stub.Watch(request)
                self._call = call
            try:
                for event in call:
                    self._apply(event, time.perf_counter())
            except grpc.RpcError as err:
                with self._changed:
                    if self._closed:
                        return
                self.error = f"{err.code().name}: {err.details()}"
            time.sleep(RETRY_AFTER)

    def _apply(self, event: spb.WatchEvent, now: float) -> None:
        with self._changed:
            self._revision = max(self._revision, event.revision)
            kind = event.WhichOneof("object")
            if kind == "service" and event.type == "put":
                self._declared = event.service.spec.replicas
            elif kind == "replica" and event.type == "put":
                self._replicas[event.replica.id] = (event.replica.state, event.replica.ready)
            elif event.type == "delete":
                self._replicas.pop(event.name, None)  # a delete names only the object
            self._record(now)

    def _record(self, now: float) -> None:
        """Append a point when what the benchmark looks at changed (with the lock held)."""
        states = list(self._replicas.values())
        running = sum(state == spb.REPLICA_STATE_RUNNING for state, _ in states)
        ready = sum(state == spb.REPLICA_STATE_RUNNING and ok for state, ok in states)
        point = Point(now, self._declared, len(states), running, ready, self._revision)
        last = self.points[-1] if self.points else None
        if last is not None and (last.declared, last.replicas, last.running, last.ready) == (
            point.declared, point.replicas, point.running, point.ready
        ):
            return
        self.points.append(point)
        self._changed.notify_all()


__all__ = ["Point", "ServiceWatch"]
