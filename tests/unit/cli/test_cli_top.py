"""``shoal top`` (agent/cli/top.py): frames drawn from hand-made snapshots (the columns, a host that is not
ready standing out, the autoscaler's figures, the error frame with and without an earlier answer, the
compact layout of a narrow terminal, plain batch output), snapshots read from a fake scheduler (sorting,
``--service``, running counts, autoscale figures from the replayed decision, an unreachable scheduler
turned into ``error``), the command's batch loop, Ctrl-C, and its flags (bad ``-n``/``-d``: exit 2)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest
from rich.console import Console

from agent.cli import main
from agent.cli import top as t
from agent.cli.client import CliError
from agent.cli.scheduler_client import EXIT_UNAVAILABLE, Scheduler, SchedulerConnection
from agent.cli.transport import RpcFailure
from agent.protolite import Timestamp
from proto.agent.v1 import agent_lite as apb
from proto.scheduler.v1 import scheduler_lite as spb

NOW = 1_700_000_000.0
GiB, MiB = 1 << 30, 1 << 20
DASH = t.out.EN_DASH  # between the ends of an autoscale range


# -- builders ------------------------------------------------------------------------------------------------

def host(name: str, *, state: str = "ready", zone: str = "a", replicas: int = 0, cpu: int = 150,
         memory: int = 48 * MiB, conditions: tuple[str, ...] = (), reason: str = "") -> t.HostView:
    return t.HostView(id=f"id-{name}", name=name, state=state, labels=(("zone", zone),), replicas=replicas,
                      cpu_committed_millis=cpu, cpu_allocatable_millis=2000, memory_committed_bytes=memory,
                      memory_allocatable_bytes=3 * GiB, conditions=conditions, reason=reason)


def replica(id: str, host_name: str = "", *, state: str = "running", ready: bool = True) -> t.ReplicaView:
    return t.ReplicaView(id=id, service=id.rsplit("-", 1)[0], state=state, ready=ready,
                         host=f"id-{host_name}" if host_name else "", host_name=host_name)


WEB_AUTOSCALE = t.AutoscaleView(
    min_replicas=1, max_replicas=5, targets="cpu 60%",
    metrics=(t.MetricView(kind="cpu", name="cpu", current="182%", target="60%"),),
    decision=t.DecisionView(at=NOW - 12, current=3, desired=5, reason="cpu 182% of target 60% → 5"))

SNAPSHOT = t.TopSnapshot(
    taken_at=NOW, data_at=NOW, scheduler="10.0.0.1:7400", leader="sched-0", leader_epoch=42,
    instances=("sched-0", "sched-1"),
    hosts=(host("host-a", replicas=3), host("host-b", zone="b", replicas=1, cpu=1900),
           host("host-c", state="not_ready", zone="c", conditions=("MemoryPressure",),
                reason="agent unreachable")),
    services=(t.ServiceView(name="api", desired=1, replicas=1, running=1, ready=1, pending=0, updated=1),
              t.ServiceView(name="web", desired=5, replicas=5, running=3, ready=2, pending=1, updated=4,
                            autoscale=WEB_AUTOSCALE)),
    replicas=(replica("api-1", "host-a"), replica("web-1", "host-a"), replica("web-2", "host-a", ready=False),
              replica("web-3", "host-b"), replica("web-4", "host-b", state="starting", ready=False),
              replica("web-5", state="pending", ready=False)))


def draw(snapshot: t.TopSnapshot, *, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    with console.capture() as captured:
        console.print(t.render(snapshot))
    return captured.get()


def lines_with(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line.split()]


def row_of(text: str, name: str) -> list[str]:
    """The cells (split on spaces) of the first line that starts with ``name``."""
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [name])


# -- rendering -----------------------------------------------------------------------------------------------

def test_a_full_frame_has_the_header_hosts_services_and_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    text = draw(SNAPSHOT)
    assert all(len(line) <= 100 for line in text.splitlines())
    head = text.splitlines()[:2]
    assert head[0] == "22:13:20  leader sched-0 (epoch 42) of 2 scheduler instances  via 10.0.0.1:7400"
    assert head[1] == "hosts 2/3 ready   services 2   replicas 4 running, 1 starting, 1 pending, 6 total"
    assert lines_with(text, "NAME")[0].split() == ["NAME", "STATE", "ZONE", "REPL", "CPU", "REQ/ALLOC", "MEM",
                                                   "REQ/ALLOC", "CONDITIONS"]
    # Hosts in name order, each with its zone, replicas, requests of allocatable, and conditions.
    rows = [line.split() for line in text.splitlines() if line.startswith("host-") and "%" in line]
    assert [r[0] for r in rows] == ["host-a", "host-b", "host-c"]
    assert rows[0] == ["host-a", "ready", "a", "3", "0.15/2", "7%", "48Mi/3Gi", "1%", "-"]
    assert rows[1][4:6] == ["1.9/2", "95%"]
    assert rows[2][:2] == ["host-c", "not_ready"] and "MemoryPressure: agent unreachable" in text
    # Services: counts, and for the autoscaled one its range, figure against target and last decision.
    assert lines_with(text, "DESIRED")[0].split() == [
        "NAME", "DESIRED", "RUNNING", "READY", "PENDING", "UPDATED", "AUTOSCALE", "METRIC", "NOW/TARGET",
        "LAST", "DECISION"]
    assert row_of(text, "api") == ["api", "1", "1", "1", "0", "1", "-", "-", "-"]
    assert row_of(text, "web") == ["web", "5", "3", "2", "1", "4", f"1{DASH}5", "cpu", "182%/60%", "3→5,",
                                   "12s", "ago"]
    # Replicas by host: one glyph per replica, grouped by service, the unplaced last.
    grid = text[text.index("REPLICAS BY HOST"):].splitlines()
    assert grid[2].split() == ["host-a", "api", "●", "web", "●◐"]
    assert grid[3].split() == ["host-b", "web", "●◔"]
    assert grid[4].split() == ["host-c", "-"]
    assert grid[5].split() == ["(unplaced)", "web", "○"]
    assert "● running  ◐ not ready  ◔ starting  ○ pending  ✗ failed  ◌ stopping" in text


def _styles_of(snapshot: t.TopSnapshot, word: str) -> list[str]:
    """The style of every segment of the drawn frame whose text is ``word``."""
    console = Console(width=100, color_system="truecolor", force_terminal=True)
    return [str(seg.style) for seg in console.render(t.render(snapshot)) if seg.text.strip() == word]


def test_a_host_that_is_not_ready_stands_out_on_a_terminal() -> None:
    assert all("red" in style for style in _styles_of(SNAPSHOT, "host-c"))
    assert len(_styles_of(SNAPSHOT, "host-c")) == 2  # in the hosts table and in the placement grid
    assert all("red" not in style for style in _styles_of(SNAPSHOT, "host-a"))
    assert "bold red" in _styles_of(SNAPSHOT, "2/3 ready")
    cordoned = t.TopSnapshot(taken_at=NOW, data_at=NOW, hosts=(host("host-d", state="cordoned"),))
    assert all("yellow" in style for style in _styles_of(cordoned, "host-d"))


def test_autoscale_columns_without_figures_or_decision_and_a_failed_decision() -> None:
    bare = t.AutoscaleView(min_replicas=0, max_replicas=9, targets="prometheus 10 (avg)")
    failed = t.AutoscaleView(
        min_replicas=2, max_replicas=4, targets="cpu 50%",
        metrics=(t.MetricView(kind="cpu", name="cpu", current="", target="50%", error="no value"),),
        decision=t.DecisionView(at=NOW - 200, current=2, desired=2, reason="no decision", error="no value"))
    kept = t.AutoscaleView(
        min_replicas=1, max_replicas=3, targets="q",
        metrics=(t.MetricView(kind="value", name="sum(rate(http_requests_total[1m]))", current="15",
                              target="10"),),
        decision=t.DecisionView(at=NOW - 5, current=3, desired=3, reason="capped to max 3"))
    services = tuple(t.ServiceView(name=n, desired=2, replicas=2, running=2, ready=2, pending=0, updated=2,
                                   autoscale=a)
                     for n, a in (("bare", bare), ("failed", failed), ("kept", kept)))
    text = draw(t.TopSnapshot(taken_at=NOW, data_at=NOW, services=services), width=120)  # no cell wraps
    assert row_of(text, "bare")[6:] == [f"0{DASH}9", "prometheus", "10", "(avg)", "none", "yet"]
    assert row_of(text, "failed")[6:] == [f"2{DASH}4", "cpu", "?/50%", "kept", "2,", "3m20s", "ago:", "no",
                                          "value"]
    # A long PromQL query is shortened to its first characters.
    assert row_of(text, "kept")[6:] == [f"1{DASH}3", "sum(rate(http_r…", "15/10", "kept", "3,", "5s", "ago"]


def test_the_error_frame_without_and_with_an_earlier_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    failed = t.TopSnapshot(taken_at=NOW + 7, error="scheduler unreachable: cannot reach the scheduler at a:1")
    text = draw(failed)
    assert text.splitlines() == ["22:13:27  leader unknown",
                                 "scheduler unreachable: cannot reach the scheduler at a:1, retrying",
                                 "no answer from the scheduler yet"]
    carried = t.with_last_known(failed, SNAPSHOT)
    assert carried.error == failed.error and carried.taken_at == NOW + 7 and carried.data_at == NOW
    assert carried.hosts == SNAPSHOT.hosts and carried.services == SNAPSHOT.services
    text = draw(carried)
    assert "scheduler unreachable: cannot reach the scheduler at a:1, retrying (showing its last answer, " \
           "from 22:13:20)" in " ".join(text.split())
    assert text.splitlines()[0].startswith("22:13:27  leader sched-0")
    assert lines_with(text, "host-a") and "3→5, 19s ago" in text  # ages count from this look


def test_with_last_known_leaves_answers_and_first_failures_alone() -> None:
    assert t.with_last_known(SNAPSHOT, None) is SNAPSHOT
    assert t.with_last_known(SNAPSHOT, t.TopSnapshot(taken_at=1, data_at=1)) is SNAPSHOT
    failed = t.TopSnapshot(taken_at=NOW, error="x")
    assert t.with_last_known(failed, None) is failed
    assert t.with_last_known(failed, t.TopSnapshot(taken_at=1, error="y")) is failed


def test_a_narrow_terminal_gets_the_compact_layout_within_its_width() -> None:
    text = draw(SNAPSHOT, width=60)
    assert all(len(line) <= 60 for line in text.splitlines()), text
    assert row_of(text, "NAME") == ["NAME", "STATE", "ZONE", "REPL", "CPU", "MEM", "CONDITIONS"]
    assert row_of(text, "host-a") == ["host-a", "ready", "a", "3", "0.15/2", "48Mi/3Gi", "-"]
    assert lines_with(text, "DES")[0].split() == ["NAME", "DES", "RUN", "RDY", "PEND", "UPD", "AUTOSCALE"]
    assert row_of(text, "web")[:9] == ["web", "5", "3", "2", "1", "4", f"1{DASH}5", "cpu", "182%/60%"]
    assert "3→5" in text
    assert [line.split()[0] for line in text.splitlines() if line.startswith(("host-", "(unplaced)"))] == [
        "host-a", "host-b", "host-c", "host-a", "host-b", "host-c", "(unplaced)"]


def test_hosts_that_share_a_name_are_told_apart_by_their_id() -> None:
    def box(id: str, labels: tuple[tuple[str, str], ...] = ()) -> t.HostView:
        return t.HostView(id=id, name="box", state="ready", labels=labels, replicas=0, cpu_committed_millis=0,
                          cpu_allocatable_millis=1000, memory_committed_bytes=0, memory_allocatable_bytes=GiB)

    twins = (box("0123456789abcdef"), box("fedcba9876543210", (("disk", "ssd"),)))
    assert t.host_labels((*twins, host("other"))) == {
        "0123456789abcdef": "box (01234567)", "fedcba9876543210": "box (fedcba98)", "id-other": "other"}
    text = draw(t.TopSnapshot(taken_at=NOW, data_at=NOW, hosts=twins,
                              replicas=(t.ReplicaView(id="a-1", service="a", state="running", ready=True,
                                                      host="0123456789abcdef", host_name="box"),)))
    assert row_of(text, "NAME")[2] == "LABELS"  # no host has a zone: their labels instead
    rows = [line.split() for line in text.splitlines() if line.startswith("box")]
    assert rows[0][:4] == ["box", "(01234567)", "ready", "<none>"]
    assert rows[1][:4] == ["box", "(fedcba98)", "ready", "disk=ssd"]
    assert rows[2:] == [["box", "(01234567)", "a", "●"], ["box", "(fedcba98)", "-"]]  # the placement grid


def test_no_hosts_and_no_services_say_so() -> None:
    text = draw(t.TopSnapshot(taken_at=NOW, data_at=NOW, leader="s", instances=("s",)))
    assert "of 1 scheduler instance" in text
    assert lines_with(text, "joined") and lines_with(text, "none")
    empty_leader = draw(t.TopSnapshot(taken_at=NOW, data_at=NOW, instances=("s", "t")))
    assert "no leader (election in progress) of 2 scheduler instances" in empty_leader


def test_missing_services_are_named() -> None:
    assert "no such service: nope, gone" in draw(t.TopSnapshot(taken_at=NOW, data_at=NOW,
                                                                missing=("nope", "gone")))


def test_plain_batch_frames_have_no_escape_codes_and_no_trailing_spaces(capsys: pytest.CaptureFixture[str]
                                                                        ) -> None:
    console = t.batch_console(terminal=False, columns=None)
    assert console.width == t.BATCH_WIDTH
    assert t.batch_console(terminal=False, columns="132").width == 132
    assert t.batch_console(terminal=False, columns="nope").width == t.BATCH_WIDTH
    t.print_frame(console, SNAPSHOT, plain=True)
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "host-a" in printed
    assert all(line == line.rstrip() for line in printed.splitlines())


# -- reading the scheduler ----------------------------------------------------------------------------------

def ts(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds))


def pb_host(id: str, name: str, zone: str, *, state: int = spb.HOST_STATE_READY, replicas: int = 0
            ) -> spb.Host:
    info = apb.HostInfo(cpu_allocatable_millis=2000, cpu_committed_millis=100, memory_allocatable_bytes=GiB,
                        memory_committed_bytes=16 * MiB,
                        conditions=[apb.HostCondition(type="DiskPressure")] if state != spb.HOST_STATE_READY
                        else [])
    return spb.Host(id=id, name=name, state=state, labels={"zone": zone, "group": "g"}, info=info,
                    replicas=replicas, reason="" if state == spb.HOST_STATE_READY else "agent unreachable")


def pb_service(name: str, replicas: int, *, autoscale: spb.Autoscale | None = None) -> spb.Service:
    spec = spb.ServiceSpec(name=name, replicas=replicas)
    if autoscale is not None:
        spec.autoscale = autoscale
    return spb.Service(spec=spec, status=spb.ServiceStatus(replicas=replicas, ready=replicas - 1, pending=1,
                                                           updated=replicas))


def pb_replica(id: str, service: str, host: str = "", *, state: int = spb.REPLICA_STATE_RUNNING
               ) -> spb.Replica:
    return spb.Replica(id=id, service=service, host=host, host_name=host.removeprefix("id-"), state=state,
                       ready=state == spb.REPLICA_STATE_RUNNING)


REPLAYED = {"desired_replicas": 5, "metrics": [
    {"index": 0, "type": "cpu", "name": "cpu", "utilization_percent": 182, "target_utilization_percent": 60},
    {"index": 1, "type": "replica_average", "name": "rps", "average_milli": 1500,
     "target_average_milli": 1000},
    {"index": 2, "type": "value", "name": "queue", "value_milli": None, "target_milli": 10000,
     "error": "no value"},
]}


class FakeApi:
    """The scheduler's calls ``take_snapshot`` makes, answered from lite messages. ``fail`` makes every
    call raise it; ``fail_frames`` (1 for the first look) make the looks they number raise it;
    ``replay_failure`` fails ReplayAutoscale only."""

    def __init__(self, *, fail_frames: tuple[int, ...] = (), fail: BaseException | None = None) -> None:
        self.fail_frames = fail_frames
        self.fail = fail if not fail_frames else None
        self.failure = fail
        self.replay_failure: RpcFailure | None = None
        self.replays = 0
        self.frames = 0

    def _call(self) -> None:
        if self.fail is not None:
            raise self.fail

    def ListSchedulers(self, request: Any) -> spb.ListSchedulersResponse:
        self.frames += 1  # each look starts here
        if self.frames in self.fail_frames and self.failure is not None:
            raise self.failure
        self._call()
        return spb.ListSchedulersResponse(schedulers=[spb.SchedulerInstance(id="s0", leader=True),
                                                      spb.SchedulerInstance(id="s1")], leader="s0",
                                          leader_epoch=3)

    def ListHosts(self, request: Any) -> spb.ListHostsResponse:
        self._call()
        return spb.ListHostsResponse(hosts=[pb_host("id-h2", "h2", "b", state=spb.HOST_STATE_NOT_READY),
                                            pb_host("id-h1", "h1", "a", replicas=2)])

    def ListServices(self, request: Any) -> spb.ListServicesResponse:
        self._call()
        policy = spb.Autoscale(max_replicas=5, metrics=[spb.MetricTarget(kind="cpu",
                                                                         target_utilization_percent=60)])
        return spb.ListServicesResponse(services=[pb_service("web", 3, autoscale=policy),
                                                  pb_service("api", 1)])

    def ListReplicas(self, request: Any) -> spb.ListReplicasResponse:
        self._call()
        return spb.ListReplicasResponse(replicas=[
            pb_replica("web-2", "web", "id-h1"), pb_replica("web-1", "web", "id-h1"),
            pb_replica("web-3", "web", state=spb.REPLICA_STATE_PENDING), pb_replica("api-1", "api", "id-h2")])

    def GetAutoscaleStatus(self, request: spb.GetServiceRequest) -> spb.AutoscaleStatus:
        self._call()
        decision = spb.AutoscaleDecision(time=ts(NOW - 30), current_replicas=3, desired_replicas=5,
                                         reason="cpu 182% of target 60%",
                                         input_json='{"current_replicas": 3}')
        return spb.AutoscaleStatus(service=request.name, decisions=[
            spb.AutoscaleDecision(time=ts(NOW - 60), current_replicas=2, desired_replicas=3), decision])

    def ReplayAutoscale(self, request: spb.ReplayAutoscaleRequest) -> spb.ReplayAutoscaleResponse:
        self._call()
        self.replays += 1
        assert json.loads(request.input_json) == {"current_replicas": 3}
        if self.replay_failure is not None:
            raise self.replay_failure
        return spb.ReplayAutoscaleResponse(output_json=json.dumps(REPLAYED))


def fake_scheduler(api: FakeApi) -> Scheduler:
    scheduler = Scheduler(SchedulerConnection(["unix:///nonexistent/a.sock"]))
    scheduler.api = api  # type: ignore[assignment]
    return scheduler


@pytest.fixture(autouse=True)
def _no_cached_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(t, "_FIGURES", {})


def test_a_snapshot_holds_plain_sorted_values_with_the_autoscale_figures() -> None:
    api = FakeApi()
    snap = t.take_snapshot(fake_scheduler(api))
    assert not snap.error and snap.data_at == snap.taken_at
    assert snap.scheduler == "unix:///nonexistent/a.sock"
    assert (snap.leader, snap.leader_epoch, snap.instances) == ("s0", 3, ("s0", "s1"))
    assert [h.name for h in snap.hosts] == ["h1", "h2"]
    assert snap.hosts[0] == t.HostView(
        id="id-h1", name="h1", state="ready", labels=(("group", "g"), ("zone", "a")), replicas=2,
        cpu_committed_millis=100, cpu_allocatable_millis=2000, memory_committed_bytes=16 * MiB,
        memory_allocatable_bytes=GiB)
    assert (snap.hosts[1].state, snap.hosts[1].conditions, snap.hosts[1].reason) == (
        "not_ready", ("DiskPressure",), "agent unreachable")
    assert [s.name for s in snap.services] == ["api", "web"]
    web = snap.services[1]
    assert (web.desired, web.replicas, web.running, web.ready, web.pending, web.updated) == (3, 3, 2, 2, 1, 3)
    assert snap.services[0].autoscale is None
    assert web.autoscale == t.AutoscaleView(
        min_replicas=1, max_replicas=5, targets="cpu 60%",
        metrics=(t.MetricView(kind="cpu", name="cpu", current="182%", target="60%"),
                 t.MetricView(kind="replica_average", name="rps", current="1.5", target="1"),
                 t.MetricView(kind="value", name="queue", current="", target="10", error="no value")),
        decision=t.DecisionView(at=NOW - 30, current=3, desired=5, reason="cpu 182% of target 60%"))
    assert [(r.id, r.state, r.host) for r in snap.replicas] == [
        ("api-1", "running", "id-h2"), ("web-1", "running", "id-h1"), ("web-2", "running", "id-h1"),
        ("web-3", "pending", "")]
    # The same decision is replayed once, not on every frame.
    t.take_snapshot(fake_scheduler(api))
    assert api.replays == 1


def test_service_filter_keeps_those_services_and_their_replicas_and_names_the_missing() -> None:
    snap = t.take_snapshot(fake_scheduler(FakeApi()), services=["api", "nope", "api"])
    assert [s.name for s in snap.services] == ["api"]
    assert [r.id for r in snap.replicas] == ["api-1"]
    assert snap.missing == ("nope",)
    assert len(snap.hosts) == 2  # every host still shows


def test_a_scheduler_that_cannot_replay_still_gives_the_decision() -> None:
    api = FakeApi()
    api.replay_failure = RpcFailure("UNIMPLEMENTED", "unknown method")
    web = t.take_snapshot(fake_scheduler(api)).services[1]
    assert web.autoscale is not None and web.autoscale.metrics == ()
    assert web.autoscale.decision is not None and web.autoscale.decision.desired == 5
    text = draw(t.TopSnapshot(taken_at=NOW, data_at=NOW, services=(web,)))
    assert row_of(text, "web")[6:9] == [f"1{DASH}5", "cpu", "60%"]  # the policy's targets


def test_an_unreachable_scheduler_is_an_error_snapshot_never_an_exception() -> None:
    scheduler = Scheduler(SchedulerConnection(["unix:///nonexistent/a.sock", "unix:///nonexistent/b.sock"]))
    snap = t.take_snapshot(scheduler)
    assert snap.data_at is None and not snap.hosts
    assert snap.error.startswith("scheduler unreachable: unix:///nonexistent/a.sock (")
    assert "), unix:///nonexistent/b.sock (" in snap.error
    api = FakeApi(fail=RpcFailure("UNAVAILABLE", "etcd is unavailable", {"shoal-error": "StoreUnavailable"}))
    assert t.take_snapshot(fake_scheduler(api)).error == "scheduler error: etcd is unavailable"


def test_host_requests_count_what_the_scheduler_placed_when_the_agents_figure_lags() -> None:
    web = pb_service("web", 3)
    web.spec.template = apb.ContainerSpec(resources=apb.Resources(cpu_millis=100, memory_bytes=64 * MiB,
                                                                  cpu_request_millis=50))
    on = [pb_replica("web-1", "web", "id-h1"), pb_replica("web-2", "web", "id-h1"),
          pb_replica("web-3", "web", "id-h1", state=spb.REPLICA_STATE_STARTING),
          pb_replica("web-4", "web", "id-h1", state=spb.REPLICA_STATE_STOPPING),
          pb_replica("web-5", "web", state=spb.REPLICA_STATE_PENDING),
          pb_replica("web-6", "web", "id-h2", state=spb.REPLICA_STATE_FAILED),
          pb_replica("gone-1", "gone", "id-h2")]  # a service not listed: its requests are unknown
    requested = t.requests_by_host([web], on)
    assert set(requested) == {"id-h1", "id-h2"}
    # The agent has not reported the two running replicas yet (0 committed): they count all the same,
    # and the starting one on top; the stopping one no longer.
    h1 = t.host_view(pb_host("id-h1", "h1", "a"), requested=requested["id-h1"])
    assert h1.cpu_committed_millis == 3 * 50 and h1.memory_committed_bytes == 3 * 64 * MiB
    # An agent figure above what its running replicas request (containers of its own) is kept.
    busy = pb_host("id-h2", "h2", "b")
    busy.info.cpu_committed_millis, busy.info.memory_committed_bytes = 500, GiB
    h2 = t.host_view(busy, requested=requested["id-h2"])
    assert (h2.cpu_committed_millis, h2.memory_committed_bytes) == (500 + 50, GiB + 64 * MiB)
    assert t.host_view(busy).cpu_committed_millis == 500


@pytest.mark.parametrize(("output", "expected"), [
    ({"metrics": [{"type": "memory", "name": "memory", "utilization_percent": 40,
                   "target_utilization_percent": 80}]},
     (t.MetricView(kind="memory", name="memory", current="40%", target="80%"),)),
    ({"metrics": [{"type": "average_value", "name": "q", "average_milli": 2500,
                   "target_average_milli": 2000}]},
     (t.MetricView(kind="average_value", name="q", current="2.5", target="2"),)),
    ({"metrics": [{"type": "cpu", "utilization_percent": None, "error": "no sample"}]},
     (t.MetricView(kind="cpu", name="cpu", current="", target="?", error="no sample"),)),
    ({"metrics": "nope"}, ()), ([], ()),
])
def test_metric_views_from_a_replayed_decision(output: Any, expected: tuple[t.MetricView, ...]) -> None:
    assert t.metric_views(json.dumps(output)) == expected


def test_metric_views_of_output_that_is_not_json() -> None:
    assert t.metric_views("{") == ()


# -- a scheduler that accepts connections but does not answer ------------------------------------------

@pytest.fixture
def frozen_unix(tmp_path: Any) -> Any:
    """A scheduler address whose Connect socket accepts connections and never answers (a process still
    starting, or stopped with SIGSTOP)."""
    path = str(tmp_path / "frozen.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".http")
    listener.listen(8)
    yield f"unix://{path}"
    listener.close()


@pytest.fixture
def frozen_tcp() -> Any:
    """The same on TCP (loopback), where the CLI speaks gRPC."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _bounded(call: Any) -> Any:
    """``call()``'s result; fails (instead of hanging the suite) if it does not return within 60 s."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(60)
    assert result, "the call did not return: no deadline"
    return result[0]


@pytest.mark.parametrize("frozen", ["frozen_unix", "frozen_tcp"])
def test_a_scheduler_that_never_answers_is_unreachable_after_the_call_timeout(
        frozen: str, request: pytest.FixtureRequest) -> None:
    address = request.getfixturevalue(frozen)
    scheduler = Scheduler(SchedulerConnection([address, "unix:///nonexistent/b.sock"], timeout=0.3))
    snap = _bounded(lambda: t.take_snapshot(scheduler))
    # It gave up on the first address after the timeout and tried the next one, as for a refusal.
    assert snap.error.startswith(f"scheduler unreachable: {address} (no answer within 0.3s), "
                                 "unix:///nonexistent/b.sock ("), snap.error
    scheduler.close()


def test_top_gives_its_connection_the_call_timeout(no_pause: None) -> None:
    scheduler = fake_scheduler(FakeApi())
    assert scheduler.conn.timeout is None
    assert t.cmd_top(scheduler, top_args("-n", "1")) == 0
    assert scheduler.conn.timeout == t.CALL_TIMEOUT
    mine = fake_scheduler(FakeApi())
    mine.conn.timeout = 1.5
    assert t.cmd_top(mine, top_args("-n", "1")) == 0
    assert mine.conn.timeout == 1.5


# -- the command --------------------------------------------------------------------------------------------

def top_args(*argv: str) -> Any:
    return main.build_parser(["top", *argv]).parse_args(["top", *argv])


@pytest.fixture
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames come one after another without the delay between them."""
    monkeypatch.setattr(t.time, "sleep", lambda seconds: None)


