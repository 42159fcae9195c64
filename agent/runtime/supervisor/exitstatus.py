"""The exit status of a process we do not parent, learned through its pidfd.

Only a parent can ``wait`` for a status. Once the keeper has died, its containers belong to the host's
init (or a subreaper above us), which reaps them and keeps the status to itself. A pidfd still tells us
*that* the process exited (it turns readable), and the kernel offers two ways to learn *how*:

* while the process is a zombie (exited, not yet reaped), field 52 of ``/proc/PID/stat`` is its wait
  status. The pid cannot be recycled before the reap, so if the pidfd still reaches the process after
  we read the file (``pidfd_send_signal(fd, 0)`` succeeds for a zombie, fails with ESRCH once it is
  reaped), the file was the right process's;
* once it has been reaped, Linux 6.15 and later keep the status with the pidfd
  (``ioctl(PIDFD_GET_INFO)`` with ``PIDFD_INFO_EXIT``).

Between them there is no gap on a recent kernel. On older ones a container reaped before we looked
has an unknown status: the caller reports it as lost rather than invent one.
"""

from __future__ import annotations

import fcntl
import signal
import struct
from collections.abc import Callable

# struct pidfd_info, first published size (include/uapi/linux/pidfd.h): mask at 0, exit_code at 60.
_PIDFD_INFO_SIZE = 64
_PIDFD_INFO_EXIT = 1 << 3
# _IOWR(PIDFS_IOCTL_MAGIC=0xFF, 11, struct pidfd_info)
_PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO_SIZE << 16) | (0xFF << 8) | 11


def reaped_status(pidfd: int) -> int | None:
    """The wait status the kernel kept for a reaped process (Linux >= 6.15), or None (not reaped
    yet, or a kernel without PIDFD_INFO_EXIT)."""
    info = bytearray(_PIDFD_INFO_SIZE)
    struct.pack_into("=Q", info, 0, _PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, info, True)
    except OSError:
        return None  # ENOTTY/EINVAL: no PIDFD_GET_INFO; ESRCH: reaped on a kernel that keeps no status
    (mask,) = struct.unpack_from("=Q", info, 0)
    if not mask & _PIDFD_INFO_EXIT:
        return None
    (status,) = struct.unpack_from("=i", info, 60)
    return int(status)


def zombie_status(pid: int) -> int | None:
    """The wait status in ``/proc/PID/stat`` if PID is a zombie now, else None. Whose zombie it is
    must be checked afterwards (``still_unreaped``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[-1].split()
    # fields[0] is field 3 (state); the exit code is field 52.
    if len(fields) < 50 or fields[0] != b"Z":
        return None
    return int(fields[49])


def still_unreaped(pidfd: int) -> bool:
    """True while the pidfd's process exists, zombie included (signal 0 is only a permission check)."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    return True


def exit_status(pid: int, pidfd: int, *, reaped: Callable[[int], int | None] = reaped_status,
                zombie: Callable[[int], int | None] = zombie_status,
                unreaped: Callable[[int], bool] = still_unreaped) -> int | None:
    """The wait status of exited process ``pid`` (its pidfd has turned readable), or None if it can no
    longer be known. The probes are parameters so the order of the checks can be tested."""
    for _ in range(2):  # a reap between the two checks is caught by the second round
        status = reaped(pidfd)
        if status is not None:
            return status
        status = zombie(pid)
        if status is not None and unreaped(pidfd):
            return status
        if unreaped(pidfd):
            # Not a zombie yet reachable: cannot happen for a pidfd that turned readable, unless it
            # is a zombie whose stat we could not read. Nothing more to learn.
            return None
    return None
