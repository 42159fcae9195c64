"""Golden replays: each ``golden/NAME.json`` is a decision input (an example for
``shoal autoscale replay``) and ``golden/NAME.out.json`` the decision it must give, byte for byte.
The expected numbers were worked out by hand (see each reason). After a deliberate change of the
output, rewrite them with ``SHOAL_UPDATE_GOLDEN=1 python -m pytest tests/unit/scheduler/autoscale`` and
review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scheduler.autoscale import replay

GOLDEN = Path(__file__).parent / "golden"
INPUTS = sorted(p for p in GOLDEN.glob("*.json") if not p.name.endswith(".out.json"))


def test_there_are_golden_files() -> None:
    assert len(INPUTS) >= 5


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: p.stem)
def test_golden_replay(path: Path) -> None:
    expected_path = path.with_name(f"{path.stem}.out.json")
    actual = replay.replay(path.read_text())
    if os.environ.get("SHOAL_UPDATE_GOLDEN") == "1":
        expected_path.write_text(actual)
    assert actual == expected_path.read_text()
