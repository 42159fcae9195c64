"""The run record: ``<container dir>/run.json``, the supervisor's account of one container process.

The supervisor's worker is its only regular writer (the daemon writes it only to declare a container
lost when its whole supervisor — keeper and worker — died). It is rewritten whole, by temp file +
rename, so a reader sees either the old or the new record, never a torn one; fsync is skipped on
purpose because after a host crash every container is gone anyway and the daemon reconciles from
scratch.

Meaning of the fields: ``pid`` is the container's pid 1 on the host (null if it never started);
``exit_code`` is the exit status, or 128 + signal when it was killed, or 127/126/125 when the start
failed (then ``error`` and ``error_kind`` say why and ``started_at`` is null); ``exit_code`` null means
"still running as far as the supervisor knows". ``lost`` (a sentence) marks an exit the supervisor saw
but whose status it could not learn (its keeper had died, and the kernel no longer had the status):
``exit_code`` is then 255, containerd's "unknown exit status", never a guess.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent import durable
from agent.errors import ShoalError

RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunRecord:
    pid: int | None
    started_at: float | None
    exit_code: int | None = None
    signal: int | None = None
    finished_at: float | None = None
    error: str | None = None
    error_kind: str | None = None
    lost: str | None = None

    @property
    def finished(self) -> bool:
        return self.exit_code is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunRecord:
        return cls(
            pid=_opt_int(raw.get("pid")), started_at=_opt_float(raw.get("started_at")),
            exit_code=_opt_int(raw.get("exit_code")), signal=_opt_int(raw.get("signal")),
            finished_at=_opt_float(raw.get("finished_at")),
            error=_opt_str(raw.get("error")), error_kind=_opt_str(raw.get("error_kind")),
            lost=_opt_str(raw.get("lost")),
        )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def write_run_file(directory: Path | str, record: RunRecord) -> None:
    """Replace ``directory/run.json`` atomically (temp file + rename; no fsync, see module docstring).

    A full disk is ``ResourceExhausted`` and leaves no temporary file behind; the supervisor keeps the
    record in memory and tries again (``worker.py``)."""
    # durable's temp names are per writer: the daemon and the supervisor may both write (rarely) at once.
    durable.write_file(os.path.join(directory, RUN_FILE), record.to_json(), sync=False)


def read_run_file(directory: Path | str) -> RunRecord | None:
    """The record in ``directory/run.json``, or None if the container was never started."""
    path = os.path.join(directory, RUN_FILE)
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ShoalError(f"cannot read {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ShoalError(f"cannot read {path}: not a JSON object")
    return RunRecord.from_dict(raw)
