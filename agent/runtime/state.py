"""Container lifecycle: the states, the one table of legal transitions, and the on-disk record.

The daemon owns ``config.json`` (what was asked for and how it was prepared); the supervisor owns
``run.json`` (pid, exit). A container's state is *derived* from both, so there is no second writer to
keep in sync and an exit that happens while the daemon is down is picked up on restart. What only the
daemon decides and must remember across its own restarts — restart count and backoff, "stopped by the
user", a pending restart, health — lives in a third, daemon-owned file, ``status.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from agent.errors import FailedPrecondition
from agent.runtime.health import HealthResult, HealthStatus

log = logging.getLogger(__name__)


class State(Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    REMOVING = "removing"


# Each edge, and why it exists. Anything else is a bug or a user asking for the impossible.
TRANSITIONS: dict[State, frozenset[State]] = {
    # start succeeded / start failed (recorded as an exit with reason StartFailed) / rm
    State.CREATED: frozenset({State.RUNNING, State.EXITED, State.REMOVING}),
    # the process exited, was killed or was lost with its supervisor
    State.RUNNING: frozenset({State.EXITED}),
    # start again (docker start on an exited container) / rm
    State.EXITED: frozenset({State.RUNNING, State.REMOVING}),
    State.REMOVING: frozenset(),
}


def check_transition(container_id: str, current: State, target: State) -> None:
    if target not in TRANSITIONS[current]:
        raise FailedPrecondition(
            f"container {container_id[:12]} is {current.value}; cannot move it to {target.value}"
        )


@dataclass(frozen=True)
class Prepared:
    """Everything resolved at create time; stored in config.json and never changed afterwards."""

    image_id: str
    image_ref: str
    argv: tuple[str, ...]
    env: tuple[str, ...]
    working_dir: str
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    hostname: str
    lower_dirs: tuple[str, ...]
    upper_dir: str
    work_dir: str
    rootfs_dir: str
    cgroup_name: str
    stop_signal: int


@dataclass
class ContainerRecord:
    """config.json: identity, the user's spec (as a JSON-able dict) and what create prepared."""

    id: str
    name: str
    spec: dict[str, Any]
    prepared: Prepared
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ContainerRecord:
        raw = json.loads(text)
        prepared: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in raw["prepared"].items()
        }
        return cls(
            id=raw["id"], name=raw["name"], spec=raw["spec"], prepared=Prepared(**prepared),
            created_at=raw["created_at"],
        )


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


STATUS_FILE = "status.json"


@dataclass(frozen=True)
class ContainerStatus:
    """status.json: the daemon's own bookkeeping about a container (never the supervisor's facts).

    ``exit_handled`` is the ``finished_at`` of the last exit the daemon acted on (events emitted,
    restart decided): an exit in run.json with another ``finished_at`` happened while the daemon was
    away and is acted on at recovery. ``kill_reason`` names why the daemon itself killed the container
    (``Unhealthy``) so the exit carries that reason.
    """

    restart_count: int = 0
    backoff_streak: int = 0
    stopped_by_user: bool = False
    next_restart_at: float | None = None
    exit_handled: float | None = None
    kill_reason: str = ""
    health: HealthStatus = HealthStatus.NONE
    health_failing_streak: int = 0
    health_log: tuple[HealthResult, ...] = ()

    def to_json(self) -> str:
        raw = asdict(self)
        raw["health"] = self.health.value
        return json.dumps(raw, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ContainerStatus:
        raw: dict[str, Any] = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in raw.items() if k in known}  # a newer agent's extra keys are ignored
        data["health"] = HealthStatus(data.get("health", "none"))
        data["health_log"] = tuple(HealthResult(**r) for r in data.get("health_log", ()))
        return cls(**data)


def read_status(directory: Path) -> ContainerStatus:
    """The container's status.json, or the defaults if there is none (created by an older agent)."""
    try:
        return ContainerStatus.from_json((directory / STATUS_FILE).read_text())
    except FileNotFoundError:
        return ContainerStatus()
    except (ValueError, TypeError) as err:
        # Written atomically, so only a bug or a hand edit gets here; defaults are safe (no restart).
        log.warning("ignoring unreadable %s: %s", directory / STATUS_FILE, err)
        return ContainerStatus()


def write_status(directory: Path, status: ContainerStatus) -> None:
    write_atomic(directory / STATUS_FILE, status.to_json())
