"""What a new worker makes of the keeper's handover: the pure rebuild of its table of containers.

For each container in custody the worker wrote a ``ContainerRecord`` (the keeper stores it as an opaque
blob) when it launched it; the keeper hands back the record, the descriptors and — if the container's
init was reaped while no worker could record it — its wait status. ``plan_adoption`` sorts what arrives:

* ``running``: supervise again (pump its pipes, wait for its exit);
* ``exited``: record now (drain what its pipes still hold, write run.json, release it) before serving
  any client, so an agent that reconnects finds the exit in run.json with its real exit code;
* ``rejected``: a record that cannot be read, or an older entry for a container id that appears again
  (cannot happen: a container is released before its exit is announced, and only then restarted —
  but it must not overwrite the newer run's run.json if it ever does). Rejected entries are released
  without touching run.json; one still running is killed, because nothing could supervise it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ContainerRecord:
    """What the worker needs to supervise a container it did not launch."""

    id: str
    directory: str
    started_at: float
    log_max_bytes: int
    log_max_files: int
    # True once the init is no longer the keeper's child (the keeper that parented it died): its exit
    # is then learned through its pidfd (``exitstatus``), not from the keeper.
    orphan: bool = False

    def to_blob(self) -> bytes:
        # Not dataclasses.asdict: it deep-copies, and this runs on every start.
        return json.dumps({
            "id": self.id, "directory": self.directory, "started_at": self.started_at,
            "log_max_bytes": self.log_max_bytes, "log_max_files": self.log_max_files, "orphan": self.orphan,
        }, separators=(",", ":")).encode()

    def as_orphan(self) -> ContainerRecord:
        return replace(self, orphan=True)

    @classmethod
    def from_blob(cls, blob: bytes) -> ContainerRecord:
        """ValueError if ``blob`` is not a record."""
        try:
            raw: Any = json.loads(blob)
            record = cls(
                id=_typed(raw["id"], str), directory=_typed(raw["directory"], str),
                started_at=float(_typed(raw["started_at"], (int, float))),
                log_max_bytes=_typed(raw["log_max_bytes"], int),
                log_max_files=_typed(raw["log_max_files"], int),
                orphan=_typed(raw.get("orphan", False), bool),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a container record: {blob[:80]!r}") from err
        if not record.id or record.log_max_bytes <= 0 or record.log_max_files <= 0:
            raise ValueError(f"not a container record: {blob[:80]!r}")
        return record


def _typed(value: Any, kind: type[Any] | tuple[type[Any], ...]) -> Any:
    # bool is an int in Python; a JSON true is not a size.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"{value!r} is not {kind}")
    return value


@dataclass(frozen=True)
class Handed:
    """One container as the keeper hands it over (an ``A`` message)."""

    pid: int
    status: int | None
    finished_at: float | None
    blob: bytes
    fds: tuple[int, ...]  # pidfd, stdout read end, stderr read end


@dataclass(frozen=True)
class Adoption:
    pid: int
    record: ContainerRecord
    fds: tuple[int, ...]
    status: int | None
    finished_at: float | None


@dataclass(frozen=True)
class Rejected:
    handed: Handed
    reason: str


@dataclass(frozen=True)
class AdoptionPlan:
    running: list[Adoption]
    exited: list[Adoption]
    rejected: list[Rejected]


def plan_adoption(handed: Iterable[Handed]) -> AdoptionPlan:
    """Sort a handover (oldest custody first) into running, exited and rejected."""
    current: dict[str, Adoption] = {}
    rejected: list[Rejected] = []
    for item in handed:
        try:
            record = ContainerRecord.from_blob(item.blob)
        except ValueError as err:
            rejected.append(Rejected(item, str(err)))
            continue
        adoption = Adoption(pid=item.pid, record=record, fds=item.fds, status=item.status,
                            finished_at=item.finished_at)
        previous = current.get(record.id)
        if previous is not None:
            # Keep the one still running, else the newer: the other is a stale run of the same id.
            keep, stale = ((previous, adoption) if previous.status is None and adoption.status is not None
                           else (adoption, previous))
            current[record.id] = keep
            rejected.append(Rejected(_as_handed(stale), f"a newer run of container {record.id} exists"))
            continue
        current[record.id] = adoption
    running = [a for a in current.values() if a.status is None]
    exited = [a for a in current.values() if a.status is not None]
    return AdoptionPlan(running=running, exited=exited, rejected=rejected)


def _as_handed(adoption: Adoption) -> Handed:
    return Handed(pid=adoption.pid, status=adoption.status, finished_at=adoption.finished_at,
                  blob=adoption.record.to_blob(), fds=adoption.fds)
