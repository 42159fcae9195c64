"""Container lifecycle: the states, the one table of legal transitions, and the on-disk record.

The daemon owns ``config.json`` (what was asked for and how it was prepared); the supervisor owns
``run.json`` (pid, exit). A container's state is *derived* from both, so there is no second writer to
keep in sync and an exit that happens while the daemon is down is picked up on restart.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from agent.errors import FailedPrecondition


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
