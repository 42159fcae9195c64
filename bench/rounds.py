"""Scenarios measured in fresh processes, interleaved over rounds, summarised as median, min and max.

A benchmark that measures a process's own cpu or memory runs each scenario in a process of its own
(``ME --scenario NAME`` prints one JSON object of figures on its last line), and interleaves the
scenarios round by round, so that a noisy minute of a shared machine does not favour one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.procstat import cpu_seconds


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


@contextlib.contextmanager
def serving(command: Sequence[str], failed: str, bound: float) -> Iterator[int]:
    """A child that serves what the scenarios measure (``command`` prints "ready" once it listens, and
    stops when its stdin closes), for the length of the block, which is given its pid; ``failed`` is the
    error if it does not start, and ``bound`` how long it may take to stop."""
    with subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            if child.stdout.readline().strip() != "ready":
                raise SystemExit(failed)
            yield child.pid
        finally:
            child.stdin.close()
            child.wait(bound)


def child_role(args: argparse.Namespace, serve: Callable[[], Coroutine[Any, Any, None]],
               measure: Callable[[str], Coroutine[Any, Any, dict[str, float]]]) -> bool:
    """Plays this process's part if it is a child: ``--serve`` serves until stdin closes, ``--scenario
    NAME`` prints its figures as one JSON line. False in the parent, which goes on to drive them."""
    if args.serve:
        asyncio.run(serve())
        return True
    if args.scenario:
        print(json.dumps(asyncio.run(measure(args.scenario))))
        return True
    return False


def add_checkouts(parser: argparse.ArgumentParser) -> None:
    """``--baseline DIR``: another checkout (a git worktree of an older commit) whose scheduler is
    measured beside this one's; and ``--checkout DIR``, hidden: the checkout a child measures (its
    ``sys.path`` starts there)."""
    parser.add_argument("--baseline", default="", metavar="DIR",
                        help="another checkout whose scheduler is measured beside this one's")
    parser.add_argument("--checkout", default="", help=argparse.SUPPRESS)


def checkouts(root: Path, baseline: str) -> dict[str, str]:
    """The checkouts whose schedulers are measured, by name: this one, and ``baseline`` if given."""
    named = {"this": str(root)}
    if baseline:
        named["baseline"] = str(Path(baseline).resolve())
    return named


def checkouts_against_etcd(named: dict[str, str], rounds: int, prefix: str,
                           one: Callable[[str, str], dict[str, Any]]
                           ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, float]]]:
    """``one(checkout, endpoints)`` for each of the ``named`` checkouts, ``rounds`` times interleaved,
    against one private single-member etcd on loopback (``tests/fixtures/etcd``, started in a temp dir
    named after ``prefix`` and stopped after); every round's figures by checkout, and their medians.
    Progress is printed after each round."""
    from tests.fixtures.etcd import EtcdCluster

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in named}
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        etcd = EtcdCluster(Path(workdir), size=1).start()
        try:
            for i in range(rounds):
                for name, checkout in named.items():
                    runs[name].append(one(checkout, etcd.endpoints))
                print(f"round {i + 1} of {rounds} done", flush=True)
        finally:
            etcd.close()
    medians = {name: {key: statistics.median(r[key] for r in got) for key in got[0]}
               for name, got in runs.items()}
    return runs, medians


def write(out: str, record: dict[str, Any]) -> None:
    """The results as JSON at ``out``, with the machine's cpus and the time they were written (under
    "started", as the results already recorded have it)."""
    record = {**record, "machine": {"cpus": os.cpu_count()},
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {out}")


async def window(count: Callable[[], int], settle: float, length: float) -> tuple[float, int, float]:
    """After ``settle`` seconds, this process's cpu seconds, the messages ``count`` rose by and the
    seconds elapsed over a window of ``length`` seconds."""
    await asyncio.sleep(settle)
    cpu, messages, start = cpu_seconds(os.getpid()), count(), time.monotonic()
    await asyncio.sleep(length)
    return cpu_seconds(os.getpid()) - cpu, count() - messages, time.monotonic() - start


__all__ = ["add_checkouts", "checkouts", "checkouts_against_etcd", "child_role", "interleaved", "serving",
           "window", "write"]
