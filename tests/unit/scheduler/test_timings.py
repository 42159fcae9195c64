"""A replica's way from placement to running, stage by stage (``scheduler.timings``): which records give a
start and how long it took, and the leader's histograms of it on ``/metrics`` (each start counted once,
however often its record is written)."""

from __future__ import annotations

import pytest

from scheduler import timings
from scheduler.metrics import SchedulerMetrics
from scheduler.model import Decision, Replica, ReplicaId, ReplicaPhase, ServiceName
from tests.unit.scheduler.test_metrics import scrape, value


def replica(*decisions: tuple[float, str], rid: str = "web-1") -> Replica:
    return Replica(id=ReplicaId(rid), service=ServiceName("web"), generation=1, phase=ReplicaPhase.RUNNING,
                   decisions=tuple(Decision(time=t, action=a, reason="") for t, a in decisions))


@pytest.mark.parametrize(("decisions", "start"), [
    pytest.param([(10.0, "created"), (10.5, "placed"), (12.0, "running")], (12.0, 1.5), id="first start"),
    pytest.param([(10.0, "created"), (10.0, "placed"), (10.0, "starting"), (13.0, "running")], (13.0, 3.0),
                 id="through starting"),
    pytest.param([(10.0, "placed"), (12.0, "running"), (20.0, "failed"), (25.0, "running")], None,
                 id="a restart"),
    pytest.param([(10.0, "placed"), (12.0, "running"), (30.0, "rescheduled"), (31.0, "placed"),
                  (33.5, "running")], (33.5, 2.5), id="placed again"),
    pytest.param([(10.0, "placed"), (12.0, "running"), (13.0, "stopping")], None, id="not running now"),
    pytest.param([(12.0, "starting"), (13.0, "running")], None, id="placement no longer kept"),
    pytest.param([], None, id="no decisions"),
    pytest.param([(12.0, "placed"), (11.9, "running")], (11.9, 0.0), id="a clock step back"),
])
def test_a_start_is_the_first_running_since_the_newest_placement(
        decisions: list[tuple[float, str]], start: tuple[float, float] | None) -> None:
    assert timings.start_seconds(replica(*decisions)) == start


def test_the_leaders_histograms_count_each_start_once_and_each_launch_by_outcome() -> None:
    metrics = SchedulerMetrics()
    started = replica((10.0, "placed"), (12.0, "running"))
    metrics.written([started, replica((10.0, "placed"), rid="web-2"), object()])  # (any record lands)
    metrics.written([started])  # written again (its readiness, say): the same start
    metrics.written([replica((10.0, "placed"), (12.0, "running"), (20.0, "failed"), (21.0, "running"))])
    metrics.written([replica((30.0, "placed"), (37.0, "running"))])  # placed again, started again: counted
    metrics.launched(0.3, "created")
    metrics.launched(4.0, "failed")
    metrics.worker_call(0.02, "CreateContainers")
    metrics.worker_delay(0.5)
    s = scrape(metrics)
    assert value(s, "shoal_scheduler_replica_start_duration_seconds_count") == 2
    assert value(s, "shoal_scheduler_replica_start_duration_seconds_sum") == pytest.approx(9.0)
    assert value(s, "shoal_scheduler_replica_start_duration_seconds_bucket", le="2.0") == 1
    assert value(s, "shoal_scheduler_launch_duration_seconds_count", outcome="created") == 1
    assert value(s, "shoal_scheduler_launch_duration_seconds_count", outcome="failed") == 1
    assert value(s, "shoal_scheduler_launch_duration_seconds_bucket", outcome="failed", le="5.0") == 1
    assert value(s, "shoal_scheduler_launch_duration_seconds_bucket", outcome="failed", le="3.0") == 0
    assert value(s, "shoal_scheduler_session_worker_call_duration_seconds_count",
                 method="CreateContainers") == 1
    assert value(s, "shoal_scheduler_session_worker_delay_seconds_sum") == pytest.approx(0.5)


def test_the_starts_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from scheduler import metrics as module
    monkeypatch.setattr(module, "STARTED_MEMORY", 3)
    metrics = SchedulerMetrics()
    for i in range(5):
        metrics.written([replica((10.0, "placed"), (11.0, "running"), rid=f"web-{i}")])
    assert len(metrics._started) == 3
    metrics.written([replica((10.0, "placed"), (11.0, "running"), rid="web-4")])  # still remembered
    assert value(scrape(metrics), "shoal_scheduler_replica_start_duration_seconds_count") == 5

