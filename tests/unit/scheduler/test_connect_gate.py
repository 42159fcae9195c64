"""``scheduler.connect_gate``: a process's agent sessions connect so many at a time. A session waiting for
a slot has not begun its attempt — no watchdog runs, nothing is wrong with it — and gets its turn when a
slot is left: by a session that follows its host, or whose attempt failed. Over real gRPC to simulated
hosts (bench/sim), one of which answers nothing."""

from __future__ import annotations

import asyncio

import pytest

from bench.sim.host import HostSpec, SimHost
from scheduler.agents import AgentSession
from scheduler.connect_gate import ConnectGate
from scheduler.controller import _followed
from scheduler.model import HostId
from tests.fixtures.etcd import free_port
from tests.fixtures.sim_session import BOUND_S, until

TIMEOUT_S = 0.5


def session(host: SimHost, gate: ConnectGate) -> AgentSession:
    return AgentSession(HostId(host.spec.host_id), host.spec.address, credentials=None,
                        on_change=lambda _h: None, heartbeat_timeout=TIMEOUT_S, gate=gate)


def test_a_session_waits_its_turn_without_a_watchdog_and_gets_it_when_a_slot_is_left() -> None:
    async def scenario() -> None:
        mute = SimHost(HostSpec(name="gate-mute", port=free_port(), usage_interval=0.1))
        hosts = [SimHost(HostSpec(name=f"gate-{i}", port=free_port(), usage_interval=0.1)) for i in range(2)]
        for host in (mute, *hosts):
            await host.start()
        await mute.fail("silent")
        gate = ConnectGate(1)
        first = session(mute, gate)
        later = [session(h, gate) for h in hosts]
        try:
            first.start()
            await until(lambda: gate.connecting == 1)
            for s in later:
                s.start()
            await until(lambda: gate.waiting == 2)
            await until(lambda: first.silent)  # its attempt's watchdog runs ...
            # ... theirs do not: they wait, with nothing wrong, however long the mute host holds the slot.
            assert all(not s.silent and s.error == "" and not _followed(s) for s in later)
            await until(lambda: all(_followed(s) for s in later))  # its attempt broke; they had their turn
            assert "no report from the agent" in first.error
            assert all(s.error == "" for s in later)
            # A session that follows its host leaves its slot: the mute host's next attempt has it.
            await until(lambda: gate.connecting == 1 and gate.waiting == 0)
        finally:
            for s in (first, *later):
                await s.close()
            for host in (mute, *hosts):
                await host.stop()
        assert gate.connecting == 0  # closing a session in the middle of an attempt leaves its slot

    asyncio.run(asyncio.wait_for(scenario(), 4 * BOUND_S))


def test_a_gate_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConnectGate(0)
