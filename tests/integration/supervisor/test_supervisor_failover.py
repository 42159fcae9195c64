"""Killing parts of the supervisor while containers run: the worker, the keeper, or the worker for SIGTERM.

Containers are host commands from the fake launcher, which keeps the real launcher's contract (the init
is handed to the keeper before it is re-parented), so what is tested is the supervisor itself: who
reaps, who holds the log pipes, what is handed over, and what the next worker reports.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime import logs, runfile
from agent.runtime.supervisor import exitstatus
from agent.runtime.supervisor.worker import LOST_EXIT_CODE
from agent.runtime.supervisor_client import ExitEvent, SupervisorClient, connect_or_spawn
from tests.integration.supervisor.supervisor_harness import (
    FAKE_LAUNCHER,
    async_wait_until,
    children_of,
    container_dir,
    host_plan,
    parent_of,
    pipes_of,
    process_gone,
    process_state,
    run,
    supervisor_pid,
    supervisor_processes,
    wait_idle,
    wait_until,
    worker_pids,
)

pytestmark = pytest.mark.integration

LOG = {"log_max_bytes": 1 << 20, "log_max_files": 3}
# Counts on stdout until SIGTERM, then exits 3 (the trap runs once the current sleep ends).
COUNTER = "trap 'exit 3' TERM; i=0; while :; do echo $i; i=$((i+1)); sleep 0.01; done"


def _waiter(flag: Path, code: int) -> str:
    return f"while [ ! -e {flag} ]; do sleep 0.01; done; echo bye; exit {code}"


async def _connect(root: Path) -> SupervisorClient:
    return await connect_or_spawn(root, launcher=FAKE_LAUNCHER)


def _collect(client: SupervisorClient) -> tuple[asyncio.Queue[ExitEvent], asyncio.Task[None]]:
    queue: asyncio.Queue[ExitEvent] = asyncio.Queue()

    async def pump() -> None:
        async for event in client.events():
            queue.put_nowait(event)

    return queue, asyncio.create_task(pump())


async def _next_exit(events: asyncio.Queue[ExitEvent], cid: str) -> ExitEvent:
    while True:
        event = await asyncio.wait_for(events.get(), 10)
        if event.container_id == cid:
            return event


def _numbers(directory: Path) -> list[int]:
    return [int(e.text) for e in logs.read_entries(directory) if e.stream == "stdout" and e.text.isdigit()]


_PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def subreaper() -> Iterator[list[int]]:
    """Make the test process the subreaper above the supervisor, so containers orphaned by a dead
    keeper come to us (this machine's init never reaps them). Yields a list: pids to reap at the end."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    to_reap: list[int] = []
    try:
        yield to_reap
    finally:
        for pid in to_reap:
            wait_until(lambda pid=pid: process_gone(pid))  # type: ignore[misc]
        assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) == 0


