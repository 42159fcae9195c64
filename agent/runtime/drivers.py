"""What the container runtime drives, as small interfaces: the supervisor, images, the network.

``ContainerRuntime`` and its executor talk to the world only through these Protocols (and
``agent.cgroups.manager.CgroupManager`` for cgroups), so the runtime can be unit-tested with in-memory
fakes (``tests/unit/runtime/fakes.py``) and the real implementations stay where they are:
``agent.runtime.supervisor_client.SupervisorClient``, ``agent.images.store.ImageStore`` +
``agent.images.pull.Puller``, ``agent.network.manager.NetworkManager``.

Blocking or not: ``Supervisor`` and ``Network`` methods that do I/O are coroutines; ``ImageSource``
methods block (they read the image store's files or pull from a registry) and are called through
``asyncio.to_thread``; ``Network.attachment`` is a lookup in memory, safe on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import Protocol

from agent.images.store import Image
from agent.network.manager import Attachment
from agent.network.ports import PortMapping
from agent.runtime.plan import LaunchPlan
from agent.runtime.supervisor_client import ExitEvent, RunningInfo, StartResult


class Supervisor(Protocol):
    """One connection to the process that parents containers. Every method fails with ``ShoalError``
    once the connection is lost (``connected`` is then False); the runtime reconnects."""

    @property
    def connected(self) -> bool: ...

    async def start(self, container_id: str, *, directory: Path, plan: LaunchPlan, log_max_bytes: int,
                    log_max_files: int) -> StartResult:
        """Launch ``plan``; ``LaunchError`` (with ``kind``) if it could not start, run.json then says so."""

    async def kill(self, container_id: str, signal: int) -> bool:
        """Signal the container's pid 1 if alive; False if it is not (nothing was sent)."""

    async def list_running(self) -> dict[str, RunningInfo]: ...

    def events(self) -> AsyncIterator[ExitEvent]:
        """Exit events (run.json and the log are complete when one arrives) until the connection ends."""

    async def close(self) -> None: ...


# Finds the supervisor of the agent's root, spawning one if none runs.
SupervisorConnector = Callable[[], Awaitable[Supervisor]]


class ImageSource(Protocol):
    """Images on this host, and pulling them. Blocking: call through ``asyncio.to_thread``."""

    def resolve(self, ref: str) -> Image:
        """``NotFound`` if no image matches ``ref``."""

    def layer_paths(self, image: Image) -> list[Path]:
        """The unpacked layer directories, bottom-most first."""

    def pull(self, ref: str) -> Image:
        """Pull ``ref`` from its registry; ``FailedPrecondition`` if this agent has no registry access."""


class Network(Protocol):
    """Bridge networking (an agent started with ``--subnet``)."""

    async def attach(self, container_id: str, *, publish: Iterable[PortMapping] = ()) -> Attachment: ...

    async def detach(self, container_id: str) -> bool: ...

    def attachment(self, container_id: str) -> Attachment | None:
        """The recorded attachment, from memory (no I/O)."""

    async def reconcile(self, live_ids: Collection[str]) -> list[str]:
        """Free the network of every container not in ``live_ids``; returns their ids."""


__all__ = ["ImageSource", "Network", "Supervisor", "SupervisorConnector"]
