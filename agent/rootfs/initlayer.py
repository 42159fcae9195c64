"""The per-container init layer: /etc/hostname, /etc/hosts, /etc/resolv.conf and mount points.

It sits between the image and the container's writable layer, as Docker's ``-init`` layer does, so every
container gets its own identity files without touching the shared image layers, and the directories the
launcher mounts on (/proc, /sys, /dev) exist even in images that lack them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_MOUNT_POINTS = ("proc", "sys", "dev", "tmp", "etc")
_LOOPBACK_NS = re.compile(r"^\s*nameserver\s+(127\.|::1\b)")


def write_init_layer(init_dir: Path, *, hostname: str, host_network: bool, address: str | None = None,
                     host_resolv_conf: Path = Path("/etc/resolv.conf")) -> None:
    """``address``: the container's own address on a bridge network, so its name resolves to it."""
    for d in _MOUNT_POINTS:
        (init_dir / d).mkdir(mode=0o755, exist_ok=True)
    (init_dir / "tmp").chmod(0o1777)
    etc = init_dir / "etc"
    _write(etc, "hostname", hostname + "\n")
    write_hosts(init_dir, hostname=hostname, address=address)
    _write(etc, "resolv.conf", _resolv_conf(host_resolv_conf, host_network=host_network))


def _write(directory: Path, name: str, text: str) -> None:
    """Replace ``directory/name`` with ``text``, mode 0644, refusing (ELOOP) to follow a symlink at
    either the directory or the file."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        view = memoryview(text.encode())
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o644)  # exact whatever the umask: the container's users read these
    finally:
        os.close(fd)


def _resolv_conf(source: Path, *, host_network: bool) -> str:
    try:
        text = source.read_text()
    except OSError:
        return ""
    if host_network:
        return text
    # A loopback resolver on the host is not reachable from the container's own network namespace.
    return "".join(
        line + "\n" for line in text.splitlines() if not _LOOPBACK_NS.match(line)
    )


def write_hosts(init_dir: Path, *, hostname: str, address: str | None) -> None:
    """``/etc/hosts``: the container's name resolves to its bridge address (or 127.0.1.1 without one).

    Rewritten before each start on a bridge, when the address is known; the init layer is a lower
    layer of an overlay that is not mounted then, so changing it is safe.
    """
    _write(init_dir / "etc", "hosts",
           "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
           f"{address or '127.0.1.1'}\t{hostname}\n")
