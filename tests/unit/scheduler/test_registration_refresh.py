"""How often agents re-register: the refresh the scheduler answers grows with the fleet it answers (about
20 registrations a second at most, between the configured floor and a minute), a grown refresh is
spread so that hosts that joined together stop coming back together, and an agent that self-fences
registers often enough for its own clock whatever the scheduler asks."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

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
    assert registered(RegistrationService(MemoryStore(), spread=0.0), hosts) == refresh


def test_the_same_host_again_is_counted_once() -> None:
    service = RegistrationService(MemoryStore(), spread=0.0)
    registered(service, 1_000)
    assert registered(service, 1_000, at=NOW + 50) == 50.0


def test_a_configured_refresh_is_the_floor_and_may_exceed_the_cap() -> None:
    assert registered(RegistrationService(MemoryStore(), refresh_seconds=1.0, spread=0.0), 40) == 2.0
    assert registered(RegistrationService(MemoryStore(), refresh_seconds=90.0), 5_000) == 90.0


def test_a_grown_refresh_is_spread_around_itself_and_the_floor_is_not() -> None:
    service = RegistrationService(MemoryStore(), rng=random.Random(7))
    registered(service, 5_000)
    answers = [service.refresh_for(f"{n:032x}", NOW) for n in range(1_000)]
    assert 30.0 <= min(answers) < 35.0 and 85.0 < max(answers) <= 90.0  # 60 s, spread by half
    assert sum(answers) / len(answers) == pytest.approx(60.0, abs=2.0)  # the same rate on average
    small = RegistrationService(MemoryStore(), rng=random.Random(7))
    assert {small.refresh_for(f"{n:032x}", NOW) for n in range(50)} == {REGISTRATION_REFRESH}
    with pytest.raises(ValueError, match="share below 1"):
        RegistrationService(MemoryStore(), spread=1.0)


def busiest_second(spread: float, rounds: int) -> int:
    """5,000 hosts join in 10 s (500 a second, as bench/scale.py's join waves) and each comes back when
    its answer says, ``rounds`` times; the most registrations in one second of the last round's minute."""
    service = RegistrationService(MemoryStore(), spread=spread, rng=random.Random(3))
    due = {f"{n:032x}": NOW + n / 500 for n in range(5_000)}
    for n, at in due.items():  # the fleet is known before the rounds start (as after the first minute)
        service.refresh_for(n, at)
    for _ in range(rounds):
        due = {n: at + service.refresh_for(n, at) for n, at in sorted(due.items(), key=lambda i: i[1])}
    return max(Counter(int(at) for at in due.values()).values())


def test_hosts_that_joined_together_stop_coming_back_together() -> None:
    assert busiest_second(0.0, rounds=5) == 500  # unspread, the join wave comes back whole every minute
    # Spread, the first return is smeared over the minute: near the even 83 a second.
    assert busiest_second(RegistrationService.REFRESH_SPREAD, rounds=1) < 150
    assert busiest_second(RegistrationService.REFRESH_SPREAD, rounds=5) < 150


def test_hosts_gone_quiet_stop_counting() -> None:
    service = RegistrationService(MemoryStore(), spread=0.0)
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
