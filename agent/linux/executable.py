"""Finding and exec'ing a container's command: ``$PATH`` lookup inside the container root and the
classification of exec failures into "not found" (exit 127) and "not executable" (exit 126).

Lookup follows Go's ``exec.LookPath`` as runc uses it, so messages match what Docker users know:
``executable file not found in $PATH: "nosuch"``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandNotFound(FileNotFoundError):
    """No executable file by that name in any ``$PATH`` directory."""


@dataclass(frozen=True)
class ExecFailure:
    """Why a command could not be started: ``kind`` as ``LaunchError.kind``, and the shell's exit code."""

    kind: str  # "not-found" | "not-executable"
    exit_code: int
    message: str


def env_to_mapping(env: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["K=V", ...]`` → dict; a later duplicate wins, an entry without ``=`` is an empty value."""
    result: dict[str, str] = {}
    for entry in env:
        key, _, value = entry.partition("=")
        result[key] = value
    return result


def resolve(name: str, *, env: Mapping[str, str]) -> str:
    """The path to exec for ``name``: as given if it contains a slash, else the first executable
    regular file in ``$PATH`` (the container's, or Docker's default when unset)."""
    if not name:
        raise CommandNotFound(errno.ENOENT, 'executable file not found in $PATH: ""')
    if "/" in name:
        return name
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        candidate = f"{directory or '.'}/{name}"
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise CommandNotFound(errno.ENOENT, f'executable file not found in $PATH: "{name}"')


def classify(name: str, exc: OSError) -> ExecFailure:
    """Turn a failed lookup or ``execve`` of ``name`` into a user-facing failure."""
    if isinstance(exc, CommandNotFound):
        return ExecFailure("not-found", 127, str(exc.strerror))
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    message = f'exec "{name}": {reason}'
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return ExecFailure("not-found", 127, message)
    return ExecFailure("not-executable", 126, message)
