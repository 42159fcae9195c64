"""A container's layered root filesystem, described rather than mounted.

Image layers (shared, read-only) + the container's init layer (read-only once written) + a private upper
and work dir → an ``OverlayRootfs`` description. The launcher mounts it *inside the container's own mount
namespace*, so the mount vanishes with the container and the host never holds a stray overlay mount —
even if the agent and supervisor are both killed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OverlayRootfs:
    """An overlay root: ``lower`` is top-most first (init layer, then image layers top to bottom)."""

    lower: tuple[str, ...]
    upper: str
    work: str
    target: str  # the (empty) directory the overlay is mounted on, then pivot_root'ed into


@dataclass(frozen=True)
class ContainerDirs:
    """The per-container directories under ``<root>/containers/<id>/``."""

    base: Path

    @property
    def init(self) -> Path:
        return self.base / "init"

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def rootfs(self) -> Path:
        return self.base / "rootfs"

    @property
    def config(self) -> Path:
        return self.base / "config.json"

    @property
    def log(self) -> Path:
        return self.base / "ctr.log"

    def create(self) -> None:
        # 0700: container files (upper layer, logs with its output) are not for other host users.
        self.base.mkdir(mode=0o700, parents=False, exist_ok=True)
        for d in (self.init, self.upper, self.work, self.rootfs):
            d.mkdir(mode=0o755, exist_ok=True)


def describe_rootfs(*, image_layers: list[Path], dirs: ContainerDirs) -> OverlayRootfs:
    """Overlay lower dirs are top-most first: the init layer shadows the image."""
    return OverlayRootfs(
        lower=(str(dirs.init), *(str(p) for p in image_layers)),
        upper=str(dirs.upper),
        work=str(dirs.work),
        target=str(dirs.rootfs),
    )


def upper_size_bytes(upper: Path) -> int:
    """Bytes written by the container (allocated blocks of its upper layer).

    ``fwalk`` descends through directory descriptors and never follows a symlink, so a container that
    swaps a directory for a link to a host path mid-walk cannot make the agent walk the host."""
    total = 0
    for _dirpath, _dirnames, filenames, dir_fd in os.fwalk(upper):
        for name in filenames:
            try:
                total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total
