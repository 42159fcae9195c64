"""Scale-out: which pending replicas count, how many hosts of the shape place them, limits, cooldown and
expected hosts — table tests over small clusters, through the step."""

from __future__ import annotations

from dataclasses import replace

import pytest

from scheduler import model
from scheduler.elastic import scale_out
from scheduler.elastic.step import step
from scheduler.model import Decision, DeliveryState, GroupName, HostId, ProviderRequestKind, ReplicaPhase
from tests.unit.scheduler.elastic import builders as b

FILLER = b.service("filler", cpus=1, memory=2 * b.GiB)


def full_member(name: str = "w1", **kwargs: object) -> tuple[model.HostRecord, list[model.Replica]]:
    """A 2-cpu 4 GiB member host whose two running replicas take all its cpu and memory."""
    record = b.host(name, **kwargs)  # type: ignore[arg-type]
    return record, [b.running(f"{name}-f{i}", FILLER, name) for i in range(2)]


def scenario(web: model.Service, n: int, *, group: model.HostGroup | None = None,
             since: float = b.NOW - 10, extra_hosts: tuple[model.HostRecord, ...] = (),
             statuses: tuple[model.HostGroupStatus, ...] = (), now: float = b.NOW) -> b.ElasticInputs:
    w1, filler = full_member()
    return b.inputs(groups=[group or b.group(the_shape=b.shape())], hosts=[w1, *extra_hosts],
                    services=[FILLER, web], replicas=[*filler, *b.pendings(web, n, since=since)],
                    statuses=statuses, now=now)


@pytest.mark.parametrize(("what", "web", "n", "hosts"), [
    ("cpu: two 1-cpu replicas per 2-cpu host", b.service("web", cpus=1, memory=256 * b.MiB), 5, 3),
    ("memory: one 3 GiB replica per 4 GiB host", b.service("web", cpus=0.1, memory=3 * b.GiB), 4, 4),
    ("ports: one replica on host port 8080 per host",
     b.service("web", cpus=0.1, memory=64 * b.MiB, host_ports=[8080]), 3, 3),
    ("both: cpu and memory each allow two per host", b.service("web", cpus=0.9, memory=1536 * b.MiB), 4, 2),
    ("one replica", b.service("web", cpus=1, memory=b.GiB), 1, 1),
])
def test_the_fewest_hosts_of_the_shape_that_place_every_pending_replica(
        what: str, web: model.Service, n: int, hosts: int) -> None:
    inp = scenario(web, n)
    plan = step(inp)
    status = plan.statuses[GroupName("workers")]
    (request,) = status.requests
    assert (request.kind, request.id, request.count) == (ProviderRequestKind.SCALE_OUT, "workers-1", hosts), \
        what
    assert request.shape == b.shape(labels={"group": "workers"})
    assert (request.state, request.created_at, request.next_attempt_at) == \
        (DeliveryState.PENDING, b.NOW, b.NOW)
    assert request.reason == (f"{n} replica{'s' if n > 1 else ''} of web pending for lack of room for 10s; "
                              f"{hosts} host{'s' if hosts > 1 else ''} of workers would fit them all")
    assert status.pending_replicas == n
    assert (status.expected_hosts, status.expected_until) == (hosts, b.NOW + 600)
    assert status.desired_hosts == 1 + hosts
    assert status.last_scale_out_at == b.NOW
    assert status.next_request_number == 2
    assert [(d.action, d.reason) for d in status.decisions] == [
        ("scale_out", request.reason + " (request workers-1)")]
    assert not plan.drain and not plan.forget


def test_replicas_pending_for_less_than_pending_for_do_not_count() -> None:
    web = b.service("web", cpus=1)
    plan = step(scenario(web, 3, since=b.NOW - 4.9))
    status = plan.statuses[GroupName("workers")]
    assert status.requests == () and status.pending_replicas == 0
    # ... and a group that waits less takes them.
    quick = b.group(the_shape=b.shape(), pending_for_seconds=2.0)
    assert step(scenario(web, 3, since=b.NOW - 4.9, group=quick)).statuses[GroupName("workers")].requests


