"""What the keeper holds for each container: the pure table behind its exit-status forwarding.

The worker hands the keeper custody of a container (``hold``) *before* the container's init is
re-parented to the keeper, so by the time the keeper reaps a pid, every ``hold`` that could name it is
already queued on the channel: the keeper reads the channel after each reaping pass, then asks
``reaped``. A pid held is a container; any other pid reaped is an orphaned descendant and is dropped.

An entry stays until the worker says it has recorded the exit (``drop``), so an exit reaped while no
worker runs — or sent to a worker that died before recording it — is handed to the next worker with
the container (``entries``). No syscalls here: the keeper closes the descriptors this returns.
"""

from __future__ import annotations


class Entry:
    """One container in custody: its pid 1, the worker's opaque record, and the descriptors."""

    __slots__ = ("blob", "fds", "finished_at", "pid", "status")

    def __init__(self, pid: int, blob: bytes, fds: tuple[int, ...]) -> None:
        self.pid = pid
        self.blob = blob
        self.fds = fds
        self.status: int | None = None  # raw wait status once reaped
        self.finished_at: float | None = None

    @property
    def exited(self) -> bool:
        return self.status is not None


class Custody:
    """Containers in custody, in the order they were handed over (dicts keep insertion order)."""

    def __init__(self) -> None:
        self._entries: dict[int, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, pid: object) -> bool:
        return pid in self._entries

    def hold(self, pid: int, blob: bytes, fds: tuple[int, ...]) -> tuple[int, ...]:
        """Take custody; returns descriptors to close (those of an entry the same pid replaces, which
        cannot happen while the pid is unreaped, but must not leak if it ever does)."""
        old = self._entries.pop(pid, None)
        self._entries[pid] = Entry(pid, blob, fds)
        return old.fds if old is not None else ()

    def drop(self, pid: int) -> tuple[int, ...]:
        """The worker recorded this exit (or gave up a failed launch): returns descriptors to close."""
        entry = self._entries.pop(pid, None)
        return entry.fds if entry is not None else ()

    def reaped(self, pid: int, status: int, finished_at: float) -> Entry | None:
        """Record a reaped pid's status; the entry if it is a container in custody, else None."""
        entry = self._entries.get(pid)
        if entry is None or entry.exited:
            return None
        entry.status = status
        entry.finished_at = finished_at
        return entry

    def entries(self) -> list[Entry]:
        """Everything to hand a new worker, oldest first."""
        return list(self._entries.values())

    def close_all(self) -> tuple[int, ...]:
        """Forget everything; returns every descriptor to close."""
        fds = tuple(fd for entry in self._entries.values() for fd in entry.fds)
        self._entries.clear()
        return fds
