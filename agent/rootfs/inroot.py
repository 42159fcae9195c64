"""Resolving a path inside an image's layers, the way the container will see it, never on the host.

The agent reads a few files of a container's root before anything is mounted (``/etc/passwd`` and
``/etc/group`` for ``--user`` and ``exec -u``). Every symlink on the way belongs to the image author: an
absolute one, or a chain of ``..``, must mean what it means inside the container, not on the host
(issue 12, finding 6). ``resolve`` walks the path one component at a time as the kernel's
``openat2(RESOLVE_IN_ROOT)`` and runc's securejoin do: ``..`` stops at the root, a symlink's target is read
(never followed by the kernel) and resolved again from the root or from its directory, and after 40
symlinks the lookup fails with ELOOP. It walks the *merged* view, though: each component is looked up in
the layers top-most first, honouring whiteouts (a 0/0 character device hides what is below), opaque
directories, and a non-directory hiding a lower directory, as overlayfs does — so a symlink in one layer
finds its target in another, as it will in the container. That is why ``openat2`` alone cannot do this: it
confines a walk to one directory, and an image's symlinks cross layers.

Every open is relative to a directory descriptor with ``O_NOFOLLOW``, so even a layer that changes
underneath (a container's writable layer) can at worst yield another file of that layer, never a host one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import InvalidArgument

MAX_SYMLINKS = 40  # the kernel's limit (MAXSYMLINKS) for one path walk
MAX_FILE_BYTES = 16 << 20  # a passwd or group file: bigger is an attack on the agent's memory
OPAQUE_XATTR = "trusted.overlay.opaque"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: should the file be swapped for a FIFO after the check, opening it must not hang the agent.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


@dataclass(frozen=True)
class Found:
    """Where a path of the merged view really is: ``parts`` below ``layer``, with no symlink among them
    (``mode`` is the entry's own, from ``lstat``)."""

    layer: Path
    parts: tuple[str, ...]
    mode: int


class _Walk:
    """Directory descriptors of one lookup, by (layer index, directory parts); closed together."""

    def __init__(self, layers: Sequence[Path]) -> None:
        self.layers = list(layers)
        self._fds: dict[tuple[int, tuple[str, ...]], int | None] = {}
        self._opaque: dict[int, bool] = {}
        self._stop: dict[tuple[int, tuple[str, ...]], bool] = {}

    def close(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)
        self._fds.clear()

    def dir_fd(self, index: int, parts: tuple[str, ...]) -> int | None:
        """``parts`` opened as a directory in layer ``index``; None if it is missing there. Sets
        ``stops_below(index, parts)`` when lower layers must not contribute to it."""
        key = (index, parts)
        if key in self._fds:
            return self._fds[key]
        if not parts:
            fd: int | None = os.open(self.layers[index], _DIR_FLAGS)
            self._stop[key] = False
        else:
            parent = self.dir_fd(index, parts[:-1])
            stop = self._stop.get((index, parts[:-1]), False)
            fd = None
            if parent is not None:
                try:
                    fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    # A file, symlink or whiteout here hides any directory of that name below.
                    stop = True
            self._stop[key] = stop
        if fd is not None and not self._stop[key]:
            self._stop[key] = _is_opaque(fd)
        self._fds[key] = fd
        return fd

    def stops_below(self, index: int, parts: tuple[str, ...]) -> bool:
        return self._stop.get((index, parts), False)

    def entry(self, directory: tuple[str, ...], name: str) -> tuple[int, os.stat_result] | None:
        """The entry ``name`` of the merged directory ``directory``: (layer index, its lstat), or None."""
        for index in range(len(self.layers)):
            fd = self.dir_fd(index, directory)
            if fd is not None:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    pass
                else:
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                        return None  # a whiteout
                    return index, st
            if self.stops_below(index, directory):
                return None
        return None

    def readlink(self, index: int, directory: tuple[str, ...], name: str) -> str:
        fd = self.dir_fd(index, directory)
        assert fd is not None
        return os.readlink(name, dir_fd=fd)


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve(layers: Sequence[Path], path: str) -> Found | None:
    """What the container would find at ``path`` (symlinks followed, inside the image): None if nothing
    is there. Raises ``InvalidArgument`` on a symlink loop."""
    walk = _Walk(layers)
    try:
        return _resolve(walk, path)
    finally:
        walk.close()


def _resolve(walk: _Walk, path: str) -> Found | None:
    current: tuple[str, ...] = ()
    pending = _components(path)
    pending.reverse()  # a stack: the next component is last
    links = 0
    while pending:
        name = pending.pop()
        if name == "..":
            current = current[:-1]  # `..` of the root is the root
            continue
        found = walk.entry(current, name)
        if found is None:
            return None
        index, st = found
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise InvalidArgument(f"{_shown(path)}: too many levels of symbolic links in the image")
            target = walk.readlink(index, current, name)
            if target.startswith("/"):
                current = ()
            pending.extend(reversed(_components(target)))
            continue
        if not pending:
            return Found(layer=walk.layers[index], parts=(*current, name), mode=st.st_mode)
        if not stat.S_ISDIR(st.st_mode):
            return None  # ENOTDIR: nothing can be below a file
        current = (*current, name)
    return Found(layer=walk.layers[0], parts=(), mode=stat.S_IFDIR) if walk.layers else None


def _shown(path: str) -> str:
    return "/" + "/".join(_components(path))


def read_file(layers: Sequence[Path], path: str, *, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of the regular file the container would see at ``path``; None if there is none.

    Raises ``InvalidArgument`` if it is anything but a regular file (a device node from a layer could be
    the host's disk, a FIFO would block the agent), if it is bigger than ``limit``, or on a symlink loop.
    """
    found = resolve(layers, path)
    if found is None:
        return None
    shown = _shown(path)
    if not stat.S_ISREG(found.mode):
        raise InvalidArgument(f"the image's {shown} is not a regular file")
    fd = _open_found(found, shown)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # changed since the lookup
            raise InvalidArgument(f"the image's {shown} is not a regular file")
        if st.st_size > limit:
            raise InvalidArgument(f"the image's {shown} is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise InvalidArgument(f"the image's {shown} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _open_found(found: Found, shown: str) -> int:
    """Opens ``found`` again with O_NOFOLLOW at every step: its path holds no symlink by construction, so
    meeting one means the layer changed, and the open fails instead of leaving the layer."""
    fd = os.open(found.layer, _DIR_FLAGS)
    try:
        for part in found.parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(found.parts[-1], _FILE_FLAGS, dir_fd=fd)
    except OSError as err:
        raise InvalidArgument(f"the image's {shown} changed while it was read ({err.strerror})") from None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


__all__ = ["MAX_FILE_BYTES", "MAX_SYMLINKS", "Found", "read_file", "resolve"]