def test_time_pending_counts_from_the_latest_decision_that_made_it_pending() -> None:
    svc = b.service("web")
    old = b.pending("r1", svc, since=b.NOW - 100)
    rescheduled = replace(old, decisions=(
        Decision(b.NOW - 100, "created", "wants 1"), Decision(b.NOW - 99, "placed", "on w1"),
        Decision(b.NOW - 98, "running", ""), Decision(b.NOW - 3, "rescheduled", "w1 keeps failing"),
        Decision(b.NOW - 2, "pending", "0/1 hosts: 1 insufficient cpu"),
        Decision(b.NOW - 1, "pending", "0/1 hosts: 1 insufficient memory")))
    assert scale_out.pending_since(rescheduled) == b.NOW - 3
    only_pending = replace(old, decisions=(Decision(b.NOW - 40, "pending", "a"),
                                           Decision(b.NOW - 5, "pending", "b")))
    assert scale_out.pending_since(only_pending) == b.NOW - 40  # the created decision was pushed out
    assert scale_out.pending_since(replace(old, decisions=())) == b.NOW - 100  # created_at


def test_replicas_that_fit_the_cluster_as_it_is_do_not_count() -> None:
    web = b.service("web", cpus=1, memory=b.GiB)
    roomy = b.host("w2", cpus=8, memory=16 * b.GiB)
    plan = step(scenario(web, 3, extra_hosts=(roomy,)))
    status = plan.statuses[GroupName("workers")]
    assert status.requests == () and status.pending_replicas == 0
    # With room for two of the three, one host is asked for the third.
    small = b.host("w2", cpus=2, memory=16 * b.GiB)
    (request,) = step(scenario(web, 3, extra_hosts=(small,))).statuses[GroupName("workers")].requests
    assert request.count == 1 and request.reason.startswith("1 replica of web pending")


@pytest.mark.parametrize(("shape_labels", "counted"), [
    ({"zone": "a"}, False),   # new hosts would be in zone a as well: nothing to ask for
    ({"zone": "b"}, True),    # the shape satisfies the constraint
    ({}, False),
])
def test_constraint_refused_replicas_count_only_when_the_shape_satisfies_them(
        shape_labels: dict[str, str], counted: bool) -> None:
    web = b.service("web", cpus=0.5, constraints=[b.constraint("zone", "=", "b")])
    roomy = b.host("w2", cpus=8, memory=16 * b.GiB, labels={"zone": "a"})
    group = b.group(the_shape=b.shape(labels=shape_labels))
    plan = step(scenario(web, 2, group=group, extra_hosts=(roomy,)))
    status = plan.statuses[GroupName("workers")]
    assert bool(status.requests) is counted
    assert status.pending_replicas == (2 if counted else 0)
    if counted:
        assert status.requests[0].count == 1
        assert dict(status.requests[0].shape.labels) == {"group": "workers", "zone": "b"}  # type: ignore[union-attr]


def test_a_replica_too_big_for_the_shape_asks_for_nothing() -> None:
    huge = b.service("huge", cpus=3)
    status = step(scenario(huge, 2)).statuses[GroupName("workers")]
    assert status.requests == () and status.pending_replicas == 0
    assert not any(d.action == "at_max" for d in status.decisions)


def test_max_per_request_caps_a_request_and_says_so() -> None:
    web = b.service("web", cpus=1)
    group = b.group(the_shape=b.shape(), max_per_request=3)
    status = step(scenario(web, 10, group=group)).statuses[GroupName("workers")]
    (request,) = status.requests
    assert request.count == 3
    assert request.reason == ("6 replicas of web pending for lack of room for 10s; 3 hosts of workers would "
                              "fit them; more would fit more, but one request asks for at most 3 "
                              "(max_per_request)")
    assert status.pending_replicas == 6


def test_max_caps_a_request_then_at_max_is_recorded_once() -> None:
    web = b.service("web", cpus=1)
    group = b.group(the_shape=b.shape(), max_hosts=3)
    inp = scenario(web, 10, group=group)
    plan = step(inp)
    status = plan.statuses[GroupName("workers")]
    assert status.requests[0].count == 2  # 1 member + 2 = max 3
    assert "the group may not exceed 3 hosts (max)" in status.requests[0].reason
    # The two hosts are still expected: at max now, and more hosts would place more.
    later = b.applied(b.delivered(b.applied(inp, plan)), plan=b.ElasticPlan(statuses={}), now=b.NOW + 120)
    plan2 = step(later)
    status2 = plan2.statuses[GroupName("workers")]
    assert len(status2.requests) == 1
    assert status2.decisions[-1].action == "at_max"
    assert status2.decisions[-1].reason == ("2 replicas of web would fit one more host of workers, but it is "
                                            "at its max of 3 hosts (1 joined, 2 expected)")
    assert status2.pending_replicas == 4  # what the expected hosts will take
    # Recorded once: the next second writes nothing.
    assert step(b.applied(later, plan2, now=b.NOW + 121)).empty


