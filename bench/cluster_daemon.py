"""The long-running processes the cluster benchmark starts, and what they may leave on the machine.

A ``Daemon`` is one process (etcd, a scheduler, an agent, a dockerd) started inside one of the
benchmark's network namespaces with ``nsenter --net=`` (which execs, so the pid we hold is the daemon's
own), its stdout and stderr in a log file, stopped by that pid with SIGTERM and, after a grace, SIGKILL.
``wait_for`` is the bounded poll every set-up and tear-down step uses, failing with the logs of the
daemons involved. ``remove_cgroups`` removes the cgroups a daemon created under a parent name of the
benchmark's: at the top of every hierarchy (the agent's way) and under the benchmark's own cgroup in
it (runc's way with a relative ``--cgroup-parent``: this process may sit in a non-root memory cgroup).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Daemon:
    name: str
    argv: list[str]
    log: Path
    netns: str = ""  # a name under /run/netns; empty: the benchmark's own namespace
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", *self.argv] if self.netns else self.argv
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, **self.env},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, *, grace: float = 20.0) -> list[str]:
        """SIGTERM, then SIGKILL after ``grace``; returns what went wrong (teardown never raises)."""
        if self.process is None or self.process.poll() is not None:
            return []
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
            return []
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return [f"{self.name} (pid {self.process.pid}) ignored SIGTERM for {grace:.0f} s; killed"]


def wait_for(
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    daemons: Sequence[Daemon] = (),
) -> float:
    """Poll ``check`` until it is true; returns the seconds it took. Raises with the daemons' logs when
    ``timeout`` passes or one of them died."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - start
        dead = [d for d in daemons if not d.alive()]
        if dead or time.monotonic() - start > timeout:
            why = f"{', '.join(d.name for d in dead)} exited" if dead else f"not after {timeout:.0f} s"
            logs = "\n".join(f"--- {d.name} ({d.log})\n{d.tail()}" for d in daemons)
            raise RuntimeError(f"waiting for {what}: {why}\n{logs}")
        time.sleep(interval)


def run_checked(argv: Sequence[str], *, timeout: float = 120.0) -> str:
    """Run a short command to completion; its stdout, or an error with its stderr."""
    result = subprocess.run(argv, capture_output=True, check=False, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace').strip()[-800:]}"
        )
    return result.stdout.decode()


def dispose(work: Path, *, keep: bool, problems: Sequence[str], label: str = "problem") -> None:
    """A benchmark's end: its work directory removed (or kept, and said so, with ``--keep-temp``), and
    what tear-down had to force printed to stderr."""
    if keep:
        print(f"kept {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    for problem in problems:
        print(f"{label}: {problem}", file=sys.stderr)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per hierarchy directory name (v1 controllers, ``unified`` for v2)."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else ["unified"]:
            own[controller.removeprefix("name=")] = path
    return own


def cgroup_dirs(name: str) -> list[Path]:
    """Every existing cgroup directory named ``name`` at the top of a hierarchy or under our own cgroup."""
    own = _own_cgroups()
    found = []
    for hierarchy in sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir()):
        for base in {hierarchy, hierarchy / own.get(hierarchy.name, "/").lstrip("/")}:
            if (base / name).is_dir():
                found.append(base / name)
    return found


def kill_cgroup_processes(name: str) -> int:
    """SIGKILL every process in a cgroup under ``name`` (wherever ``cgroup_dirs`` finds one) and wait,
    bounded, until they are gone; returns how many there were."""
    tops = cgroup_dirs(name)
    stray = {
        int(pid) for top in tops for procs in top.rglob("cgroup.procs") for pid in procs.read_text().split()
    }
    for pid in stray:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (
        stray
        and any(p.read_text().strip() for top in tops for p in top.rglob("cgroup.procs"))
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    return len(stray)


def remove_cgroups(name: str) -> list[str]:
    """rmdir every cgroup under ``name`` (deepest first) wherever ``cgroup_dirs`` finds one, after
    SIGKILLing any process still in one (a container orphaned by a supervisor that had to be killed);
    returns what it had to kill and what could not be removed."""
    leftovers = []
    killed = kill_cgroup_processes(name)
    if killed:
        leftovers.append(f"killed {killed} processes left in the {name} cgroups")
    for top in cgroup_dirs(name):
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        try:
            top.rmdir()
        except OSError as err:
            leftovers.append(f"cgroup {top}: {err.strerror}")
    return leftovers


def unmount_under(directory: Path) -> list[str]:
    """Lazily unmount whatever is still mounted below ``directory``, deepest first; returns the
    mount points it had to unmount."""
    prefix = str(directory.resolve()) + "/"
    targets = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target.startswith(prefix):
            targets.append(target)
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)
    return targets


__all__ = [
    "Daemon",
    "cgroup_dirs",
    "dispose",
    "kill_cgroup_processes",
    "pid_alive",
    "remove_cgroups",
    "run_checked",
    "unmount_under",
    "wait_for",
]
