"""Per-process kernel attributes a launcher sets on itself: child subreaper, no_new_privs, dumpability,
hostname, inherited file descriptors and signal dispositions.

Everything here is safe between ``fork()`` and ``execve()`` in a single-threaded Python process.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable

from agent.linux import syscalls

# Dispositions a Python parent leaves behind that must not leak into a container: Python ignores
# SIGPIPE and SIGXFSZ at startup, and ignored signals stay ignored across execve.
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def set_child_subreaper() -> None:
    """Orphaned descendants are re-parented to us rather than to the host's init (idempotent)."""
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1, what="set child subreaper")


def set_no_new_privs() -> None:
    """execve can no longer grant privileges (setuid bits, file capabilities)."""
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1, what="set no_new_privs")


def set_undumpable() -> None:
    """Nobody without CAP_SYS_PTRACE may look into this process until its next ``execve``.

    With ``PR_SET_DUMPABLE`` 0 the kernel refuses ``ptrace`` and every ``/proc/PID`` file that checks
    ptrace access (``environ``, ``mem``, ``maps``, ``exe``, ``cwd``, ``root``, ``fd/*``, ``fdinfo/*``,
    ``ns/*``) to anyone else, a root with fewer capabilities included. It survives ``fork`` and changes
    of credentials, and ``execve`` resets it for the new program, so set it before a process that still
    holds the host's state (its environment, its interpreter, its descriptors) becomes visible in a
    container, and the container's command starts dumpable as usual.
    """
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0, what="set dumpable 0")


def is_dumpable() -> bool:
    return syscalls.prctl(syscalls.PR_GET_DUMPABLE, what="get dumpable") == 1


def set_hostname(name: str) -> None:
    syscalls.sethostname(name)


def close_fds_except(keep: Iterable[int], *, limit: int) -> None:
    """Close every fd >= 3 except ``keep`` (close_range under the hood, so cheap even for big limits)."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, limit)


def reset_signals() -> None:
    """Default disposition for every signal and an empty mask, as a freshly exec'd program expects."""
    for sig in signal.valid_signals():
        if sig in _UNCATCHABLE:
            continue
        with contextlib.suppress(OSError, ValueError):  # glibc-reserved realtime signals
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def join_cgroups(files: Iterable[str]) -> None:
    """Move the calling (single-threaded) process into each cgroup: ``"0"`` into each file.

    ``"0"`` means "the caller" to the kernel, in ``cgroup.procs`` and in v1's ``tasks`` alike; with
    ``tasks`` it lets the kernel skip a slow global lock (see ``Cgroup.join_files``). Safe after fork
    (only os calls); errors name the file.
    """
    for path in files:
        with syscalls.described(f"join cgroup {path}"):
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