def test_no_request_within_the_cooldown_and_the_wait_is_recorded_once() -> None:
    web = b.service("web", cpus=1)
    group = b.group(the_shape=b.shape(), scale_out_cooldown_seconds=60.0)
    earlier = model.HostGroupStatus(group=GroupName("workers"), last_scale_out_at=b.NOW - 10)
    inp = scenario(web, 2, group=group, statuses=(earlier,))
    plan = step(inp)
    status = plan.statuses[GroupName("workers")]
    assert status.requests == ()
    assert [(d.action, d.reason) for d in status.decisions] == [
        ("wait", "cooldown until 2027-01-15T08:00:50Z (1m)")]
    assert status.pending_replicas == 2  # the group still wants them: not offered to the next one
    assert step(b.applied(inp, plan, now=b.NOW + 1)).empty
    after = step(b.applied(inp, plan, now=b.NOW + 50))
    (request,) = after.statuses[GroupName("workers")].requests
    assert request.count == 1 and request.created_at == b.NOW + 50


def test_expected_hosts_are_not_asked_for_twice_and_count_down_as_members_join() -> None:
    web = b.service("web", cpus=1)
    group = b.group(the_shape=b.shape(), scale_out_cooldown_seconds=0.0)
    inp = scenario(web, 6, group=group)
    first = step(inp)
    assert first.statuses[GroupName("workers")].requests[0].count == 3
    again = b.delivered(b.applied(inp, first, now=b.NOW + 5))
    assert step(again).empty  # the three hosts are expected: nothing more, nothing changed
    # One joins (registered after the request); the reconcile loop has not placed anything on it yet.
    joined = b.host("w2", registered_at=b.NOW + 20)
    with_w2 = replace(again, now=b.NOW + 21, hosts={**again.hosts, joined.id: joined},
                      host_statuses={**again.host_statuses, joined.id: b.host_status("w2")})
    plan = step(with_w2)
    status = plan.statuses[GroupName("workers")]
    assert len(status.requests) == 1
    assert (status.expected_hosts, status.desired_hosts) == (2, 4)
    assert status.pending_replicas == 4  # two fit w2 as it is; the two expected hosts take four


def test_a_host_that_joined_for_a_request_and_is_not_ready_yet_is_not_asked_for_again() -> None:
    web = b.service("web", cpus=1)
    group = b.group(the_shape=b.shape(), scale_out_cooldown_seconds=0.0)
    inp = scenario(web, 6, group=group)
    first = step(inp)
    again = b.delivered(b.applied(inp, first, now=b.NOW + 5))
    # Registered after the request, and the leader has not reached it yet: placement refuses it.
    joined = b.host("w2", registered_at=b.NOW + 20)
    joining = replace(again, now=b.NOW + 21, hosts={**again.hosts, joined.id: joined},
                      host_statuses={**again.host_statuses, joined.id: b.host_status("w2", ready=False)})
    plan = step(joining)
    status = b.status_of(plan, joining)
    assert len(status.requests) == 1
    assert (status.expected_hosts, status.desired_hosts, status.pending_replicas) == (2, 4, 6)
    without_status = replace(joining, host_statuses=again.host_statuses)  # not even a status yet
    assert len(b.status_of(step(without_status), without_status).requests) == 1