def test_batch_prints_n_frames_and_keeps_going_through_a_failure(
        capsys: pytest.CaptureFixture[str], no_pause: None) -> None:
    api = FakeApi(fail_frames=(2,), fail=RpcFailure("UNAVAILABLE", "connection refused"))
    assert t.cmd_top(fake_scheduler(api), top_args("-n", "3", "-d", "0.5")) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed
    assert printed.count("REPLICAS BY HOST") == 3 and printed.count("leader s0") == 3
    frames = re.split(r"\n\n(?=\d\d:\d\d:\d\d  )", printed)  # a blank line, then the next frame's clock
    assert len(frames) == 3, printed
    assert "retrying" not in frames[0] and "retrying" not in frames[2]
    assert "scheduler unreachable: unix:///nonexistent/a.sock (connection refused), retrying (showing its " \
           "last answer, from" in " ".join(frames[1].split())
    assert "h1" in frames[1]  # the last answer still shows


def test_batch_with_no_scheduler_on_the_first_frame_is_the_usual_error(no_pause: None) -> None:
    scheduler = Scheduler(SchedulerConnection(["unix:///nonexistent/a.sock"]))
    with pytest.raises(CliError) as info:
        t.cmd_top(scheduler, top_args("-n", "2"))
    assert info.value.code == EXIT_UNAVAILABLE
    assert str(info.value).startswith("cannot reach the scheduler at unix:///nonexistent/a.sock")


