"""Linux capabilities: names to numbers, and the process's bounding, ambient and E/P/I sets.

Uses the v3 ``capget``/``capset`` header (two 32-bit words per set, 64 capabilities) and ``prctl`` for
the bounding and ambient sets. Which sets a container ends up with (Docker's rules) is decided in
``agent.linux.credentials``; this module only reads and writes them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from dataclasses import dataclass

from agent.linux import syscalls

# include/uapi/linux/capability.h
NUMBERS: dict[str, int] = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

_VERSION_3 = 0x20080522
_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32),
    ]


_DataPair = _Data * 2
syscalls.libc.capget.argtypes = [ctypes.POINTER(_Header), ctypes.POINTER(_Data)]
syscalls.libc.capget.restype = ctypes.c_int
syscalls.libc.capset.argtypes = [ctypes.POINTER(_Header), ctypes.POINTER(_Data)]
syscalls.libc.capset.restype = ctypes.c_int


@dataclass(frozen=True)
class CapSets:
    """A process's effective, permitted and inheritable sets as 64-bit masks."""

    effective: int
    permitted: int
    inheritable: int


def mask(names: Iterable[str]) -> int:
    """Bit mask for capability names (``"NET_RAW"``, ``"CAP_NET_RAW"``, any case; ``"ALL"``)."""
    result = 0
    for raw in names:
        name = raw.upper().removeprefix("CAP_")
        if name == "ALL":
            result |= (1 << (max(NUMBERS.values()) + 1)) - 1
            continue
        try:
            result |= 1 << NUMBERS[name]
        except KeyError:
            raise ValueError(f"unknown capability {raw!r}") from None
    return result


def last_cap() -> int:
    """Highest capability number this kernel knows (the bounding-set loop must cover all of them)."""
    with open(_LAST_CAP_FILE, "rb") as f:
        return int(f.read())


def drop_bounding_except(keep: int, *, last: int) -> None:
    """Remove every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last + 1):
        if not keep & (1 << cap):
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap, what=f"drop capability {cap} from bounding set")


def bounding() -> int:
    """The current bounding set as a mask (reads every bit; for tests and diagnostics)."""
    result = 0
    for cap in range(last_cap() + 1):
        if syscalls.prctl(syscalls.PR_CAPBSET_READ, cap, what="read bounding set"):
            result |= 1 << cap
    return result


def clear_ambient() -> None:
    syscalls.prctl(
        syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL, what="clear ambient capabilities",
    )


def get() -> CapSets:
    header = _Header(_VERSION_3, 0)
    data = _DataPair()
    syscalls.check(syscalls.libc.capget(ctypes.byref(header), data), "capget")
    return CapSets(
        effective=data[0].effective | (data[1].effective << 32),
        permitted=data[0].permitted | (data[1].permitted << 32),
        inheritable=data[0].inheritable | (data[1].inheritable << 32),
    )


def set_sets(sets: CapSets) -> None:
    """``capset`` the three sets at once; each may only shrink (permitted) or stay within permitted."""
    header = _Header(_VERSION_3, 0)
    data = _DataPair()
    lo, hi = 0xFFFFFFFF, 32
    data[0] = _Data(sets.effective & lo, sets.permitted & lo, sets.inheritable & lo)
    data[1] = _Data(sets.effective >> hi, sets.permitted >> hi, sets.inheritable >> hi)
    syscalls.check(syscalls.libc.capset(ctypes.byref(header), data), "capset")
