"""A launcher without namespaces for supervisor tests: posix_spawn the plan's argv on the host.

It keeps the real launcher's contract: the caller becomes a child subreaper, stdout/stderr go to the
given fds, stdin is /dev/null, exec failures raise LaunchError with the same kinds.
"""

from __future__ import annotations

import ctypes
import errno
import os

from agent.errors import LaunchError
from agent.runtime.plan import LaunchPlan

_PR_SET_CHILD_SUBREAPER = 36


def launch(plan: LaunchPlan, *, stdout_fd: int, stderr_fd: int, timeout: float = 10.0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    env = dict(item.split("=", 1) for item in plan.env)
    try:
        return os.posix_spawnp(
            plan.argv[0], list(plan.argv), env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
                (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
            ],
            setsid=True,
        )
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise LaunchError(f"{plan.argv[0]}: command not found", kind="not-found") from err
        if err.errno in (errno.EACCES, errno.ENOEXEC):
            raise LaunchError(f"{plan.argv[0]}: not executable", kind="not-executable") from err
        raise LaunchError(f"{plan.argv[0]}: {err.strerror}", kind="setup") from err
