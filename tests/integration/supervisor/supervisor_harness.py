"""Helpers for supervisor integration tests: plans for host commands, bounded waits, process checks."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from agent.runtime.plan import LaunchPlan, OverlayRootfs
from agent.runtime.supervisor.paths import SupervisorPaths

FAKE_LAUNCHER = f"{Path(__file__).with_name('fake_launcher.py')}:launch"
T = TypeVar("T")


def host_plan(container_id: str, *argv: str) -> LaunchPlan:
    return LaunchPlan(
        container_id=container_id, rootfs=OverlayRootfs(lower=(), upper="", work="", target=""),
        argv=argv, env=("PATH=/usr/sbin:/usr/bin:/sbin:/bin",),
    )


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (reaping it if it is our child)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open or before the read
        return True


def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def async_wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def supervisor_pid(root: Path) -> int | None:
    try:
        text = SupervisorPaths(root).pidfile.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def worker_pids(root: Path) -> list[int]:
    """The keeper's live worker processes (normally exactly one)."""
    keeper = supervisor_pid(root)
    if keeper is None:
        return []
    return [pid for pid in children_of(keeper) if _is_worker(pid)]


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone before the open or before the read
        return False
    return b"agent.runtime.supervisor.worker" in argv and state != "Z"


def container_dir(root: Path, cid: str) -> Path:
    path = root / "containers" / cid
    path.mkdir(parents=True, exist_ok=True)
    return path


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):  # gone before the open or before the read
        return []


def process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone before the open or before the read
        return None


def _idle_in_epoll(pid: int) -> bool:
    with open(f"/proc/{pid}/wchan") as f:
        return process_state(pid) == "S" and "epoll" in f.read()


def wait_idle(pid: int) -> None:
    """Until ``pid`` (a worker whose inputs have gone quiet) sleeps in epoll_wait. A write to a pipe
    wakes the reader before the write returns, and a woken task is not sleeping, so once the writers
    are stopped this means the worker has nothing in flight: a SIGKILL now cannot land between its
    read(2) of a pipe and its write(2) to the log — the one window docs/architecture.md names."""
    assert wait_until(lambda: _idle_in_epoll(pid))


def pipes_of(pid: int) -> list[str]:
    """The pipes ``pid`` holds, by inode (one entry per descriptor). ``pid`` may close descriptors while
    they are listed (the keeper releasing pipes is what callers wait for): one closed between the listing
    and its readlink is simply no longer held."""
    pipes = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except FileNotFoundError:
            continue
        if link.startswith("pipe:"):
            pipes.append(link)
    return sorted(pipes)


def supervisor_processes(root: Path) -> list[int]:
    """Live keeper and worker processes of ``root`` (by command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = str(root).encode() in argv and any(a.startswith(b"agent.runtime.supervisor") for a in argv)
        if ours and process_state(int(entry.name)) not in (None, "Z"):
            found.append(int(entry.name))
    return sorted(found)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])
