"""The sweep driver's budget per size and its refusals of bad sizes (running it is bench/scale.py's job)."""

from __future__ import annotations

import pytest

from bench import scale_sweep


def test_a_budget_grows_with_the_hosts_above_a_floor() -> None:
    assert scale_sweep.budget_for(500, 0.5, 900.0) == 900.0
    assert scale_sweep.budget_for(5000, 0.5, 900.0) == 2500.0


@pytest.mark.parametrize("sizes", ["", "500,x", "1"])
def test_bad_sizes_are_refused(sizes: str) -> None:
    with pytest.raises(SystemExit, match="--sizes"):
        scale_sweep.main(["--sizes", sizes])
