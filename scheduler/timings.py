"""How long a replica's way from placement to running takes, stage by stage, for ``/metrics``.

What a user waits for after a host dies, or after a scale-up, is the replicas running. Placement has its
histogram (``shoal_scheduler_placement_duration_seconds``, creation to placement); these are the stages
after it, as Kubernetes reports a pod's start (kubelet's ``pod_start_sli_duration_seconds``):

* ``launched``: a launch, from its hand-over to the actuator (its record landed in etcd) to its agent's
  answer in the leader, by outcome (``created``, ``failed``);
* ``worker_call``: with session workers, the share of an agent call spent in the worker: from the call's
  arrival there to its reply going back, the agent's own time included (the rest of the leader's wait is
  the pipe and the two event loops);
* ``worker_delay``: how old a worker's message of changed sessions is when the leader reads it (a start
  the agent reports reaches the leader's passes this much later);
* ``written``: the records the leader's writes landed (a pass's, or its recorder's between passes); a
  replica's whose newest decision is its first "running" since it was placed gives the time from
  placement to that decision (``starts``).

``Timings`` is what the leader's parts call; ``SchedulerMetrics`` is one; ``NO_TIMINGS`` drops everything
(tests and benchmarks that build a controller without metrics).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from scheduler.model import Replica

RUNNING = "running"  # the decision a replica's first report of a running container adds
PLACED = "placed"


class Timings(Protocol):
    def launched(self, seconds: float, outcome: str) -> None: ...

    def worker_call(self, seconds: float, method: str) -> None: ...

    def worker_delay(self, seconds: float) -> None: ...

    def written(self, records: Iterable[object]) -> None: ...


class NoTimings:
    def launched(self, seconds: float, outcome: str) -> None:
        return None

    def worker_call(self, seconds: float, method: str) -> None:
        return None

    def worker_delay(self, seconds: float) -> None:
        return None

    def written(self, records: Iterable[object]) -> None:
        return None


NO_TIMINGS: Timings = NoTimings()


def start_seconds(replica: Replica) -> tuple[float, float] | None:
    """When ``replica``'s newest decision is the first "running" since its newest "placed": that decision's
    time and the seconds since the placement. None otherwise: not running by its newest decision, a
    restart (another "running" came between), or a placement older than the decisions kept."""
    decisions = replica.decisions
    if not decisions or decisions[-1].action != RUNNING:
        return None
    running = decisions[-1].time
    for decision in reversed(decisions[:-1]):
        if decision.action == RUNNING:
            return None
        if decision.action == PLACED:
            return running, max(0.0, running - decision.time)
    return None


def starts(records: Iterable[object]) -> Iterator[tuple[Replica, float, float]]:
    """The replicas among ``records`` (any records a write landed) that give a start, each with its
    "running" decision's time and the seconds since its placement (``start_seconds``)."""
    for record in records:
        if isinstance(record, Replica) and (start := start_seconds(record)) is not None:
            yield record, *start


__all__ = ["NO_TIMINGS", "NoTimings", "Timings", "start_seconds", "starts"]
