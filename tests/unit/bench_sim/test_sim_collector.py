"""The simulator's ``--gc``: its process gets the scheduler's young threshold unless asked for CPython's,
and ``stats`` reports its collections either way (what ``bench/scale.py`` records as
``sim_gc_pause_s…``). Run as the benchmark runs it: ``python -m bench.sim`` in a process of its own, with
no scheduler to register with (its registration times out at once and it serves commands)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.sim import collector
from scheduler import gc_pauses
from tests.fixtures.etcd import free_port

ROOT = Path(__file__).resolve().parents[3]
BOUND_S = 60.0


def _stats(*extra: str) -> dict[str, object]:
    command = [sys.executable, "-m", "bench.sim", "--scheduler", f"127.0.0.1:{free_port()}", "--hosts", "2",
               "--base-port", str(free_port()), "--register-timeout", "0.2", *extra]
    done = subprocess.run(command, input="stats\n", capture_output=True, text=True, cwd=ROOT,
                          timeout=BOUND_S, check=True)
    ready, stats = (json.loads(line) for line in done.stdout.splitlines())
    assert ready["hosts"] == 2
    assert isinstance(stats, dict)
    return stats


def test_simulators_collect_with_the_schedulers_threshold_by_default_and_time_it() -> None:
    stats = _stats()
    assert stats["gc_young_threshold"] == gc_pauses.YOUNG_THRESHOLD
    assert isinstance(stats["gc_collections"], int) and isinstance(stats["gc_pause_s"], float)


def test_cpython_keeps_cpythons_thresholds_and_still_times_its_collections() -> None:
    stats = _stats("--gc", "cpython")
    assert stats["gc_young_threshold"] == 700
    # Starting two hosts' servers allocates far more than 700 objects: collections happened, and counted.
    assert isinstance(stats["gc_collections"], int) and stats["gc_collections"] > 0


def test_an_unknown_mode_is_refused_before_anything_changes() -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="expected one of tuned, cpython"):
        collector.setup("never")
    assert gc.get_threshold() == before
