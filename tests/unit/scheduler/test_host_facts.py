"""What passes read of each host, kept between them (``scheduler.host_facts``): after every kind of change
a host's facts come from — its session's observation, error and room, its recorded status and record,
its start failures, a host registering or leaving — the world a scoped pass decides from holds, for every
host, what working all of it out afresh gives; and a scoped pass works out only the hosts that changed."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from typing import Any, cast

import pytest

from proto.agent.v1 import agent_pb2 as pb
from scheduler import reconcile
from scheduler.agents import AgentSession
from scheduler.controller import Controller
from scheduler.host_facts import HostFacts
from scheduler.model import Capacity, HostAdmin, HostId, HostRecord, HostStatus
from scheduler.observed import ContainerState, HostObservation
from scheduler.store import base
from tests.unit.scheduler.test_scoped_passes import Sessions, StandInSession, settled_controller


@dataclasses.dataclass(eq=False)
class Hosts:
    """A mirror as ``HostFacts`` reads one (each instance another mirror)."""

    hosts: dict[HostId, HostRecord]


class Session(StandInSession):
    def start(self) -> None:
        return None


def checked(ctl: Controller, worlds: list[reconcile.World]) -> None:
    """Every world a pass builds is compared with one built afresh at that moment."""
    build = ctl._world

    def world(statuses: dict[HostId, HostStatus] | None = None, **kw: Any) -> reconcile.World:
        kept = build(statuses, **kw)
        if statuses is not None:
            afresh = build(None, **kw)
            for name in ("hosts", "observed", "unreachable_since", "agent_down", "draining"):
                assert getattr(kept, name) == getattr(afresh, name), name
            assert unstamped(ctl, kept.statuses) == unstamped(ctl, afresh.statuses)
            worlds.append(kept)
        return kept

    ctl._world = world  # type: ignore[method-assign]


def unstamped(ctl: Controller, statuses: Mapping[HostId, HostStatus]) -> dict[HostId, HostStatus]:
    """A host with no recorded status yet is judged ``since`` the moment it is judged: not compared."""
    assert ctl.mirror is not None
    return {h: s if h in ctl.mirror.statuses else dataclasses.replace(s, since=0.0)
            for h, s in statuses.items()}


def changed(ctl: Controller, sessions: Sessions, host: str, **kw: Any) -> None:
    """A session's change, said to the controller as sessions say it."""
    session = sessions[HostId(host)]
    for name, value in kw.items():
        setattr(session, name, value)
    ctl._host_changed(HostId(host))


async def written(ctl: Controller, *records: Any) -> None:
    """Records another writer put (a registration, another leader's status), as the watch brings them."""
    committed = await ctl.store.commit([base.Put(r) for r in records])
    assert ctl.mirror is not None
    for record in committed.written:
        ctl.mirror.put(record)


