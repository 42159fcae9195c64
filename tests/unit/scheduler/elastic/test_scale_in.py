"""Scale-in: underused timers, which host is drained and what holds a drain back, and a drain followed to
its release and the host forgotten — table tests over small clusters, through the step."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

import pytest

from scheduler import model
from scheduler.elastic import scale_in, scale_out
from scheduler.elastic.step import step
from scheduler.model import DeliveryState, GroupName, HostAdmin, HostId, ProviderRequestKind, ReplicaPhase
from tests.unit.scheduler.elastic import builders as b

WEB = b.service("web", cpus=0.5, memory=256 * b.MiB)
WORKERS = GroupName("workers")
RIPE = b.NOW - 700  # underused for longer than the default 600 s


def cluster(*, per_host: dict[str, int] | None = None, group: model.HostGroup | None = None,
            timers: dict[str, float] | None = None, status: model.HostGroupStatus | None = None,
            extra: tuple[model.Replica, ...] = (), hosts: tuple[model.HostRecord, ...] = (),
            not_ready: tuple[str, ...] = ()) -> b.ElasticInputs:
    """Three 4-cpu members: w1 busy (6 replicas, 75 %), w2 (2, 25 %) and w3 (1, 12.5 %) underused."""
    counts = per_host if per_host is not None else {"w1": 6, "w2": 2, "w3": 1}
    records = [b.host(h, cpus=4, memory=8 * b.GiB) for h in counts] + list(hosts)
    replicas = [b.running(f"{h}-r{i}", WEB, h) for h, n in counts.items() for i in range(n)]
    if status is None:
        status = model.HostGroupStatus(
            group=WORKERS, underused_since=tuple((HostId(h), t) for h, t in sorted((timers or {}).items())))
    return b.inputs(groups=[group or b.group(the_shape=b.shape(cpus=4, memory=8 * b.GiB))], hosts=records,
                    services=[WEB], replicas=[*replicas, *extra], statuses=[status], not_ready=not_ready)


def test_underused_timers_start_and_stop() -> None:
    inp = cluster(timers={"w1": b.NOW - 50, "w3": b.NOW - 30})
    plan = step(inp)
    status = plan.statuses[WORKERS]
    # w1 is busy: its timer goes; w2 starts now; w3 keeps its start.
    assert status.underused_since == ((HostId("w2"), b.NOW), (HostId("w3"), b.NOW - 30))
    assert not plan.drain and status.decisions == ()
    assert status.desired_hosts == 3


def test_memory_alone_keeps_a_host_in_use() -> None:
    big = b.service("big", cpus=0.1, memory=5 * b.GiB)  # 2.5 % cpu, 62.5 % memory
    inp = cluster(per_host={"w1": 0, "w2": 0}, extra=(b.running("m", big, "w1"),))
    inp = replace(inp, services={**inp.services, big.name: big})
    assert step(inp).statuses[WORKERS].underused_since == ((HostId("w2"), b.NOW),)


def test_the_least_utilized_ripe_host_is_drained() -> None:
    plan = step(cluster(timers={"w2": RIPE, "w3": RIPE}))
    assert plan.drain == b.ids("w3")
    status = plan.statuses[WORKERS]
    assert status.draining == ((HostId("w3"), b.NOW),)
    assert status.underused_since == ((HostId("w2"), RIPE),)
    assert status.desired_hosts == 2
    (decision,) = status.decisions
    assert decision.action == "drain"
    assert decision.reason.startswith(
        "node-w3 below 50% cpu and memory requests (cpu 12%, memory 3%) for 11m40s")
    assert decision.reason.endswith("its 1 replica fit on the other hosts")


def test_ties_go_by_host_id() -> None:
    plan = step(cluster(per_host={"w1": 6, "w3": 1, "w2": 1}, timers={"w2": RIPE, "w3": RIPE}))
    assert plan.drain == b.ids("w2")


def test_not_ripe_not_ready_or_not_active_hosts_are_not_drained() -> None:
    assert not step(cluster(timers={"w2": b.NOW - 599, "w3": b.NOW - 599})).drain
    assert step(cluster(timers={"w2": RIPE, "w3": RIPE}, not_ready=("w3",))).drain == b.ids("w2")
    inp = cluster(timers={"w3": RIPE})
    cordoned = replace(inp, hosts={**inp.hosts, HostId("w3"): replace(inp.hosts[HostId("w3")],
                                                                       admin=HostAdmin.CORDONED)})
    assert not step(cordoned).drain


@pytest.mark.parametrize(("what", "inp", "hold"), [
    ("min", cluster(group=b.group(the_shape=b.shape(), min_hosts=3), timers={"w3": RIPE}),
     "node-w3 is below 50% cpu and memory requests, but workers is at its min of 3 hosts"),
    ("nowhere to go", cluster(per_host={"w1": 8, "w2": 8, "w3": 1}, timers={"w3": RIPE}),
     "node-w3 is below 50% cpu and memory requests, but 1 of its 1 replica would fit on no other host"),
    ("delay after scale-out",
     cluster(status=model.HostGroupStatus(group=WORKERS, underused_since=((HostId("w3"), RIPE),),
                                          last_scale_out_at=b.NOW - 60)),
     "node-w3 is below 50% cpu and memory requests, but no scale-in until 2027-01-15T08:09:00Z (10m after "
     "the last scale-out request)"),
    ("max_concurrent_drains",
     cluster(hosts=(b.host("w4", cpus=4, memory=8 * b.GiB, admin=HostAdmin.DRAINING),),
             extra=(b.running("w4-r0", WEB, "w4"),),
             status=model.HostGroupStatus(group=WORKERS, underused_since=((HostId("w3"), RIPE),),
                                          draining=((HostId("w4"), b.NOW - 5),))),
     "node-w3 is below 50% cpu and memory requests, but 1 drain in flight (max_concurrent_drains 1)"),
    ("the group wants hosts",
     cluster(per_host={"w1": 8, "w2": 8, "w3": 1}, timers={"w3": RIPE},
             extra=tuple(b.pendings(b.service("web", cpus=0.5, memory=256 * b.MiB), 8))),
     "node-w3 is below 50% cpu and memory requests, but replicas are pending that hosts of workers would "
     "take"),
])
def test_what_holds_a_drain_back_is_recorded_once(what: str, inp: b.ElasticInputs, hold: str) -> None:
    plan = step(inp)
    assert not plan.drain, what
    status = plan.statuses[WORKERS]
    holds = [d.reason for d in status.decisions if d.action == "hold"]
    assert holds == [hold], what
    assert not step(b.applied(inp, plan, now=b.NOW + 1)).statuses.get(WORKERS, status).decisions[len(
        status.decisions):], what


def test_with_two_drains_allowed_two_go_when_both_fit_elsewhere() -> None:
    group = b.group(the_shape=b.shape(), max_concurrent_drains=2)
    plan = step(cluster(group=group, per_host={"w1": 4, "w2": 2, "w3": 1}, timers={"w2": RIPE, "w3": RIPE}))
    assert plan.drain == b.ids("w3", "w2")  # w1 has room for all three replicas
    # ... but not when the second host's replica would not fit once the first one's has moved: w1 has
    # room for one more replica.
    tight = step(cluster(group=group, per_host={"w1": 7, "w2": 1, "w3": 1}, timers={"w2": RIPE, "w3": RIPE}))
    assert tight.drain == b.ids("w2")  # equal load: by id


def test_scale_in_disabled_keeps_no_timers_and_drains_nothing() -> None:
    group = b.group(the_shape=b.shape(), scale_in=False)
    plan = step(cluster(group=group, timers={"w2": RIPE, "w3": RIPE}))
    assert not plan.drain
    assert plan.statuses[WORKERS].underused_since == ()


def test_a_drain_is_followed_to_release_and_the_host_forgotten_once_gone() -> None:
    inp = cluster(timers={"w3": RIPE})
    drained = step(inp)
    assert drained.drain == b.ids("w3")
    draining = b.applied(inp, drained, now=b.NOW + 1)
    assert step(draining).empty  # its replica is still there: nothing to do
    # The reconcile loop moves the replica: its old record is stopping on w3 (still ready), then gone.
    stopping = replace(draining, replicas=[replace(r, phase=ReplicaPhase.STOPPING) if r.host == "w3" else r
                                           for r in draining.replicas])
    assert step(stopping).empty
    moved = replace(draining, now=b.NOW + 10, replicas=[r for r in draining.replicas if r.host != "w3"])
    released = step(moved)
    status = released.statuses[WORKERS]
    assert status.draining == () and status.released == ((HostId("w3"), b.NOW + 10),)
    (request,) = status.requests
    assert (request.id, request.kind, request.hosts, request.state) == (
        "workers-1", ProviderRequestKind.SCALE_IN, b.ids("w3"), DeliveryState.PENDING)
    assert request.reason == "node-w3 below 50% cpu and memory requests for 10m and drained"
    assert status.decisions[-1].action == "release"
    assert status.decisions[-1].reason == request.reason + " (request workers-1)"
    assert status.desired_hosts == 2 and not released.forget
    after = b.applied(moved, released, now=b.NOW + 11)
    assert step(after).empty
    # Not delivered yet: a host that goes away is not forgotten before the provider was told.
    down = b.host_status("w3", ready=False)
    gone = replace(after, host_statuses={**after.host_statuses, HostId("w3"): down})
    assert step(gone).empty
    told = b.delivered(gone)
    forgotten = step(told)
    assert forgotten.forget == b.ids("w3")
    status = forgotten.statuses[WORKERS]
    assert status.released == () and status.decisions[-1].action == "forget"
    assert status.decisions[-1].reason == \
        "node-w3 is gone (unreachable) after its scale-in request: forgetting it"
    assert status.desired_hosts == 2
    assert step(b.applied(told, forgotten, now=b.NOW + 12)).empty


def test_stopping_replicas_on_a_draining_host_that_is_gone_do_not_hold_the_release() -> None:
    status = model.HostGroupStatus(group=WORKERS, draining=((HostId("w3"), b.NOW - 30),))
    inp = cluster(per_host={"w1": 2, "w2": 2}, status=status, not_ready=("w3",),
                  hosts=(b.host("w3", cpus=4, memory=8 * b.GiB, admin=HostAdmin.DRAINING),),
                  extra=(b.running("w3-r0", WEB, "w3", phase=ReplicaPhase.STOPPING),))
    assert step(inp).statuses[WORKERS].released == ((HostId("w3"), b.NOW),)


@pytest.mark.parametrize(("admin", "present", "reason"), [
    (HostAdmin.ACTIVE, True, "node-w3 is active now, not draining (an operator changed it): its scale-in is "
                             "abandoned"),
    (HostAdmin.CORDONED, True, "node-w3 is cordoned now, not draining (an operator changed it): its scale-in "
                               "is abandoned"),
    (HostAdmin.DRAINING, False, "w3 was removed (or left workers) while draining"),
])
def test_a_draining_host_an_operator_took_back_or_removed_is_dropped(
        admin: HostAdmin, present: bool, reason: str) -> None:
    status = model.HostGroupStatus(group=WORKERS, draining=((HostId("w3"), b.NOW - 30),))
    w3 = b.host("w3", cpus=4, memory=8 * b.GiB, admin=admin)
    inp = cluster(per_host={"w1": 6, "w2": 6}, status=status, hosts=(w3,) if present else (),
                  extra=(b.running("w3-r0", WEB, "w3"),) if present else ())
    plan = step(inp)
    new = plan.statuses[WORKERS]
    assert new.draining == () and not plan.drain
    assert [(d.action, d.reason) for d in new.decisions] == [("drop", reason)]
    assert new.underused_since == (((HostId("w3"), b.NOW),) if present else ())  # timing starts over
    assert step(b.applied(inp, plan, now=b.NOW + 1)).empty


def test_a_released_host_removed_by_hand_is_dropped() -> None:
    status = model.HostGroupStatus(group=WORKERS, released=((HostId("w9"), b.NOW - 30),))
    plan = step(cluster(status=status))
    new = plan.statuses[WORKERS]
    assert new.released == () and not plan.forget
    assert [(d.action, d.reason) for d in new.decisions] == [
        ("drop", "w9 was removed by hand after its release")]


def test_many_stuck_candidates_are_tried_a_few_at_a_time_and_each_in_turn() -> None:
    pinned = b.service("pinned", cpus=0.25, memory=256 * b.MiB, host_ports=[8080])
    names = [f"w{i:02d}" for i in range(20)]
    hosts = [b.host(h, cpus=4, memory=8 * b.GiB) for h in names]
    replicas = [b.running(f"{h}-p", pinned, h) for h in names]  # port 8080 taken everywhere: none can move
    status = model.HostGroupStatus(group=WORKERS, underused_since=tuple((HostId(h), RIPE) for h in names))
    inp = b.inputs(groups=[b.group(the_shape=b.shape())], hosts=hosts, services=[pinned], replicas=replicas,
                   statuses=[status])
    tried: set[HostId] = set()
    for second in range(4):  # 16 more in blocks of 4
        simulated = simulated_moves(replace(inp, now=b.NOW + second))
        assert len(simulated) == scale_in.MAX_TRIED
        assert simulated[:scale_in.MAX_TRIED // 2] == [HostId(h) for h in names[:scale_in.MAX_TRIED // 2]]
        tried.update(simulated)
    assert tried == set(names)


def simulated_moves(inp: b.ElasticInputs) -> list[HostId]:
    """Run the step (which drains nothing here) and list the hosts whose moves it simulated, in order."""
    tried: list[HostId] = []
    original = scale_out.Simulation.moved

    def moved(self: scale_out.Simulation, replicas: Sequence[model.Replica], *,
              away: Collection[HostId]) -> frozenset[model.ReplicaId]:
        tried.extend(r.host for r in replicas if r.host is not None)
        return original(self, replicas, away=away)
    scale_out.Simulation.moved = moved  # type: ignore[method-assign]
    try:
        assert not step(inp).drain
    finally:
        scale_out.Simulation.moved = original  # type: ignore[method-assign]
    return tried
