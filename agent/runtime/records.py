"""A container's files on disk: what the daemon records, and loading them all back after a restart.

Each container has a directory ``<root>/containers/<id>/`` holding three records, each with one writer:

* ``config.json`` (the daemon's, written once at create): identity, the caller's spec, what create
  prepared from the image, and the fence of the request that created it;
* ``run.json`` (the supervisor's, ``agent.runtime.runfile``): pid, exit;
* ``status.json`` (the daemon's): what only the daemon decides and must remember across its own restarts —
  restart count and backoff, "stopped by the user", a pending restart, health.

A container's state is *derived* from these, so there is no second writer to keep in sync, and an exit
that happens while the daemon is down is picked up on restart. The daemon's records are written with
``agent.durable.write_file`` (fsync + rename), off the event loop.

``load_all`` (blocking: call it in a thread) reads every container directory at start. A directory
without ``config.json`` is a create that died half-way and is deleted; one whose ``config.json`` cannot
be read is moved to ``<root>/quarantine/`` with a warning, so one corrupt file costs one container, not
the agent's start.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent import durable
from agent.errors import ShoalError
from agent.runtime import runfile
from agent.runtime.health import HealthResult, HealthStatus

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
# Directories a create is still filling; renamed to the container's id once its config.json is written.
STAGING_PREFIX = ".creating-"


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


@dataclass(frozen=True)
class ContainerRecord:
    """config.json: identity, the user's spec (as a JSON-able dict), what create prepared, and who
    created it (``owner``/``epoch`` of the request's fence; empty/0 when unfenced)."""

    id: str
    name: str
    spec: dict[str, Any] = field(hash=False)
    prepared: Prepared
    created_at: float = field(default_factory=time.time)
    owner: str = ""
    epoch: int = 0

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
            created_at=raw["created_at"], owner=raw.get("owner", ""), epoch=int(raw.get("epoch", 0)),
        )


@dataclass(frozen=True)
class ContainerStatus:
    """status.json: the daemon's own bookkeeping about a container (never the supervisor's facts).

    ``exit_handled`` is the ``finished_at`` of the last exit the daemon acted on (events emitted,
    restart decided): an exit in run.json with another ``finished_at`` happened while the daemon was
    away and is acted on at recovery. ``kill_reason`` names why the daemon itself killed the container
    (``Unhealthy``, ``Evicted``) so the exit carries that reason (and ``kill_message`` as its error).
    """

    restart_count: int = 0
    backoff_streak: int = 0
    stopped_by_user: bool = False
    next_restart_at: float | None = None
    exit_handled: float | None = None
    kill_reason: str = ""
    kill_message: str = ""  # what the exit's error says about that kill (an eviction's sizes)
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
        known = set(cls.__dataclass_fields__)
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
    durable.write_file(directory / STATUS_FILE, status.to_json())


def write_config(directory: Path, record: ContainerRecord) -> None:
    durable.write_file(directory / CONFIG_FILE, record.to_json())


@dataclass(frozen=True)
class Loaded:
    """One container as found on disk at start."""

    record: ContainerRecord
    status: ContainerStatus
    run: runfile.RunRecord | None
    run_unreadable: bool = False  # run.json exists but cannot be read: treated as lost


def load_all(containers_dir: Path, *, quarantine_dir: Path) -> list[Loaded]:
    """Every container recorded under ``containers_dir`` (blocking; see the module docstring)."""
    found: list[Loaded] = []
    if not containers_dir.is_dir():
        return found
    for entry in sorted(containers_dir.iterdir()):
        config = entry / CONFIG_FILE
        if entry.name.startswith(STAGING_PREFIX) or not config.is_file():
            # A create that died before publishing its record: nothing refers to it.
            shutil.rmtree(entry, ignore_errors=True)
            continue
        try:
            record = ContainerRecord.from_json(config.read_text())
            if record.id != entry.name:
                raise ValueError(f"it names container {record.id!r}")
        except (OSError, ValueError, KeyError, TypeError) as err:
            try:
                moved = durable.quarantine(entry, into=quarantine_dir)
            except ShoalError as move_err:
                log.error("cannot read %s (%s) nor move it aside: %s; skipping it", config, err, move_err)
                continue
            log.warning("cannot read %s (%s): moved the container's directory to %s; its processes, "
                        "if any, are stopped with the other leftovers", config, err, moved)
            continue
        unreadable = False
        try:
            run = runfile.read_run_file(entry)
        except ShoalError as err:
            log.warning("unreadable run record of %s (%s): it is treated as lost", record.id, err)
            run, unreadable = None, True
        found.append(Loaded(record=record, status=read_status(entry), run=run, run_unreadable=unreadable))
    return found


__all__ = [
    "CONFIG_FILE", "STAGING_PREFIX", "STATUS_FILE", "ContainerRecord", "ContainerStatus", "Loaded",
    "Prepared", "load_all", "read_status", "write_config", "write_status",
]