def test_a_killed_worker_is_replaced_and_loses_nothing(root: Path) -> None:
    flag = root / "go"

    async def before() -> tuple[int, int, int]:
        client = await _connect(root)
        worker = await client.hello()
        counter = await client.start("counter", directory=container_dir(root, "counter"),
                                     plan=host_plan("counter", "sh", "-c", COUNTER), **LOG)
        waiter = await client.start("waiter", directory=container_dir(root, "waiter"),
                                    plan=host_plan("waiter", "sh", "-c", _waiter(flag, 42)), **LOG)
        assert wait_until(lambda: len(_numbers(root / "containers" / "counter")) >= 5)
        await client.close()
        return worker, counter.pid, waiter.pid

    old_worker, counter, waiter = run(before())
    keeper = supervisor_pid(root)
    assert keeper is not None
    # The inits are the keeper's children, not the worker's.
    assert {counter, waiter} <= set(children_of(keeper))

    # Quiet the counter so the worker has nothing in flight, then stop the keeper (no reaping, no new
    # worker) and kill the worker: from here until SIGCONT, no worker runs.
    os.kill(counter, signal.SIGSTOP)
    assert wait_until(lambda: process_state(counter) == "T")
    wait_idle(old_worker)
    os.kill(keeper, signal.SIGSTOP)
    try:
        os.kill(old_worker, signal.SIGKILL)
        assert wait_until(lambda: process_state(old_worker) in (None, "Z"))
        # Output written now goes into a pipe only the keeper still holds open: no SIGPIPE, no loss.
        os.kill(counter, signal.SIGCONT)
        flag.touch()  # the waiter exits 42 while no worker runs
        assert wait_until(lambda: process_state(waiter) == "Z")
        seen_while_down = len(_numbers(root / "containers" / "counter"))
    finally:
        os.kill(keeper, signal.SIGCONT)

    async def after() -> None:
        client = await _connect(root)  # waits in the keeper's backlog for the new worker
        new_worker = await client.hello()
        assert new_worker != old_worker
        assert supervisor_pid(root) == keeper
        assert worker_pids(root) == [new_worker]
        assert supervisor_processes(root) == sorted([keeper, new_worker])
        # The exit that happened while no worker ran was recorded before the new worker served us.
        record = runfile.read_run_file(root / "containers" / "waiter")
        assert record is not None and (record.pid, record.exit_code, record.lost) == (waiter, 42, None)
        assert [e.text for e in logs.read_entries(root / "containers" / "waiter")] == [b"bye"]
        running = await client.list_running()
        assert set(running) == {"counter"} and running["counter"].pid == counter
        # Each holds the counter's two pipes once, and nothing of the finished waiter leaked.
        assert wait_until(lambda: pipes_of(keeper) == pipes_of(new_worker) and len(pipes_of(keeper)) == 2)
        # Output keeps flowing into the log through the new worker.
        assert wait_until(lambda: len(_numbers(root / "containers" / "counter")) > seen_while_down + 20)
        events, pump = _collect(client)
        assert await client.kill("counter", signal.SIGTERM)
        event = await _next_exit(events, "counter")
        assert (event.pid, event.exit_code, event.signal, event.lost) == (counter, 3, None, None)
        await client.close()
        pump.cancel()

    run(after())
    numbers = _numbers(root / "containers" / "counter")
    assert numbers == list(range(len(numbers)))  # every line, in order, none twice
    assert wait_until(lambda: process_gone(keeper))


def test_sigterm_restarts_the_worker_with_its_containers(root: Path) -> None:
    async def scenario() -> None:
        client = await _connect(root)
        old_worker = await client.hello()
        started = await client.start("sleeper", directory=container_dir(root, "sleeper"),
                                     plan=host_plan("sleeper", "sleep", "100"), **LOG)
        os.kill(old_worker, signal.SIGTERM)
        await client.close()
        assert wait_until(lambda: process_gone(old_worker))
        client = await _connect(root)
        assert await client.hello() != old_worker
        assert (await client.list_running())["sleeper"].pid == started.pid
        events, pump = _collect(client)
        assert await client.kill("sleeper", signal.SIGKILL)
        assert (await _next_exit(events, "sleeper")).exit_code == 137
        await client.close()
        pump.cancel()

    run(scenario())
    log_text = (root / "supervisor.log").read_text()
    assert "SIGTERM" in log_text and "handing over 1 containers" in log_text


