"""In-memory stand-ins for what the runtime drives (``agent.runtime.drivers``, ``CgroupManager``).

They behave like the real ones where the runtime depends on it: the fake supervisor writes run.json the
way the real one does (before replying to a start, and on exit before announcing it), announces exits on
its event stream, and can be told to fail a launch, to hold one until released, or to lose its
connection. Containers are only records here: nothing runs.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.cgroups import manager as cgroups
from agent.errors import LaunchError, NotFound, ShoalError
from agent.images.store import Image, ImageConfig
from agent.network.ports import PortMapping
from agent.runtime import runfile
from agent.runtime.plan import LaunchPlan
from agent.runtime.supervisor_client import ExitEvent, RunningInfo, StartResult

# -- cgroups -------------------------------------------------------------------------------------

@dataclass
class FakeGroup:
    name: str
    limits: cgroups.Limits
    oom: bool = False
    removed: bool = False

    def procs_files(self) -> tuple[str, ...]:
        return (f"/fake/{self.name}/cgroup.procs",)

    def join_files(self) -> tuple[str, ...]:
        return self.procs_files()

    def paths(self) -> dict[str, str]:
        return {"memory": f"/fake/{self.name}"}

    def apply(self, limits: cgroups.Limits) -> None:
        self.limits = limits

    def pids(self) -> list[int]:
        return []

    def oom_killed(self) -> bool:
        return self.oom

    def kill_all(self, *, timeout_s: float = 5.0) -> None:
        pass

    def remove(self) -> None:
        self.removed = True


class FakeCgroups:
    version = 1
    supports_device_rules = True

    def __init__(self) -> None:
        self.groups: dict[str, FakeGroup] = {}
        self.created: list[str] = []

    def create(self, name: str, *, limits: cgroups.Limits,
               devices: Sequence[cgroups.DeviceRule]) -> FakeGroup:
        group = self.groups[name] = FakeGroup(name, limits)
        self.created.append(name)
        return group

    def open(self, name: str) -> FakeGroup | None:
        group = self.groups.get(name)
        return group if group is not None and not group.removed else None

    def list_children(self, parent: str) -> list[str]:
        return [n.rpartition("/")[2] for n, g in self.groups.items()
                if n.startswith(parent + "/") and not g.removed]

    def remove_parent_if_empty(self, parent: str) -> bool:
        return not self.list_children(parent)


# -- images --------------------------------------------------------------------------------------

class FakeImages:
    """One image, ``busybox``, whose single layer is an empty directory. ``pull`` can be held until
    ``release_pull`` (it runs in a worker thread) or made to fail."""

    def __init__(self, layer_dir: Path) -> None:
        layer_dir.mkdir(parents=True, exist_ok=True)
        self.layer_dir = layer_dir
        self.image = Image(id="sha256:" + "b" * 64, manifest_digest=None, repo_tags=("busybox:latest",),
                           created=None, size=0, layers=("sha256:" + "c" * 64,), architecture="amd64",
                           os="linux", config=ImageConfig(cmd=("sh",)))
        self.pull_gate: threading.Event | None = None
        self.pull_started = threading.Event()
        self.pull_error: ShoalError | None = None
        self.pulls = 0

    def resolve(self, ref: str) -> Image:
        if ref.startswith("busybox"):
            return self.image
        raise NotFound(f"no such image: {ref}")

    def layer_paths(self, image: Image) -> list[Path]:
        return [self.layer_dir]

    def pull(self, ref: str) -> Image:
        self.pulls += 1
        self.pull_started.set()
        if self.pull_gate is not None:
            assert self.pull_gate.wait(10), "test never released the pull"
        if self.pull_error is not None:
            raise self.pull_error
        return self.resolve(ref)


# -- network -------------------------------------------------------------------------------------

class FakeNetwork:
    def __init__(self) -> None:
        self.attached: dict[str, tuple[PortMapping, ...]] = {}

    async def attach(self, container_id: str, *, publish: Iterable[PortMapping] = ()) -> Any:
        self.attached[container_id] = tuple(publish)
        return None

    async def detach(self, container_id: str) -> bool:
        return self.attached.pop(container_id, None) is not None

    def attachment(self, container_id: str) -> None:
        return None

    async def reconcile(self, live_ids: Collection[str]) -> list[str]:
        gone = [c for c in self.attached if c not in live_ids]
        for c in gone:
            del self.attached[c]
        return gone


# -- supervisor ----------------------------------------------------------------------------------

@dataclass
class _Proc:
    pid: int
    directory: Path
    started_at: float
    # What happens on each signal: the exit code it dies with, or None to ignore it.
    on_signal: Callable[[int], int | None] = field(default=lambda sig: 128 + sig)


class FakeSupervisor:
    """A connection to a pretend supervisor. ``exit(id, code)`` makes a container exit now."""

    _pids = itertools.count(1000)

    def __init__(self, world: SupervisorWorld) -> None:
        self.world = world
        self._events: asyncio.Queue[ExitEvent | None] = asyncio.Queue()
        self._lost = False
        world.connections.append(self)

    @property
    def connected(self) -> bool:
        return not self._lost

    def _check(self) -> None:
        if self._lost:
            raise ShoalError("lost the connection to the supervisor")

    async def start(self, container_id: str, *, directory: Path, plan: LaunchPlan, log_max_bytes: int,
                    log_max_files: int) -> StartResult:
        self._check()
        self.world.starts.append(container_id)
        if self.world.launch_gate is not None:
            self.world.launch_waiting.set()
            await self.world.launch_gate.wait()
        self._check()
        failure = self.world.fail_next_launch.pop(container_id, None)
        if failure is not None:
            runfile.write_run_file(directory, runfile.RunRecord(
                pid=None, started_at=None, exit_code=127 if failure == "not-found" else 125,
                finished_at=time.time(), error=f"launch failed: {failure}", error_kind=failure))
            raise LaunchError(f"launch failed: {failure}", kind=failure)
        pid = next(self._pids)
        started = time.time()
        behaviour = self.world.signal_behaviour.get(container_id, lambda sig: 128 + sig)
        self.world.alive[container_id] = _Proc(pid=pid, directory=directory, started_at=started,
                                               on_signal=behaviour)
        runfile.write_run_file(directory, runfile.RunRecord(pid=pid, started_at=started))
        return StartResult(pid=pid, started_at=started)

    async def kill(self, container_id: str, signal: int) -> bool:
        self._check()
        self.world.signals.append((container_id, signal))
        proc = self.world.alive.get(container_id)
        if proc is None:
            return False
        code = proc.on_signal(signal)
        if code is not None:
            self.world.exit(container_id, code, signal=signal if code == 128 + signal else None)
        return True

    async def list_running(self) -> dict[str, RunningInfo]:
        self._check()
        return {cid: RunningInfo(pid=p.pid, started_at=p.started_at) for cid, p in self.world.alive.items()}

    async def events(self) -> AsyncIterator[ExitEvent]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    async def close(self) -> None:
        self.lose()

    def lose(self) -> None:
        if not self._lost:
            self._lost = True
            self._events.put_nowait(None)

    def announce(self, event: ExitEvent) -> None:
        if not self._lost:
            self._events.put_nowait(event)


class SupervisorWorld:
    """What outlives a connection: the pretend processes. ``connect`` is the runtime's connector."""

    def __init__(self) -> None:
        self.alive: dict[str, _Proc] = {}
        self.connections: list[FakeSupervisor] = []
        self.starts: list[str] = []
        self.signals: list[tuple[str, int]] = []
        self.fail_next_launch: dict[str, str] = {}
        self.signal_behaviour: dict[str, Callable[[int], int | None]] = {}
        self.launch_gate: asyncio.Event | None = None
        self.launch_waiting = asyncio.Event()
        self.connect_gate: asyncio.Event | None = None

    async def connect(self) -> FakeSupervisor:
        if self.connect_gate is not None:
            await self.connect_gate.wait()
        return FakeSupervisor(self)

    @property
    def current(self) -> FakeSupervisor:
        return self.connections[-1]

    def exit(self, container_id: str, code: int, *, signal: int | None = None) -> ExitEvent:
        """The container's pid 1 exits: run.json first, then the announcement (as the real one does)."""
        proc = self.alive.pop(container_id)
        finished = time.time()
        runfile.write_run_file(proc.directory, runfile.RunRecord(
            pid=proc.pid, started_at=proc.started_at, exit_code=code, signal=signal, finished_at=finished))
        event = ExitEvent(container_id=container_id, pid=proc.pid, exit_code=code, signal=signal,
                          finished_at=finished)
        for conn in self.connections:
            conn.announce(event)
        return event


__all__ = ["FakeCgroups", "FakeImages", "FakeNetwork", "FakeSupervisor", "SupervisorWorld"]
