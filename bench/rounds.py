"""Scenarios measured in fresh processes, interleaved over rounds, summarised as median, min and max.

A benchmark that measures a process's own cpu or memory runs each scenario in a process of its own
(``ME --scenario NAME`` prints one JSON object of figures on its last line), and interleaves the
scenarios round by round, so that a noisy minute of a shared machine does not favour one of them.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Sequence


def interleaved(me: Sequence[str], scenarios: Sequence[str], rounds: int,
                timeout: float) -> dict[str, dict[str, dict[str, float]]]:
    """Each scenario ``rounds`` times, in a fresh ``me --scenario NAME`` each; per scenario and figure,
    its median, min and max. Progress is printed after each round."""
    measured: dict[str, list[dict[str, float]]] = {scenario: [] for scenario in scenarios}
    for i in range(rounds):
        for scenario in scenarios:
            out = subprocess.run([*me, "--scenario", scenario], capture_output=True, text=True,
                                 timeout=timeout, check=True)
            measured[scenario].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {i + 1} of {rounds} done", flush=True)
    return {scenario: {key: {"median": statistics.median(m[key] for m in runs),
                             "min": min(m[key] for m in runs), "max": max(m[key] for m in runs)}
                       for key in runs[0]}
            for scenario, runs in measured.items()}


__all__ = ["interleaved"]