def test_a_killed_keeper_is_replaced_by_its_worker(root: Path, subreaper: list[int]) -> None:
    flag = root / "go"

    async def before() -> tuple[int, int, int, int]:
        client = await _connect(root)
        worker = await client.hello()
        counter = await client.start("counter", directory=container_dir(root, "counter"),
                                     plan=host_plan("counter", "sh", "-c", COUNTER), **LOG)
        waiter = await client.start("waiter", directory=container_dir(root, "waiter"),
                                    plan=host_plan("waiter", "sh", "-c", _waiter(flag, 42)), **LOG)
        quitter = await client.start("quitter", directory=container_dir(root, "quitter"),
                                     plan=host_plan("quitter", "sleep", "100"), **LOG)
        assert wait_until(lambda: len(_numbers(root / "containers" / "counter")) >= 5)
        await client.close()
        return worker, counter.pid, waiter.pid, quitter.pid

    worker, counter, waiter, quitter = run(before())
    subreaper += [counter, waiter, quitter]
    keeper = supervisor_pid(root)
    assert keeper is not None
    os.kill(keeper, signal.SIGKILL)
    assert wait_until(lambda: process_gone(keeper))  # our child (we spawned it): reaped here
    # The worker re-executes itself as the keeper (same pid) and starts a new worker.
    assert wait_until(lambda: supervisor_pid(root) == worker and len(worker_pids(root)) == 1)
    (new_worker,) = worker_pids(root)
    assert supervisor_processes(root) == sorted([worker, new_worker])
    # The old containers' parent is now us (the subreaper above the dead keeper), not the new keeper.
    assert {parent_of(pid) for pid in (counter, waiter, quitter)} == {os.getpid()}

    async def after() -> None:
        client = await _connect(root)
        assert await client.hello() == new_worker
        assert {cid: info.pid for cid, info in (await client.list_running()).items()} == {
            "counter": counter, "waiter": waiter, "quitter": quitter}
        events, pump = _collect(client)

        # An orphan's exit, still a zombie (we do not reap it yet): its status comes from /proc.
        flag.touch()
        event = await _next_exit(events, "waiter")
        assert (event.pid, event.exit_code, event.lost) == (waiter, 42, None)

        # An orphan reaped before the worker looks: the status only the kernel's pidfd still has
        # (Linux >= 6.15), or reported as lost. The worker is stopped so the reap comes first.
        os.kill(new_worker, signal.SIGSTOP)
        try:
            os.kill(quitter, signal.SIGKILL)
            os.waitpid(quitter, 0)
        finally:
            os.kill(new_worker, signal.SIGCONT)
        event = await _next_exit(events, "quitter")
        if _kernel_keeps_exit_status():
            assert (event.exit_code, event.signal, event.lost) == (137, signal.SIGKILL, None)
        else:
            assert event.exit_code == LOST_EXIT_CODE and event.lost
            record = runfile.read_run_file(root / "containers" / "quitter")
            assert record is not None and record.lost and record.exit_code == LOST_EXIT_CODE

        # Killing an orphan goes through its pidfd; its output kept flowing through the handover.
        assert await client.kill("counter", signal.SIGTERM)
        assert (await _next_exit(events, "counter")).exit_code == 3
        numbers = _numbers(root / "containers" / "counter")
        assert numbers == list(range(len(numbers)))

        # A container started now is the new keeper's child again: real statuses, no orphan.
        started = await client.start("fresh", directory=container_dir(root, "fresh"),
                                     plan=host_plan("fresh", "sh", "-c", "exit 5"), **LOG)
        event = await _next_exit(events, "fresh")
        assert (event.pid, event.exit_code) == (started.pid, 5)
        await client.close()
        pump.cancel()

    run(after())
    assert wait_until(lambda: process_gone(worker))  # the new keeper exits once idle


def _kernel_keeps_exit_status() -> bool:
    """Whether this kernel answers PIDFD_INFO_EXIT for a reaped child of ours."""
    child = subprocess.Popen(["true"])
    pidfd = os.pidfd_open(child.pid)
    try:
        child.wait()
        return exitstatus.reaped_status(pidfd) is not None
    finally:
        os.close(pidfd)


def test_a_burst_of_starts_keeps_every_hand_over(root: Path) -> None:
    # More starts than the keeper's channel can queue (about 170 hand-overs fit in its socket buffer):
    # none may stall on it, and every exit and release must still be matched.
    count = 250

    async def scenario() -> None:
        client = await _connect(root)
        for i in range(count):
            await client.start(f"b{i}", directory=container_dir(root, f"b{i}"),
                               plan=host_plan(f"b{i}", "sleep", "100"), **LOG)
        keeper = supervisor_pid(root)
        assert keeper is not None
        events, pump = _collect(client)
        for i in range(count):
            assert await client.kill(f"b{i}", signal.SIGKILL)
        # Every exit is matched (each hand-over was read before its pid could be reaped) ...
        for _ in range(count):
            assert (await asyncio.wait_for(events.get(), 30)).exit_code == 137
        # ... and every release, so the keeper holds none of the pipes any more.
        assert await async_wait_until(lambda: not pipes_of(keeper))
        await client.close()
        pump.cancel()

    run(scenario())
