"""A launcher without namespaces for supervisor tests: runs the plan's argv on the host.

It keeps the real launcher's contract (``agent.runtime.launch.launch``): an intermediate process starts
the command and reports its pid, the adopter is called while the intermediate still parents it, and
only then does the intermediate exit, so the command is re-parented to the caller's subreaper ancestor
(the supervisor's keeper). stdout/stderr go to the given fds, stdin is /dev/null, and exec failures
raise LaunchError with the real launcher's kinds.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

from agent.errors import LaunchError
from agent.runtime.plan import LaunchPlan


def launch(plan: LaunchPlan, *, stdout_fd: int, stderr_fd: int, timeout: float = 10.0,
           adopter: Callable[[int, int], None] | None = None) -> int:
    env = dict(item.split("=", 1) for item in plan.env)
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:  # pragma: no cover - runs in the child
        os.close(report_r)
        os.close(go_w)
        try:
            pid = os.posix_spawnp(
                plan.argv[0], list(plan.argv), env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
                    (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
                ],
                setsid=True,
            )
        except OSError as err:
            os.write(report_w, b"E %d" % err.errno)
            os._exit(1)
        os.write(report_w, b"P %d" % pid)
        os.close(report_w)
        if os.read(go_r, 1) != b"g":
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os._exit(0)
    os.close(report_w)
    os.close(go_r)
    try:
        report = os.read(report_r, 64)
        kind, _, value = report.partition(b" ")
        if kind != b"P":
            code = int(value) if value else errno.EIO
            if code == errno.ENOENT:
                raise LaunchError(f"{plan.argv[0]}: command not found", kind="not-found")
            if code in (errno.EACCES, errno.ENOEXEC):
                raise LaunchError(f"{plan.argv[0]}: not executable", kind="not-executable")
            raise LaunchError(f"{plan.argv[0]}: {os.strerror(code)}", kind="setup")
        pid = int(value)
        pidfd = os.pidfd_open(pid)
        try:
            if adopter is not None:
                try:
                    adopter(pid, pidfd)
                except Exception as err:
                    raise LaunchError(f"handing the container over: {err}", kind="setup") from None
            os.write(go_w, b"g")
        finally:
            os.close(pidfd)
        return pid
    finally:
        os.close(report_r)
        os.close(go_w)
        os.waitpid(intermediate, 0)
