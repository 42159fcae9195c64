"""How often agents re-register: the refresh the scheduler answers grows with the fleet it answers (about
20 registrations a second at most, between the configured floor and a minute), and an agent that
self-fences registers often enough for its own clock whatever the scheduler asks."""

from __future__ import annotations

import asyncio

import pytest

from agent.join import Joiner, JoinSettings
from proto.agent.v1 import agent_pb2 as apb
from scheduler.server import REGISTRATION_REFRESH, RegistrationService
from scheduler.store.memory import MemoryStore

NOW = 10_000.0


def registered(service: RegistrationService, hosts: int, *, at: float = NOW) -> float:
    """``hosts`` hosts register at ``at``; the refresh the last one is told."""
    refresh = 0.0
    for n in range(hosts):
        refresh = service.refresh_for(f"{n:032x}", at)
    return refresh


@pytest.mark.parametrize(("hosts", "refresh"), [
    (1, REGISTRATION_REFRESH), (100, REGISTRATION_REFRESH), (200, 10.0), (1_000, 50.0), (5_000, 60.0),
    (50_000, 60.0)])
def test_the_refresh_grows_with_the_hosts_registering_here(hosts: int, refresh: float) -> None:
    assert registered(RegistrationService(MemoryStore()), hosts) == refresh


def test_the_same_host_again_is_counted_once() -> None:
    service = RegistrationService(MemoryStore())
    registered(service, 1_000)
    assert registered(service, 1_000, at=NOW + 50) == 50.0


def test_a_configured_refresh_is_the_floor_and_may_exceed_the_cap() -> None:
    assert registered(RegistrationService(MemoryStore(), refresh_seconds=1.0), 40) == 2.0
    assert registered(RegistrationService(MemoryStore(), refresh_seconds=90.0), 5_000) == 90.0


def test_hosts_gone_quiet_stop_counting() -> None:
    service = RegistrationService(MemoryStore())
    assert registered(service, 1_000) == 50.0
    # Two minutes later only one host still registers: the fleet is one host again.
    assert service.refresh_for("f" * 32, NOW + RegistrationService.REFRESH_MEMORY + 1) == REGISTRATION_REFRESH


@pytest.mark.parametrize(("max_refresh", "slept"), [(0.0, 60.0), (10.0, 10.0), (100.0, 60.0)])
def test_a_self_fencing_agent_registers_at_least_as_often_as_its_setting_needs(
        monkeypatch: pytest.MonkeyPatch, max_refresh: float, slept: float) -> None:
    delays: list[float] = []

    async def register(address: str) -> float:
        return 60.0  # what a scheduler answering 5,000 hosts asks for

    async def sleep(delay: float) -> None:
        delays.append(delay)
        raise asyncio.CancelledError  # one round is enough

    settings = JoinSettings(schedulers=("127.0.0.1:1",), advertise="127.0.0.1:2", max_refresh=max_refresh)
    joiner = Joiner(settings, host_info=apb.HostInfo)
    monkeypatch.setattr(joiner, "_register", register)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(joiner.run())
    assert delays == [slept]
