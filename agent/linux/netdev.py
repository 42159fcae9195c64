"""Network interface flags through ioctl, for the one thing the launcher needs: bringing ``lo`` up.

A fresh network namespace has its loopback down; without it a program cannot even reach itself on
127.0.0.1 (Docker, runc and CNI all bring it up). An ioctl on any socket of the namespace does it
without netlink or a subprocess, so it is safe right after fork.
"""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH14x"  # struct ifreq: name, then ifr_flags in the union (40 bytes in all)


def set_up(name: str) -> None:
    """Set IFF_UP on interface ``name`` of the calling thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, name.encode(), 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(_IFREQ, name.encode(), flags | IFF_UP))
