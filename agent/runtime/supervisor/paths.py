"""Where the supervisor of one agent root keeps its files (for the agent's client, the worker and tests).

``supervisor.pid`` is flocked for the whole life of the process that owns the root — the keeper — and
holds its pid (empty once it has gone). The lock lives on the file's inode, so the file is never removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.runtime import supervisor


@dataclass(frozen=True)
class SupervisorPaths:
    """The files of the supervisor of agent root ``root``."""

    root: Path

    @property
    def socket(self) -> Path:
        return self.root / supervisor.SOCKET_NAME

    @property
    def pidfile(self) -> Path:
        return self.root / supervisor.PIDFILE_NAME

    @property
    def lock(self) -> Path:
        """Held by clients while they connect-or-spawn, so concurrent spawns start one supervisor."""
        return self.root / supervisor.LOCK_NAME

    @property
    def log(self) -> Path:
        return self.root / supervisor.LOG_NAME
