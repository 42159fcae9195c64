"""The agent's self-fencing decision (``agent.self_fence``) with time injected: nothing before the limit,
a stop (announced once) after it, stops again while contact stays lost, nothing once contact is back, and
a second loss announced again; and the timer loop acting on it with a fake clock and a recording stop."""

from __future__ import annotations

import asyncio

import pytest

from agent.self_fence import ContactLoss, SelfFence, Verdict


def test_nothing_happens_until_the_limit_is_passed() -> None:
    loss = ContactLoss(stop_after=30, started_at=100.0)
    assert loss.verdict(100.0) == Verdict(stop=False, announce=False, silent_for=0.0)
    assert not loss.verdict(130.0).stop  # exactly the limit: not longer than it
    loss.contact(125.0)
    assert not loss.verdict(150.0).stop  # counted from the last contact


def test_past_the_limit_it_stops_and_announces_once_per_loss() -> None:
    loss = ContactLoss(stop_after=30, started_at=0.0)
    assert loss.verdict(30.5) == Verdict(stop=True, announce=True, silent_for=30.5)
    again = loss.verdict(31.0)
    assert again.stop and not again.announce  # still lost: keep stopping, do not log again
    loss.contact(40.0)
    assert not loss.verdict(41.0).stop  # contact is back: nothing more to do
    assert loss.verdict(70.5) == Verdict(stop=True, announce=True, silent_for=30.5)  # a new loss


def test_an_agent_that_never_reached_a_scheduler_fences_too() -> None:
    loss = ContactLoss(stop_after=1, started_at=5.0)
    assert loss.verdict(6.5).stop


def test_a_late_contact_report_does_not_move_contact_backwards() -> None:
    loss = ContactLoss(stop_after=10, started_at=50.0)
    loss.contact(20.0)
    assert not loss.verdict(59.0).stop


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_the_limit_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        ContactLoss(stop_after=bad, started_at=0.0)


def test_the_loop_stops_replicas_only_while_contact_is_lost() -> None:
    async def scenario() -> None:
        now = [0.0]
        calls: list[float] = []
        checked = asyncio.Event()

        async def stop_replicas() -> list[str]:
            calls.append(now[0])
            checked.set()
            return ["web-1"]

        fence = SelfFence(stop_after=2.0, stop_replicas=stop_replicas, clock=lambda: now[0])
        task = asyncio.create_task(fence.run())
        try:
            now[0] = 1.0
            fence.contact()
            now[0] = 2.5  # 1.5 s since the contact: under the limit
            for _ in range(5):
                await asyncio.sleep(0.5)  # the loop ticks every 0.5 s (stop_after / 4)
            assert calls == []
            now[0] = 3.5  # 2.5 s since the contact
            await asyncio.wait_for(checked.wait(), 10)
            assert calls[0] == 3.5 and fence.stopped[0] == "web-1"
            fence.contact()  # contact is back: no more stops
            count = len(calls)
            for _ in range(5):
                await asyncio.sleep(0.5)
            assert len(calls) == count
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_the_flag_needs_join_and_a_positive_number() -> None:
    from agent import config

    parser = config.build_parser()
    joined = ["serve", "--listen", "127.0.0.1:7070", "--insecure-tcp", "--join", "127.0.0.1:7400"]
    assert config.settings_from_args(parser.parse_args(joined)).stop_replicas_after == 0.0  # off
    on = config.settings_from_args(parser.parse_args([*joined, "--stop-replicas-after", "30"]))
    assert on.stop_replicas_after == 30.0
    with pytest.raises(SystemExit, match="only matters with --join"):
        config.settings_from_args(parser.parse_args(["serve", "--stop-replicas-after", "30"]))
    with pytest.raises(SystemExit, match="positive number of seconds"):
        config.settings_from_args(parser.parse_args([*joined, "--stop-replicas-after", "-1"]))
