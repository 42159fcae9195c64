"""Bytes in each container's writable layer, measured cheaply: a budgeted, resumable walk.

Walking every upper directory every second would make sampling cost grow with the files containers
write. Instead each layer is re-measured at most every ``refresh_seconds``, and one ``advance`` call (one
per sampling interval) stats at most about ``budget_entries`` directory entries across all layers; a walk
that runs out of budget resumes where it stopped at the next call. The number reported is the last
*completed* walk (``None`` before the first finishes), so it is never a half-counted figure. Bytes are
allocated blocks (``st_blocks * 512``) of everything but directories, like ``shoal system df``.

Layers with a storage limit enforced by measurement (``limited``) are re-measured on every call and go
first, so a container past its limit is seen within about one interval. ``invalidate`` (a new run of the
container) discards what was measured before, and ``measured`` gives only a walk begun since, so an
eviction is never decided on a figure from an earlier run.

The upper dir is the container's to change while we walk it, so the walk never resolves a path: it
descends through directory descriptors, each child opened relative to its parent's descriptor with
``O_NOFOLLOW|O_DIRECTORY`` (a directory swapped for a symlink to a host path is refused, never walked),
and entries are ``fstatat``'ed relative to their directory. No file is opened or read. A descriptor is
held while its directory still has subdirectories waiting; a tree shaped to need more than
``max_open_dirs`` of them at once is reported as unmeasurable rather than walked.

Not thread-safe: the sampler calls it from its single worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Dir:
    """An open directory shared by its pending subdirectories; closed when the last is done."""

    __slots__ = ("fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 0


@dataclass
class _Walk:
    pending: list[tuple[_Dir | None, str]]  # (parent, name); (None, path) is the layer's root
    bytes: int = 0
    open_dirs: int = 0

    def close(self) -> None:
        closed: set[int] = set()
        for parent, _ in self.pending:
            if parent is not None and parent.fd not in closed:
                closed.add(parent.fd)
                os.close(parent.fd)
        self.pending.clear()
        self.open_dirs = 0


@dataclass
class _Layer:
    upper: Path
    last_bytes: int | None = None
    fresh: bool = False  # last_bytes comes from a walk begun after the last invalidate()
    unmeasurable: str = ""  # why the last walk could not finish
    next_due: float = 0.0
    walk: _Walk | None = field(default=None, repr=False)


class TooManyOpenDirs(Exception):
    pass


class WritableLayerSizer:
    def __init__(self, *, refresh_seconds: float = 10.0, budget_entries: int = 5000,
                 max_open_dirs: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self._refresh = refresh_seconds
        self._budget = budget_entries
        self._max_open = max_open_dirs
        self._clock = clock
        self._layers: dict[str, _Layer] = {}

    def size(self, key: str) -> int | None:
        """The last completed measurement of ``key``'s layer, ``None`` if none has finished yet."""
        layer = self._layers.get(key)
        return None if layer is None else layer.last_bytes

    def measured(self, key: str) -> int | None:
        """Like ``size``, but only from a walk begun after the last ``invalidate(key)``."""
        layer = self._layers.get(key)
        return layer.last_bytes if layer is not None and layer.fresh else None

    def unmeasurable(self, key: str) -> str:
        """Why ``key``'s last walk could not finish ("" if it did)."""
        layer = self._layers.get(key)
        return "" if layer is None else layer.unmeasurable

    def invalidate(self, key: str) -> None:
        """Forget what was measured of ``key`` for ``measured`` and start a fresh walk when next due."""
        layer = self._layers.get(key)
        if layer is None:
            return
        if layer.walk is not None:
            layer.walk.close()
            layer.walk = None
        layer.fresh, layer.unmeasurable, layer.next_due = False, "", 0.0

    def close(self) -> None:
        for layer in self._layers.values():
            if layer.walk is not None:
                layer.walk.close()
                layer.walk = None

    def advance(self, uppers: Mapping[str, Path], *, limited: Collection[str] = ()) -> int:
        """Track exactly the layers in ``uppers`` (key → upper dir) and spend one round of budget on
        those due — the ``limited`` ones first and on every call, then the rest oldest first; return
        the number of entries processed."""
        for key in list(self._layers):
            if key not in uppers or self._layers[key].upper != uppers[key]:
                self.invalidate(key)
                del self._layers[key]
        for key, upper in uppers.items():
            self._layers.setdefault(key, _Layer(upper=upper))
        now = self._clock()
        budget = self._budget
        # A walk in progress and a never-measured layer both have an old next_due, so they go first.
        due = sorted(((key, layer) for key, layer in self._layers.items()
                      if layer.next_due <= now or key in limited),
                     key=lambda item: (item[0] not in limited, item[1].next_due))
        for key, layer in due:
            if budget <= 0:
                break
            if layer.walk is None:
                layer.walk = _Walk(pending=[(None, str(layer.upper))])
            try:
                budget -= _walk_some(layer.walk, budget, max_open=self._max_open)
            except TooManyOpenDirs:
                layer.walk.close()
                layer.walk = None
                layer.unmeasurable = (f"its directory tree needs more than {self._max_open} directories "
                                      "open at once to walk")
                layer.next_due = now + (0.0 if key in limited else self._refresh)
                continue
            if not layer.walk.pending:
                layer.last_bytes = layer.walk.bytes
                layer.walk = None
                layer.fresh, layer.unmeasurable = True, ""
                layer.next_due = now + self._refresh
        return self._budget - budget


def _walk_some(walk: _Walk, budget: int, *, max_open: int) -> int:
    """Process whole directories from ``walk.pending`` until ``budget`` entries are spent (a directory
    is never split, so one huge directory can overrun the budget once); return entries processed."""
    spent = 0
    while walk.pending and spent < budget:
        parent, name = walk.pending.pop()
        try:
            fd = os.open(name, _OPEN_DIR, dir_fd=parent.fd if parent is not None else None)
        except OSError:
            fd = -1  # removed, or no longer a directory (a symlink now): nothing of it is counted
        finally:
            if parent is not None:
                parent.refs -= 1
                if parent.refs == 0:
                    os.close(parent.fd)
                    walk.open_dirs -= 1
        spent += 1
        if fd < 0:
            continue
        here = _Dir(fd)
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    spent += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            here.refs += 1
                            walk.pending.append((here, entry.name))
                        else:
                            walk.bytes += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue  # removed while we looked
        except OSError:
            pass  # unreadable: count what was seen
        if here.refs == 0:
            os.close(fd)
        else:
            walk.open_dirs += 1
            if walk.open_dirs > max_open:
                raise TooManyOpenDirs
    return spent
