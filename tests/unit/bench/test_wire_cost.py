"""``bench/wire_cost.py`` at a tiny size: the message round-trips and both directions are timed."""

from __future__ import annotations

from bench import wire_cost


def test_a_states_message_is_timed_both_ways() -> None:
    out = wire_cost.one(hosts=5, containers=2, rounds=1)
    assert out["dumps_us_per_host"] > 0 and out["loads_us_per_host"] > 0
    assert out["bytes_per_host"] > 50
