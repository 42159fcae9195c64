"""The free space a pull or an import must leave on the agent's disk before it may begin.

Images share a filesystem with everything the agent must keep writing while containers run: their
logs, their run records and exits, the agent's records and events. A pull that fills the disk leaves all
of that failing (issue 12, finding 1), so a pull or import refuses to *start* while free space is
already under the reserve (``shoal-agent serve --min-free-space``, default the smaller of 1 GiB and 5%
of the filesystem, like the kubelet's image-gc thresholds are a share of the disk). It is a gate, not a
promise: a pull that then fills the disk mid-way still fails cleanly (``ResourceExhausted``) and leaves
nothing behind in the store.

``check_free_space`` is the only function with I/O (one ``statvfs``); ``required`` is the decision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ResourceExhausted


@dataclass(frozen=True)
class FreeSpaceReserve:
    """``min_bytes`` and/or ``min_fraction`` of the filesystem; with both, the smaller applies (so a
    small test disk is not refused everything by a 1 GiB floor). Neither (or 0) turns the check off."""

    min_bytes: int | None = 1 << 30
    min_fraction: float | None = 0.05

    def required(self, total: int) -> int:
        """Bytes that must be free on a filesystem of ``total`` bytes."""
        candidates = []
        if self.min_bytes is not None:
            candidates.append(self.min_bytes)
        if self.min_fraction is not None:
            candidates.append(int(total * self.min_fraction))
        return max(0, min(candidates)) if candidates else 0

    def describe(self) -> str:
        parts = []
        if self.min_bytes is not None:
            parts.append(_size(self.min_bytes))
        if self.min_fraction is not None:
            parts.append(f"{self.min_fraction:.0%}")
        return " or ".join(parts) + (" (whichever is smaller)" if len(parts) == 2 else "")


OFF = FreeSpaceReserve(min_bytes=None, min_fraction=None)


def check_free_space(path: Path, reserve: FreeSpaceReserve, *, what: str) -> None:
    """Raise ``ResourceExhausted`` naming the free space and the reserve if ``path``'s filesystem has
    less free than ``reserve`` requires; ``what`` is the operation ("pull of busybox:1")."""
    if reserve == OFF:
        return
    st = os.statvfs(path)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    needed = reserve.required(total)
    if free < needed:
        raise ResourceExhausted(
            f"refusing to start the {what}: only {_size(free)} free of {_size(total)} on the agent's disk "
            f"({path}), under the {_size(needed)} kept free for containers' logs and records "
            f"(--min-free-space {reserve.describe()}); free some space (shoal image prune, shoal rm of "
            "stopped containers) and try again"
        )


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


__all__ = ["OFF", "FreeSpaceReserve", "check_free_space"]
