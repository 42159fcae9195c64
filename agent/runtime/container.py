"""One container as the daemon sees it while it runs: its record, its lifecycle and the runtime's handles.

``ContainerRuntime`` owns these (one per container) and replaces ``lc`` through the core; the executor
reads them and keeps the timer and task handles. Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from pathlib import Path

from agent.runtime import core, records
from agent.runtime.fencing import Fence
from agent.runtime.spec import ContainerSpec, spec_from_dict
from agent.runtime.state import State
from agent.runtime.supervisor_client import ExitEvent
from agent.usage.targets import SampleTarget


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


class Hold:
    """A caller attached to a container's run: while any hold is on it, auto-removal waits. Made before
    the container exists, so a caller that goes away while the create still runs releases what it never
    got to hold."""

    def __init__(self) -> None:
        self.container: Container | None = None
        self.released = False

    def hold(self, ctr: Container) -> None:
        if self.released:
            return  # its caller is already gone
        self.container = ctr
        ctr.holds.add(self)
        ctr.unheld.clear()

    def release(self) -> None:
        self.released = True
        ctr = self.container
        if ctr is not None and self in ctr.holds:
            ctr.holds.discard(self)
            if not ctr.holds:
                ctr.unheld.set()


@dataclass(eq=False)
class Container:
    """The daemon's live view of one container: its record, its lifecycle, and the runtime's handles."""

    record: records.ContainerRecord
    lc: core.Lifecycle = field(default_factory=core.Lifecycle)
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    # Set while it is not running (exited, restarting, removed): what stop and wait wait for.
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # Serializes launches and removal: a launch in flight is waited out, never abandoned.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    restart_timer: asyncio.TimerHandle | None = None
    health_task: asyncio.Task[None] | None = None
    # An exit reported while its launch was still being applied; handled right after.
    pending_exit: ExitEvent | None = None
    sample_target: SampleTarget | None = field(default=None, repr=False)  # cached per run
    # Callers attached to its run (``shoal run`` in the foreground): auto-removal waits until none is
    # left, so the last of its output and its exit status reach them first.
    holds: set[Hold] = field(default_factory=set)
    unheld: asyncio.Event = field(default_factory=_set_event)
    # This run's storage limit is a project quota the kernel enforces (else the sampler measures it).
    storage_quota: bool = False

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @functools.cached_property
    def spec(self) -> ContainerSpec:
        return spec_from_dict(self.record.spec)

    @functools.cached_property
    def policy(self) -> core.Policy:
        spec = self.spec
        return core.Policy(restart=spec.restart, auto_remove=spec.auto_remove, health=spec.health)

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        return dict(self.spec.labels)

    @property
    def directory(self) -> Path:
        return Path(self.record.prepared.rootfs_dir).parent

    @property
    def fence(self) -> Fence:
        return Fence(owner=self.record.owner, epoch=self.record.epoch)

    @property
    def state(self) -> State:
        return self.lc.state

    @property
    def exit(self) -> core.ExitStatus | None:
        return self.lc.exit


__all__ = ["Container", "Hold"]
