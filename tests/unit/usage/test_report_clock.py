"""ReportClock: every host's sampling ticks on the wall clock at one of ten phases, and the windows a
subscriber sends in."""

from __future__ import annotations

import pytest

from agent.usage.report_clock import SLOTS, ReportClock, phase_of


def test_phases_are_one_of_ten_points_of_the_interval_and_fixed_per_host() -> None:
    phases = sorted({phase_of(f"host-{i}", 3.0) for i in range(500)})
    assert phases == pytest.approx([slot * 3.0 / SLOTS for slot in range(SLOTS)])
    assert phase_of("host-7", 1.0) == phase_of("host-7", 1.0)


@pytest.mark.parametrize("late", [-0.4, -0.001, 0.0, 0.001, 0.4])
def test_a_sample_a_little_early_or_late_belongs_to_its_tick(late: float) -> None:
    clock = ReportClock(1.0, 3)
    assert clock.tick(1_000_000.3 + late) == 1_000_000


def test_the_next_tick_is_after_the_last_sample_even_when_it_woke_early() -> None:
    clock = ReportClock(1.0, 3)
    # Woke 1 ms before tick 100 and sampled it: the next is tick 101, a second on, not 100 again.
    assert clock.next_tick(100.299, last=100) == (101, pytest.approx(1.001))
    # An overrun past two ticks skips them rather than sampling at once to catch up.
    assert clock.next_tick(102.5, last=100) == (103, pytest.approx(0.8))


def test_a_clock_stepped_back_does_not_stall_sampling_or_reports() -> None:
    clock = ReportClock(1.0, 0)
    assert clock.next_tick(970.0, last=1000) == (1001, 2.0)
    assert clock.next_report(970.0, 1000, every=3.0)[1] == 4.0


def test_windows_start_at_the_hosts_slot_of_the_window() -> None:
    # Slot 0 opens its 3 s windows at ticks 0, 3, 6; slot 5 half-way through (tick 1.5, nearest 2); and
    # every tick is a window at the sampling interval or below.
    assert [ReportClock(1.0, 0).window(k, 3.0) for k in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    assert [ReportClock(1.0, 5).window(k, 3.0) for k in range(7)] == [-1, -1, 0, 0, 0, 1, 1]
    assert [ReportClock(1.0, 5).window(k, 1.0) for k in range(4)] == [0, 1, 2, 3]


def test_a_longer_interval_spreads_the_slots_over_it() -> None:
    # Every 3 s: the ten slots report in each of the three seconds, three or four to a second.
    firsts = []
    for slot in range(SLOTS):
        clock = ReportClock(1.0, slot)
        opened = next(k for k in range(1, 4) if clock.window(k, 3.0) != clock.window(k - 1, 3.0))
        firsts.append(opened % 3)
    assert sorted(firsts.count(second) for second in range(3)) == [3, 3, 4]


@pytest.mark.parametrize("every", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("slot", [0, 3, 7])
def test_a_sender_without_a_sampler_reports_on_the_same_ticks_as_a_sampler(every: float, slot: int) -> None:
    clock = ReportClock(1.0, slot)
    ticks, tick, now = [], 0, clock.phase
    for _ in range(8):
        tick, wait = clock.next_report(now, tick, every)
        now += wait
        ticks.append(tick)
    expected = [k for k in range(1, ticks[-1] + 1) if clock.window(k, every) != clock.window(k - 1, every)]
    assert ticks == expected
    assert now == pytest.approx(clock.phase + ticks[-1])
    # one report a window: as many as the windows those ticks span
    assert len(ticks) == clock.window(ticks[-1], every) - clock.window(0, every)
