"""A real agent and real containers while parts of the supervisor are SIGKILLed: the worker, the keeper,
or the agent and the worker together. Containers keep running, `shoal logs` loses no line, `stop` works
and exit codes are the containers' own."""

from __future__ import annotations

import ctypes
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent.conftest import AgentProcess, wait_for
from tests.integration.supervisor.supervisor_harness import (
    parent_of,
    process_gone,
    process_state,
    supervisor_pid,
    supervisor_processes,
    wait_idle,
    worker_pids,
)

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"
# Counts on stdout until SIGTERM, then exits 3. It is the pid namespace's init, so only a signal it
# has a handler for reaches it: the trap is what makes `shoal stop` end it with its own code.
COUNTER = "trap 'exit 3' TERM; i=0; while true; do echo $i; i=$((i+1)); sleep 0.01; done"
WAITER = "while [ ! -e /tmp/go ]; do sleep 0.01; done; echo bye; exit 42"


def inspect(agent: AgentProcess, ref: str) -> dict[str, object]:
    return json.loads(agent.run("inspect", ref).stdout)[0]  # type: ignore[no-any-return]


def pid_of(agent: AgentProcess, ref: str) -> int:
    pid = inspect(agent, ref)["pid"]
    assert isinstance(pid, int) and pid > 0
    return pid


def numbers(agent: AgentProcess, ref: str) -> list[int]:
    return [int(line) for line in agent.run("logs", ref).stdout.split() if line.isdigit()]


def exited_with(agent: AgentProcess, ref: str, code: int) -> bool:
    info = inspect(agent, ref)
    return info["state"] == "exited" and info["exit_code"] == code


def one_worker(agent: AgentProcess, *, replacing: int | None = None) -> int:
    """The keeper's one worker, once the tree is back to a keeper and exactly one worker; with
    ``replacing``, one other than that (just SIGKILLed, it may still be listed for a moment)."""
    def settled() -> int | None:
        keeper = supervisor_pid(agent.root)
        workers = worker_pids(agent.root)
        if keeper is None or len(workers) != 1 or workers[0] == replacing:
            return None
        return workers[0] if supervisor_processes(agent.root) == sorted([keeper, workers[0]]) else None

    worker: int = wait_for(settled)
    return worker


_PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def subreaper() -> Iterator[list[int]]:
    """This process as the subreaper above the agent's supervisor: containers orphaned by a dead keeper
    come to us, and stay zombies until we reap the pids put in the yielded list."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    to_reap: list[int] = []
    try:
        yield to_reap
    finally:
        for pid in to_reap:
            wait_for(lambda pid=pid: process_gone(pid))  # type: ignore[misc]
        assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) == 0


def test_killed_worker(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "counter", IMAGE, "sh", "-c", COUNTER)
    agent.run("run", "-d", "--name", "waiter", IMAGE, "sh", "-c", WAITER)
    counter, waiter = pid_of(agent, "counter"), pid_of(agent, "waiter")
    wait_for(lambda: len(numbers(agent, "counter")) >= 5)
    keeper = supervisor_pid(agent.root)
    assert keeper is not None
    old_worker = one_worker(agent)

    # Quiet the counter so nothing is in flight in the worker, then stop the keeper (no reaping, no new
    # worker) and kill the worker. Until SIGCONT no worker runs: the counter writes into a pipe only the
    # keeper still holds open, and the waiter exits.
    os.kill(counter, signal.SIGSTOP)
    wait_for(lambda: process_state(counter) == "T")
    wait_idle(old_worker)
    os.kill(keeper, signal.SIGSTOP)
    try:
        os.kill(old_worker, signal.SIGKILL)
        wait_for(lambda: process_state(old_worker) in (None, "Z"))
        os.kill(counter, signal.SIGCONT)
        Path(f"/proc/{waiter}/root/tmp/go").touch()
        wait_for(lambda: process_state(waiter) == "Z")
    finally:
        os.kill(keeper, signal.SIGCONT)

    # The exit that happened while no worker ran is reported with its own code.
    wait_for(lambda: exited_with(agent, "waiter", 42))
    assert agent.run("logs", "waiter").stdout == "bye\n"
    new_worker = one_worker(agent, replacing=old_worker)
    assert new_worker != old_worker and supervisor_pid(agent.root) == keeper
    # The counter never stopped, and its output keeps reaching `shoal logs`.
    info = inspect(agent, "counter")
    assert info["state"] == "running" and info["pid"] == counter
    before = len(numbers(agent, "counter"))
    wait_for(lambda: len(numbers(agent, "counter")) > before + 20)

    agent.run("stop", "-t", "10", "counter")
    assert exited_with(agent, "counter", 3)
    seen = numbers(agent, "counter")
    assert seen == list(range(len(seen)))  # no gap, no repeat, no SIGPIPE death
    agent.run("rm", "counter", "waiter")
    assert supervisor_processes(agent.root) == sorted([keeper, new_worker])


def test_killed_keeper(agent: AgentProcess, subreaper: list[int]) -> None:
    agent.run("run", "-d", "--name", "long", IMAGE, "sh", "-c", COUNTER)
    agent.run("run", "-d", "--name", "quits", IMAGE, "sh", "-c", WAITER)
    long, quits = pid_of(agent, "long"), pid_of(agent, "quits")
    subreaper += [long, quits]
    wait_for(lambda: len(numbers(agent, "long")) >= 5)
    keeper = supervisor_pid(agent.root)
    assert keeper is not None
    worker = one_worker(agent)

    os.kill(keeper, signal.SIGKILL)
    # The worker turns itself into the keeper (same pid) and starts a new worker; the containers it
    # had are now ours (the subreaper above), not any keeper's, and they keep running.
    wait_for(lambda: supervisor_pid(agent.root) == worker)
    new_worker = one_worker(agent, replacing=worker)
    assert new_worker != worker
    assert {parent_of(long), parent_of(quits)} == {os.getpid()}
    assert process_state(long) in ("R", "S") and process_state(quits) in ("R", "S")

    # Their exits are still reported with their own codes: read from the zombie's /proc/PID/stat
    # (or, once reaped, from the pidfd on Linux >= 6.15) by the new worker.
    Path(f"/proc/{quits}/root/tmp/go").touch()
    wait_for(lambda: exited_with(agent, "quits", 42))
    before = len(numbers(agent, "long"))
    wait_for(lambda: len(numbers(agent, "long")) > before + 20)
    agent.run("stop", "-t", "10", "long")
    assert exited_with(agent, "long", 3)
    seen = numbers(agent, "long")
    assert seen == list(range(len(seen)))

    # A container started now is the new keeper's child: fully protected again.
    agent.run("run", "-d", "--name", "fresh", IMAGE, "sleep", "300")
    assert parent_of(pid_of(agent, "fresh")) == worker
    agent.run("rm", "-f", "long", "quits", "fresh")
    assert supervisor_processes(agent.root) == sorted([worker, new_worker])


def test_agent_and_worker_killed_together(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "survivor", IMAGE, "sh", "-c", COUNTER)
    survivor = pid_of(agent, "survivor")
    wait_for(lambda: len(numbers(agent, "survivor")) >= 5)
    keeper = supervisor_pid(agent.root)
    assert keeper is not None
    old_worker = one_worker(agent)

    agent.kill9()
    os.kill(old_worker, signal.SIGKILL)
    # The keeper starts a new worker by itself; the container never notices.
    new_worker = one_worker(agent, replacing=old_worker)
    assert new_worker != old_worker
    assert process_state(survivor) in ("R", "S")

    agent.start()
    info = inspect(agent, "survivor")
    assert info["state"] == "running" and info["pid"] == survivor
    assert supervisor_pid(agent.root) == keeper and one_worker(agent) == new_worker
    before = len(numbers(agent, "survivor"))
    wait_for(lambda: len(numbers(agent, "survivor")) > before + 20)
    agent.run("stop", "-t", "10", "survivor")
    assert exited_with(agent, "survivor", 3)
    agent.run("rm", "survivor")