def test_hosts_that_joined_and_left_again_are_not_expected_again() -> None:
    web = b.service("web", cpus=1)
    group = b.group(the_shape=b.shape(), scale_out_cooldown_seconds=0.0)
    inp = scenario(web, 4, group=group)
    first = step(inp)
    assert first.statuses[GroupName("workers")].requests[0].count == 2
    asked = b.delivered(b.applied(inp, first, now=b.NOW + 5))
    # Both join (registered after the request); the step sees them and expects nothing more.
    joined = [b.host(n, registered_at=b.NOW + 20) for n in ("w2", "w3")]
    with_them = replace(asked, now=b.NOW + 21, hosts={**asked.hosts, **{h.id: h for h in joined}},
                        host_statuses={**asked.host_statuses, **{h.id: b.host_status(h.id) for h in joined}})
    seen = b.applied(with_them, step(with_them))
    assert seen.statuses[GroupName("workers")].expected_hosts == 0
    # Scaled in and forgotten within the provision timeout; the replicas pending again want two hosts:
    # the request they joined for does not expect them back.
    assert seen.statuses[GroupName("workers")].requests[0].hosts == b.ids("w2", "w3")  # what they filled
    gone = replace(seen, now=b.NOW + 60, hosts=asked.hosts, host_statuses=asked.host_statuses)
    second = step(gone)
    status = b.status_of(second, gone)
    assert [(r.id, r.count) for r in status.requests] == [("workers-1", 2), ("workers-2", 2)]
    # The second request's hosts join: they fill it, not the first one (whose hosts left).
    back = b.applied(gone, second, now=b.NOW + 70)
    again = [b.host(n, registered_at=b.NOW + 65) for n in ("w4", "w5")]
    with_again = replace(back, hosts={**back.hosts, **{h.id: h for h in again}},
                         host_statuses={**back.host_statuses, **{h.id: b.host_status(h.id) for h in again}})
    status = b.status_of(step(with_again), with_again)
    assert [r.hosts for r in status.requests] == [b.ids("w2", "w3"), b.ids("w4", "w5")]
    assert (status.expected_hosts, status.desired_hosts) == (0, 3)


def test_expected_hosts_expire_after_the_provision_timeout() -> None:
    web = b.service("web", cpus=1)
    group = b.group(the_shape=b.shape(), provision_timeout_seconds=300.0)
    inp = scenario(web, 2, group=group)
    first = step(inp)
    still = b.delivered(b.applied(inp, first, now=b.NOW + 299))
    assert step(still).empty
    expired = replace(still, now=b.NOW + 300)
    status = step(expired).statuses[GroupName("workers")]
    assert [r.id for r in status.requests] == ["workers-1", "workers-2"]
    assert status.requests[1].count == 1
    assert status.requests[0].state is DeliveryState.DELIVERED  # the first one untouched
    assert status.expected_hosts == 1 and status.expected_until == b.NOW + 600


def test_expected_hosts_first_come_first_served() -> None:
    def request(rid: str, at: float, count: int) -> model.ProviderRequest:
        return model.ProviderRequest(id=rid, kind=ProviderRequestKind.SCALE_OUT, created_at=at, count=count)
    requests = [request("g-1", 100.0, 2), request("g-2", 120.0, 1)]
    a, bb, c, d = (b.host("a", registered_at=10.0), b.host("b", registered_at=110.0),
                   b.host("c", registered_at=130.0), b.host("d", registered_at=140.0))

    def expected(members: list[model.HostRecord], now: float) -> tuple[int, float]:
        got = scale_out.expected_hosts(requests, members, provision_timeout=100.0, now=now)
        return got.hosts, got.until
    assert expected([a], 125.0) == (3, 220.0)         # a joined before any request: it fills none
    assert expected([a, bb], 125.0) == (2, 220.0)     # b fills g-1
    assert expected([a, bb, c], 135.0) == (1, 220.0)  # c fills g-1 too (the oldest still short)
    assert expected([a, bb, c, d], 145.0) == (0, 0.0)
    assert expected([a, bb], 205.0) == (1, 220.0)     # g-1 timed out; b came before g-2
    assert expected([a, bb], 220.0) == (0, 0.0)


def test_two_groups_in_name_order_each_take_what_its_shape_places() -> None:
    small, big = b.service("small", cpus=0.5), b.service("big", cpus=3)
    alpha = b.group("alpha", the_shape=b.shape(cpus=1, memory=2 * b.GiB))
    beta = b.group("beta", the_shape=b.shape(cpus=4, memory=8 * b.GiB))
    w1, filler = full_member(group="alpha")
    inp = b.inputs(groups=[beta, alpha], hosts=[w1], services=[FILLER, small, big],
                   replicas=[*filler, *b.pendings(small, 4), *b.pendings(big, 2)])
    plan = step(inp)
    a, c = plan.statuses[GroupName("alpha")], plan.statuses[GroupName("beta")]
    assert (a.requests[0].count, a.pending_replicas) == (2, 4)   # two small per 1-cpu host
    assert (c.requests[0].count, c.pending_replicas) == (2, 2)   # one big per 4-cpu host
    assert "2 replicas of big" in c.requests[0].reason and "small" not in c.requests[0].reason
    assert (a.desired_hosts, c.desired_hosts) == (3, 2)


