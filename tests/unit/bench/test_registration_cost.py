"""``bench/registration_cost.py`` at a tiny size: every first registration is written, no refresh is,
and both are timed."""

from __future__ import annotations

import asyncio

from bench import registration_cost


def test_first_registrations_are_written_and_refreshes_are_not() -> None:
    out = asyncio.run(registration_cost.one_round(6))
    assert out["first_writes"] == 6 and out["refresh_writes"] == 0
    assert out["first_us"] > 0 and out["refresh_us"] > 0
