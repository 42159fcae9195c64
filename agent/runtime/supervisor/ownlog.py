"""The supervisor's own log lines (``ROOT/supervisor.log``, its stderr): written so that they never raise.

The keeper and the worker parent every container, and the log they write to sits on the agent's root,
which a container can fill. A ``print(..., flush=True)`` to a full disk raises ``OSError(ENOSPC)``; from
inside an error handler that used to take the whole supervisor down (issue 12, finding 1). So a line
goes out as one ``write(2)`` on fd 2, and a failed write is counted instead of raised: the next line that
gets through is preceded by how many were dropped and why. Nothing is buffered in user space, so a line
written just before the process dies is in the file.

Standard library only, and no import the keeper does not already pay for: the keeper uses it.
"""

from __future__ import annotations

import os
import time

_FD = 2


class OwnLog:
    """One process's log writer; ``dropped`` counts lines lost to write errors since the last success."""

    __slots__ = ("dropped", "fd", "last_error", "role")

    def __init__(self, role: str, *, fd: int = _FD) -> None:
        self.role = role
        self.fd = fd
        self.dropped = 0
        self.last_error = ""

    def line(self, message: str) -> None:
        """Write ``message`` as one stamped line; never raises."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        head = f"{stamp} {self.role}[{os.getpid()}]: "
        text = head + message + "\n"
        if self.dropped:
            text = (f"{head}{self.dropped} earlier log line(s) were dropped ({self.last_error})\n" + text)
        data = text.encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as err:
            self.dropped += 1
            self.last_error = err.strerror or str(err)
            return
        self.dropped = 0


__all__ = ["OwnLog"]
