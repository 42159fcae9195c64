"""Small records on disk: the one way Shoal replaces a file, and what it does with one it cannot read.

``write_file`` writes to a temporary file in the same directory (a unique name per writer, so two
processes never share one), fsyncs it, renames it over the target and fsyncs the directory. A reader sees
the old content or the new, never a torn mix; once it returns with ``sync=True`` the new content survives
a host crash too. ``sync=False`` keeps the atomic rename but skips both fsyncs, for records that mean
nothing after a reboot (a container's run record: every container is gone then, and the boot id tells).

Failures are the agent's own exceptions, naming the operation and the path: a full disk (ENOSPC, EDQUOT)
is ``ResourceExhausted`` so callers and the API report it as such; anything else is ``ShoalError``. The
temporary file never outlives a failed write.

``quarantine`` moves an unreadable record (or a directory holding one) aside, so one corrupt file costs
one container, not the agent's start.

This module imports only the standard library and ``agent.errors``: the supervisor uses it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from pathlib import Path

from agent.errors import ResourceExhausted, ShoalError

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def os_error(err: OSError, *, op: str, path: str | os.PathLike[str]) -> ShoalError:
    """``err`` as the agent's exception: ResourceExhausted for a full disk, ShoalError otherwise."""
    reason = err.strerror or str(err)
    if err.errno in _NO_SPACE:
        return ResourceExhausted(f"cannot {op} {os.fspath(path)}: {reason} (free some disk space)")
    return ShoalError(f"cannot {op} {os.fspath(path)}: {reason}")


def write_file(path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o600,
               sync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (and durably with ``sync``); see the module docstring."""
    target = os.fspath(path)
    directory, name = os.path.split(target)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        if sync:
            dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise os_error(err, op="write", path=target) from err


def quarantine(path: str | os.PathLike[str], *, into: str | os.PathLike[str]) -> Path:
    """Move ``path`` (a file or a directory) into the directory ``into`` under a name that says when;
    returns the new path. The caller logs why."""
    source = Path(path)
    dest_dir = Path(into)
    dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = dest_dir / f"{source.name}.{time.strftime('%Y%m%dT%H%M%S')}.{secrets.token_hex(2)}"
    try:
        os.replace(source, dest)
    except OSError as err:
        raise os_error(err, op="quarantine", path=source) from err
    return dest


__all__ = ["os_error", "quarantine", "write_file"]