def test_ctrl_c_ends_top_with_status_0(capsys: pytest.CaptureFixture[str], no_pause: None) -> None:
    api = FakeApi(fail_frames=(2,), fail=KeyboardInterrupt())
    assert t.cmd_top(fake_scheduler(api), top_args()) == 0  # not a terminal, no -n: frames until interrupted
    assert capsys.readouterr().out.count("REPLICAS BY HOST") == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_without_n_it_redraws_in_place_on_the_alternate_screen(
        monkeypatch: pytest.MonkeyPatch, no_pause: None) -> None:
    screen = _Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("TERM", "xterm-256color")
    api = FakeApi(fail_frames=(3,), fail=KeyboardInterrupt())
    assert t.cmd_top(fake_scheduler(api), top_args("-d", "0.2")) == 0
    drawn = screen.getvalue()
    assert "\x1b[?1049h" in drawn and "\x1b[?1049l" in drawn  # entered and left the alternate screen
    assert drawn.count("REPLICAS BY HOST") == 2  # two frames, each drawn over the last


# -- flags --------------------------------------------------------------------------------------------------

def _exit(argv: list[str]) -> tuple[object, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            pytest.raises(SystemExit) as info:
        main.build_parser(argv).parse_args(argv)
    return info.value.code, err.getvalue()


@pytest.mark.parametrize(("argv", "message"), [
    (["top", "-n", "0"], "argument -n/--iterations: must be a whole number of frames, 1 or more, not '0'"),
    (["top", "-n", "x"], "argument -n/--iterations: must be a whole number of frames, 1 or more, not 'x'"),
    (["top", "-n", "1.5"], "not '1.5'"),
    (["top", "-d", "0"], "argument -d/--delay: must be a number of seconds above 0 (e.g. 1 or 0.5), not '0'"),
    (["top", "-d", "soon"], "argument -d/--delay: must be a number of seconds above 0"),
    (["top", "-d", "nan"], "not 'nan'"),
    (["top", "-d", "-1"], "not '-1'"),
    (["top", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_are_refused_with_exit_2(argv: list[str], message: str) -> None:
    code, err = _exit(argv)
    assert code == 2 and message in err, err
    assert _exit(argv) == _exit_whole(argv)  # the partial parser says the same as the whole one


def _exit_whole(argv: list[str]) -> tuple[object, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            pytest.raises(SystemExit) as info:
        main.build_parser(None).parse_args(argv)
    return info.value.code, err.getvalue()


def test_flags_parse_alike_in_the_partial_and_whole_parser() -> None:
    argv = ["--scheduler", "a:1,b:2", "top", "-n", "2", "-d", "0.2", "--service", "web", "--service", "api"]
    partial = vars(main.build_parser(argv).parse_args(argv))
    whole = vars(main.build_parser(None).parse_args(argv))
    assert partial["func"].__qualname__ == whole["func"].__qualname__
    partial.pop("func"), whole.pop("func")
    assert partial == whole
    assert (partial["iterations"], partial["delay"], partial["service"], partial["cluster"]) == (
        2, 0.2, ["web", "api"], True)
    defaults = top_args()
    assert (defaults.iterations, defaults.delay, defaults.service) == (None, 1.0, [])


def test_help_names_every_flag() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main.build_parser(["top", "-h"]).parse_args(["top", "-h"])
    text = out.getvalue()
    for flag in ("-n N, --iterations N", "-d SECONDS, --delay SECONDS", "--service NAME", "Ctrl-C"):
        assert flag in " ".join(text.split()), text


PROBE = """
import json, sys
before = set(sys.modules)
from agent.cli import main
main.build_parser(None).parse_args(["top", "-n", "1", "-d", "0.5", "--service", "web"])
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_parsing_top_imports_neither_rich_nor_the_view() -> None:
    loaded = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                       check=True).stdout.splitlines()[-1])
    heavy = ("rich", "dataclasses", "grpc")
    assert not [m for m in loaded if m.split(".")[0] in heavy or m == "agent.cli.top"]