def test_a_group_takes_the_replicas_before_the_next_one_sees_them() -> None:
    small = b.service("small", cpus=0.5)
    alpha = b.group("alpha", the_shape=b.shape(cpus=1, memory=2 * b.GiB))
    beta = b.group("beta", the_shape=b.shape(cpus=4, memory=8 * b.GiB))
    inp = b.inputs(groups=[alpha, beta], hosts=[], services=[small], replicas=b.pendings(small, 4))
    plan = step(inp)
    assert plan.statuses[GroupName("alpha")].requests[0].count == 2
    assert GroupName("beta") not in plan.statuses  # nothing for it: its fresh status is unchanged


def test_a_group_at_max_leaves_the_replicas_to_the_next_group() -> None:
    small = b.service("small", cpus=0.5)
    alpha = b.group("alpha", the_shape=b.shape(cpus=1, memory=2 * b.GiB), max_hosts=1)
    beta = b.group("beta", the_shape=b.shape(cpus=4, memory=8 * b.GiB))
    w1, filler = full_member(group="alpha")
    inp = b.inputs(groups=[alpha, beta], hosts=[w1], services=[FILLER, small],
                   replicas=[*filler, *b.pendings(small, 4)])
    plan = step(inp)
    assert plan.statuses[GroupName("alpha")].decisions[-1].action == "at_max"
    assert plan.statuses[GroupName("alpha")].pending_replicas == 0
    assert plan.statuses[GroupName("beta")].requests[0].count == 1


def test_a_learned_shape_is_asked_for() -> None:
    web = b.service("web", cpus=1)
    w1 = b.host("w1", cpus=2, memory=8 * b.GiB, labels={"zone": "a", "disk": "ssd"})
    w2 = b.host("w2", cpus=4, memory=4 * b.GiB, labels={"zone": "a"})
    filler = b.service("filler", cpus=1, memory=b.GiB)
    fill = [b.running(f"f{i}", filler, h) for i, h in enumerate(["w1", "w1", "w2", "w2", "w2", "w2"])]
    inp = b.inputs(groups=[b.group()], hosts=[w1, w2], services=[filler, web],
                   replicas=[*fill, *b.pendings(web, 3)])
    (request,) = step(inp).statuses[GroupName("workers")].requests
    assert request.shape == model.HostShape(cpu_millis=2000, memory_bytes=4 * b.GiB,
                                            labels=(("group", "workers"), ("zone", "a")))
    assert request.count == 2


def test_a_group_without_shape_or_members_says_once_that_it_cannot_scale_out() -> None:
    web = b.service("web", cpus=1)
    inp = b.inputs(groups=[b.group()], hosts=[], services=[web], replicas=b.pendings(web, 2))
    plan = step(inp)
    status = plan.statuses[GroupName("workers")]
    assert status.requests == () and status.pending_replicas == 0
    assert [(d.action, d.reason) for d in status.decisions] == [
        ("no_shape",
         "workers declares no shape and has no member host to learn one from: it cannot scale out")]
    assert step(b.applied(inp, plan, now=b.NOW + 1)).empty


def test_pending_replicas_of_a_deleted_service_do_not_count() -> None:
    web = replace(b.service("web", cpus=1), deleting=True)
    status = step(scenario(web, 3)).statuses[GroupName("workers")]
    assert status.requests == ()


def test_a_stopping_or_placed_replica_does_not_count() -> None:
    web = b.service("web", cpus=1)
    w1, filler = full_member()
    starting = replace(b.pending("r1", web), host=HostId("w1"), phase=ReplicaPhase.STARTING)
    stopping = replace(b.pending("r2", web), phase=ReplicaPhase.STOPPING)
    inp = b.inputs(groups=[b.group(the_shape=b.shape())], hosts=[w1], services=[FILLER, web],
                   replicas=[*filler, starting, stopping])
    assert step(inp).statuses[GroupName("workers")].requests == ()
