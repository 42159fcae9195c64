"""``--usage-interval auto``: a process following more hosts than its report budget asks each for fewer
reports, on a ladder of steps, and shortens the interval again only with room to spare."""

from __future__ import annotations

import pytest

from scheduler.usage_pace import LADDER, Pacer, UsagePace


def test_auto_asks_for_every_sample_within_the_budget_and_steps_up_past_it() -> None:
    pace = UsagePace(reports_per_second=1000)
    assert pace.interval_for(0, 0.0) == 0.0
    assert pace.interval_for(1000, 0.0) == 0.0   # 1,000 reports a second: within
    assert pace.interval_for(1001, 0.0) == 1.5   # the next step past 1.001 s
    assert pace.interval_for(3000, 0.0) == 3.0
    assert pace.interval_for(5000, 0.0) == 5.0
    assert pace.interval_for(10**9, 0.0) == LADDER[-1]  # capped: a host is heard at least this often
    assert UsagePace().interval_for(5000, 0.0) == 3.0   # the default budget at the size


def test_auto_shortens_the_interval_only_with_room_to_spare() -> None:
    pace = UsagePace(reports_per_second=1000)
    assert pace.interval_for(2900, 3.0) == 3.0   # fits 2.9 s, but not with 10% to spare: stays
    assert pace.interval_for(2200, 3.0) == 2.5   # 2.2 s, 2.44 with room: 2.5
    assert pace.interval_for(950, 1.5) == 1.5    # hovering at the edge of every sample: stays
    assert pace.interval_for(850, 1.5) == 0.0
    assert pace.interval_for(4000, 3.0) == 4.0   # growing: at once


def test_a_fixed_interval_is_kept_whatever_the_fleet() -> None:
    pace = UsagePace(interval=2.0, heartbeat_timeout=5.0)
    assert [pace.interval_for(n, 2.0) for n in (0, 10, 10**6)] == [2.0, 2.0, 2.0]
    assert pace.heartbeat_for(2.0) == 5.0  # fixed: the settings worked it out


def test_with_auto_the_heartbeat_is_the_least_and_twice_a_longer_interval() -> None:
    pace = UsagePace(heartbeat_timeout=2.0)
    assert pace.heartbeat_for(0.0) == 2.0
    assert pace.heartbeat_for(3.0) == 6.0  # two reports missed
    assert UsagePace(heartbeat_timeout=10.0).heartbeat_for(3.0) == 10.0


def test_a_pace_refuses_what_cannot_be() -> None:
    with pytest.raises(ValueError, match="positive"):
        UsagePace(reports_per_second=0)
    with pytest.raises(ValueError, match="negative"):
        UsagePace(interval=-1.0)


def test_a_pacer_lengthens_at_once_and_shortens_only_after_the_hold() -> None:
    """Each change has every session of the process subscribe again: a longer interval only lowers the
    load and is taken at once; a shorter one waits out the hold after the last change (``due``)."""
    now = [100.0]
    pacer = Pacer(UsagePace(reports_per_second=1000), hold=10.0, clock=lambda: now[0])
    assert (pacer.interval, pacer.update(500), pacer.due) == (0.0, None, None)  # within the budget
    assert pacer.update(1400) == 1.5 and pacer.interval == 1.5
    now[0] += 1
    assert pacer.update(2800) == 3.0                                            # longer: at once
    now[0] += 4
    assert (pacer.update(1300), pacer.interval, pacer.due) == (None, 3.0, 111.0)  # shorter: held
    now[0] += 6
    assert pacer.update(1300) == 1.5 and pacer.due is None
    now[0] += 1
    assert pacer.update(1300) is None and pacer.due is None  # nothing to change
    assert Pacer(UsagePace(interval=2.0)).update(10**6) is None  # fixed: never changes
