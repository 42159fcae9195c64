"""Mass failure: the killed hosts are spread over zones and the index range, and each lost replica is
paired with a replacement of its service in order of running."""

from __future__ import annotations

import pytest

from bench.sim.recovery import pick_victims, replacement_times


@pytest.mark.parametrize(("hosts", "kill"), [(5000, 100), (2000, 100), (1000, 100), (500, 100), (101, 100),
                                             (60, 10), (7, 6), (2, 1)])
def test_victims_are_distinct_in_range_and_in_every_zone(hosts: int, kill: int) -> None:
    victims = pick_victims(hosts, kill)
    assert len(set(victims)) == kill and victims == sorted(victims)
    assert victims[0] >= 0 and victims[-1] < hosts
    per_zone = [sum(1 for i in victims if i % 3 == z) for z in range(3)]
    assert max(per_zone) - min(per_zone) <= 1 if kill >= 3 else sum(per_zone) == kill


def test_victims_fall_in_every_simulator_process() -> None:
    victims = pick_victims(5000, 100)
    per_process = [sum(1 for i in victims if i // 1000 == p) for p in range(5)]
    assert all(15 <= n <= 25 for n in per_process), per_process


@pytest.mark.parametrize(("hosts", "kill"), [(100, 0), (100, 100), (100, 101)])
def test_killing_none_or_every_host_is_refused(hosts: int, kill: int) -> None:
    with pytest.raises(ValueError, match="can kill"):
        pick_victims(hosts, kill)


def test_replacements_pair_with_losses_per_service_in_order_of_running() -> None:
    got = replacement_times({"web": 2, "db": 1},
                            [("web", 105.0), ("db", 103.0), ("web", 104.0), ("web", 109.0), ("other", 101.0)],
                            killed_at=100.0)
    # web's two losses: the first two of its new replicas (4 s, 5 s); its third is not a replacement.
    assert got.seconds == (3.0, 4.0, 5.0)
    assert (got.missing, got.lost) == (0, 3)


def test_losses_without_a_replacement_are_missing() -> None:
    got = replacement_times({"web": 3, "db": 2}, [("web", 12.0)], killed_at=10.0)
    assert got.seconds == (2.0,)
    assert got.missing == 4