def test_every_scoped_pass_reads_what_working_every_host_out_afresh_gives() -> None:
    async def go() -> tuple[list[reconcile.World], list[set[HostId] | None], Controller]:
        scopes: list[reconcile.Scope | None] = []
        ctl, sessions = await settled_controller(scopes, empty_hosts=2)  # h1..h4
        ctl.actuator.submit = lambda actions: None  # type: ignore[method-assign]  # no agents here

        def new_session(host: HostId, address: str) -> AgentSession:
            sessions[host] = Session(host, address, HostObservation(host=host, connected=True, complete=True))
            return cast(AgentSession, sessions[host])

        ctl._new_session = new_session  # type: ignore[method-assign]
        worlds: list[reconcile.World] = []
        judged: list[set[HostId] | None] = []
        host_facts = ctl._host_facts

        def recorded(changed: set[HostId], *, whole: bool) -> Any:
            out = host_facts(changed, whole=whole)
            judged.append(out[1])
            return out

        ctl._host_facts = recorded  # type: ignore[method-assign]
        checked(ctl, worlds)
        assert ctl.mirror is not None
        await ctl.step()  # a term's first pass: every host
        await ctl.step()  # nothing changed: no host
        # h1's container restarts (its observation).
        h1 = sessions[HostId("h1")]
        restarting = dataclasses.replace(h1.observation.containers["web-1"], state=ContainerState.RESTARTING)
        changed(ctl, sessions, "h1", observation=dataclasses.replace(
            h1.observation, containers={"web-1": restarting}))
        await ctl.step()
        # h2 falls silent (its error, its connection): not ready, its status written.
        h2 = sessions[HostId("h2")]
        changed(ctl, sessions, "h2", error="no report from the agent for 6.0 s (unreachable?)",
                      observation=dataclasses.replace(h2.observation, connected=False))
        await ctl.step()
        await ctl.step()  # its status's echo
        # Another writer records h3 not ready: the leader judges it ready again.
        await written(ctl, HostStatus(id=HostId("h3"), ready=False, reason="someone said so",
                                      revision=ctl.mirror.statuses[HostId("h3")].revision))
        await ctl.step()
        # h3 registers again with more room; h4's agent reports different room.
        await written(ctl, dataclasses.replace(ctl.mirror.hosts[HostId("h3")], capacity=Capacity(
            cpu_allocatable_millis=16000, memory_allocatable_bytes=32 << 30)))
        changed(ctl, sessions, "h4", info=pb.HostInfo(host_id="h4", cpu_allocatable_millis=2000,
                                                            memory_allocatable_bytes=4 << 30))
        await ctl.step()
        # A new host registers (its session is made), and its agent refuses connections.
        await written(ctl, HostRecord(id=HostId("h9"), name="node-h9", address="10.0.0.9:7070"))
        await ctl.step()
        changed(ctl, sessions, "h9", error="UNAVAILABLE: connection refused", agent_down=True,
                      observation=HostObservation(host=HostId("h9")))
        await ctl.step()
        # An operator drains h3.
        await written(ctl, dataclasses.replace(ctl.mirror.hosts[HostId("h3")], admin=HostAdmin.DRAINING))
        await ctl.step()
        # h4 leaves.
        gone = ctl.mirror.hosts[HostId("h4")]
        await ctl.store.commit([base.Delete(gone)])
        ctl.mirror.drop(gone)
        await ctl.step()
        # h1 keeps failing to start containers, then starts one.
        for _ in range(ctl.start_health.settings.threshold):
            ctl.start_health.failed(HostId("h1"), at=time.time(), reason="no such image")
        await ctl.step()
        failing = ctl.facts.statuses[HostId("h1")]
        ctl.start_health.succeeded(HostId("h1"))
        await ctl.step()
        assert failing.start_failing and not ctl.facts.statuses[HostId("h1")].start_failing
        return worlds, judged, ctl

    worlds, judged, ctl = asyncio.run(go())
    assert len(worlds) == 13
    assert judged[0] is None and judged[1] == set()  # the first pass all; one with nothing changed, none
    assert judged[2] == {"h1"} and judged[3] == {"h2"}
    h2 = HostId("h2")
    assert not worlds[3].statuses[h2].ready and h2 in worlds[3].unreachable_since
    assert worlds[5].statuses[HostId("h3")].ready
    # (the room its agent reports stands over the registration's: the record is the new one)
    assert worlds[6].hosts[HostId("h3")].revision > worlds[5].hosts[HostId("h3")].revision
    assert worlds[6].hosts[HostId("h4")].capacity.cpu_allocatable_millis == 2000
    assert HostId("h9") in worlds[7].statuses and worlds[8].agent_down == {"h9"}
    assert worlds[9].draining == {"h3"} and worlds[8].draining == set()
    assert HostId("h4") not in worlds[10].statuses and HostId("h4") not in worlds[10].observed
    assert HostId("h4") not in ctl.sessions


def test_a_change_a_session_did_not_say_is_read_by_the_next_full_pass() -> None:
    """The contract's other side: what no session said reaches no scoped pass, and the safety net's
    full pass reads it (which is what bounds a change that was not said)."""
    async def go() -> tuple[bool, bool]:
        ctl, sessions = await settled_controller([])
        ctl.actuator.submit = lambda actions: None  # type: ignore[method-assign]
        await ctl.step()
        h1 = sessions[HostId("h1")]
        h1.observation = dataclasses.replace(h1.observation, connected=False, complete=False)
        h1.error = "not said"
        await ctl.step()
        scoped = ctl.facts.statuses[HostId("h1")].ready
        ctl._full_due = True
        await ctl.step()
        return scoped, ctl.facts.statuses[HostId("h1")].ready

    assert asyncio.run(go()) == (True, False)


def test_facts_are_worked_out_again_for_another_mirror() -> None:
    facts = HostFacts()
    hosts = {HostId("h1"): HostRecord(id=HostId("h1"), name="a", address="x:1")}
    judged: list[HostId] = []

    def judge(host: HostId) -> HostStatus:
        judged.append(host)
        return HostStatus(id=host, ready=True)

    session = Session(HostId("h1"), "x:1", HostObservation(host=HostId("h1")))
    first, second = Hosts(hosts), Hosts(hosts)
    assert facts.refresh(first, {HostId("h1"): session}, judge=judge, fresh=lambda r: r) is None
    assert facts.refresh(first, {HostId("h1"): session}, judge=judge, fresh=lambda r: r) == set()
    assert facts.refresh(second, {HostId("h1"): session}, judge=judge, fresh=lambda r: r) is None
    assert judged == ["h1", "h1"] and facts.of(second) and not facts.of(first)


@pytest.mark.parametrize("whole", [True, False])
def test_a_host_gone_from_the_mirror_leaves_every_fact(whole: bool) -> None:
    facts = HostFacts()
    host = HostId("h1")
    mirror = Hosts({host: HostRecord(id=host, name="a", address="x:1", admin=HostAdmin.DRAINING)})
    session = Session(host, "x:1", HostObservation(host=host))
    session.agent_down = True
    facts.refresh(mirror, {host: session}, judge=lambda h: HostStatus(id=h), fresh=lambda r: r)
    assert facts.not_ready == facts.agent_down == facts.draining == {host}
    mirror.hosts = {}
    facts.stale(host)
    facts.refresh(mirror, {}, judge=lambda h: HostStatus(id=h), fresh=lambda r: r, whole=whole)
    assert (facts.statuses, facts.records, facts.observed, facts.not_ready, facts.agent_down,
            facts.draining) == ({}, {}, {}, set(), set(), set())
