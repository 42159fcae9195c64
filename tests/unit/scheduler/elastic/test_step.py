"""The step as the loop sees it: idempotence on its own output, requests it did not create left alone,
bounded decisions and requests, statuses returned only when they change."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from scheduler import model
from scheduler.elastic import decisions
from scheduler.elastic.step import MAX_DELIVERED, ElasticInputs, step
from scheduler.model import DeliveryState, GroupDecision, GroupName, HostAdmin, HostId, ProviderRequestKind
from tests.unit.scheduler.elastic import builders as b

WEB = b.service("web", cpus=1, memory=256 * b.MiB)
FILLER = b.service("filler", cpus=1, memory=2 * b.GiB)
WORKERS = GroupName("workers")


def scale_out_wanted() -> ElasticInputs:
    return b.inputs(groups=[b.group(the_shape=b.shape())], hosts=[b.host("w1")], services=[FILLER, WEB],
                    replicas=[b.running("f1", FILLER, "w1"), b.running("f2", FILLER, "w1"),
                              *b.pendings(WEB, 5)])


def cooldown() -> ElasticInputs:
    inp = scale_out_wanted()
    status = model.HostGroupStatus(group=WORKERS, last_scale_out_at=b.NOW - 1)
    return replace(inp, statuses={WORKERS: status})


def at_max() -> ElasticInputs:
    return replace(scale_out_wanted(), groups={WORKERS: b.group(the_shape=b.shape(), max_hosts=1)})


def no_shape() -> ElasticInputs:
    return replace(scale_out_wanted(), groups={WORKERS: b.group()}, hosts={}, host_statuses={},
                   replicas=b.pendings(WEB, 2))


def scale_in_ripe() -> ElasticInputs:
    hosts = [b.host(h, cpus=4, memory=8 * b.GiB) for h in ("w1", "w2", "w3")]
    status = model.HostGroupStatus(group=WORKERS, underused_since=((HostId("w3"), b.NOW - 700),))
    return b.inputs(groups=[b.group(the_shape=b.shape())], hosts=hosts, services=[WEB],
                    replicas=[b.running("r1", WEB, "w1"), b.running("r2", WEB, "w1"),
                              b.running("r3", WEB, "w2"), b.running("r4", WEB, "w3")],
                    statuses=[status])


def held_at_min() -> ElasticInputs:
    inp = scale_in_ripe()
    return replace(inp, groups={WORKERS: b.group(the_shape=b.shape(), min_hosts=3)})


def drained() -> ElasticInputs:
    inp = scale_in_ripe()
    w3 = replace(inp.hosts[HostId("w3")], admin=HostAdmin.DRAINING)
    status = model.HostGroupStatus(group=WORKERS, draining=((HostId("w3"), b.NOW - 60),))
    return replace(inp, hosts={**inp.hosts, w3.id: w3}, statuses={WORKERS: status},
                   replicas=[r for r in inp.replicas if r.host != "w3"])


def released_and_gone() -> ElasticInputs:
    inp = drained()
    request = model.ProviderRequest(id="workers-4", kind=ProviderRequestKind.SCALE_IN, created_at=b.NOW - 30,
                                     hosts=b.ids("w3"), state=DeliveryState.DELIVERED)
    status = model.HostGroupStatus(group=WORKERS, released=((HostId("w3"), b.NOW - 30),), requests=(request,),
                                   next_request_number=5)
    down = {**inp.host_statuses, HostId("w3"): b.host_status("w3", ready=False)}
    return replace(inp, statuses={WORKERS: status}, host_statuses=down)


def uncordoned() -> ElasticInputs:
    inp = drained()
    w3 = replace(inp.hosts[HostId("w3")], admin=HostAdmin.ACTIVE)
    return replace(inp, hosts={**inp.hosts, w3.id: w3})


SCENARIOS: dict[str, Callable[[], ElasticInputs]] = {
    "scale out": scale_out_wanted, "cooldown": cooldown, "at max": at_max, "no shape": no_shape,
    "drain": scale_in_ripe, "hold at min": held_at_min, "release": drained, "forget": released_and_gone,
    "uncordoned": uncordoned,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_step_on_its_own_output_changes_nothing(name: str) -> None:
    inp = SCENARIOS[name]()
    plan = step(inp)
    assert not plan.empty, name  # each scenario decides something...
    again = step(b.applied(inp, plan))
    assert again.empty, (name, again)  # ... once


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_step_is_deterministic(name: str) -> None:
    assert step(SCENARIOS[name]()) == step(SCENARIOS[name]())


def test_requests_the_step_did_not_create_are_left_alone_and_delivered_ones_pruned() -> None:
    inp = scale_out_wanted()
    old = [model.ProviderRequest(id=f"workers-{i}", kind=ProviderRequestKind.SCALE_IN, created_at=float(i),
                                 hosts=b.ids("gone"), state=DeliveryState.DELIVERED, attempts=1,
                                 delivered_at=float(i)) for i in range(1, 26)]
    retrying = model.ProviderRequest(id="workers-26", kind=ProviderRequestKind.SCALE_IN, created_at=26.0,
                                     hosts=b.ids("gone2"), attempts=3, next_attempt_at=b.NOW + 4,
                                     last_error="HTTP 503")
    status = model.HostGroupStatus(group=WORKERS, requests=(old[0], retrying, *old[1:]),
                                   next_request_number=27)
    new = step(replace(inp, statuses={WORKERS: status})).statuses[WORKERS]
    assert new.requests[0] == retrying  # untouched, and kept: not delivered
    assert new.requests[1:MAX_DELIVERED + 1] == tuple(old[5:])
    (created,) = new.requests[MAX_DELIVERED + 1:]
    assert created.id == "workers-27" and created.state is DeliveryState.PENDING
    assert new.next_request_number == 28


def test_decisions_are_bounded_latest_last() -> None:
    inp = scale_out_wanted()
    many = tuple(GroupDecision(time=float(i), action="drain", reason=f"d{i}")
                 for i in range(decisions.MAX_DECISIONS))
    status = model.HostGroupStatus(group=WORKERS, decisions=many)
    new = step(replace(inp, statuses={WORKERS: status})).statuses[WORKERS]
    assert len(new.decisions) == decisions.MAX_DECISIONS
    assert new.decisions[:-1] == many[1:]
    assert new.decisions[-1].action == "scale_out"


def test_a_standing_condition_is_recorded_again_when_it_changes_or_after_another_decision() -> None:
    d: tuple[GroupDecision, ...] = ()
    d = decisions.record(d, now=1.0, action="wait", reason="cooldown until A")
    d = decisions.record(d, now=2.0, action="wait", reason="cooldown until A")
    d = decisions.record(d, now=3.0, action="drain", reason="h1")   # the other track: no effect on waits
    d = decisions.record(d, now=4.0, action="wait", reason="cooldown until A")
    d = decisions.record(d, now=5.0, action="scale_out", reason="2 hosts")
    d = decisions.record(d, now=6.0, action="wait", reason="cooldown until A")
    d = decisions.record(d, now=7.0, action="wait", reason="cooldown until B")
    d = decisions.record(d, now=8.0, action="scale_out", reason="2 hosts")  # events always
    assert [x.time for x in d] == [1.0, 3.0, 5.0, 6.0, 7.0, 8.0]


def test_a_quiet_group_gets_a_status_once_and_then_nothing() -> None:
    inp = b.inputs(groups=[b.group(the_shape=b.shape())], hosts=[b.host("w1")], services=[FILLER],
                   replicas=[b.running("f1", FILLER, "w1"), b.running("f2", FILLER, "w1")])
    plan = step(inp)
    assert plan.statuses[WORKERS] == model.HostGroupStatus(group=WORKERS, desired_hosts=1)
    assert step(b.applied(inp, plan, now=b.NOW + 3600)).empty


def test_an_empty_group_without_news_needs_no_status() -> None:
    inp = b.inputs(groups=[b.group(the_shape=b.shape())], hosts=[])
    assert step(inp).empty


def test_statuses_of_groups_no_longer_declared_are_left_to_the_loop() -> None:
    stale = model.HostGroupStatus(group=GroupName("gone"), desired_hosts=3)
    inp = b.inputs(groups=[], hosts=[b.host("w1", group="gone")], statuses=[stale])
    assert step(inp).empty


def test_the_status_revision_read_is_kept_for_the_loops_compare_and_swap() -> None:
    inp = scale_out_wanted()
    inp = replace(inp, statuses={WORKERS: model.HostGroupStatus(group=WORKERS, revision=42)})
    assert step(inp).statuses[WORKERS].revision == 42
