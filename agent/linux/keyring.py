"""The kernel keyring: giving a container process a session keyring of its own.

Without this a container inherits the agent's session keyring, so its root could read (and plant)
keys the host's root had added (``keyctl``/``add_key``). Like runc, the container's init joins a
new session keyring before ``execve``; Shoal makes it *anonymous* (runc names it ``_ses.<id>`` so that
``runc exec`` can join it by name, which also lets another container's root join it by name): each
init and each exec gets a fresh, empty one that no other process can join. The per-uid user keyring
cannot be separated this way without user namespaces; the default seccomp profile denies ``keyctl``,
``add_key`` and ``request_key``, which closes that too.
"""

from __future__ import annotations

import ctypes
import platform

from agent.linux import syscalls

KEYCTL_GET_KEYRING_ID = 0
KEYCTL_JOIN_SESSION_KEYRING = 1
KEY_SPEC_SESSION_KEYRING = -3
_NR_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(platform.machine(), 250)


def join_new_session_keyring() -> int:
    """Replace the calling process's session keyring with a new anonymous one; returns its serial.
    Safe after fork (one system call)."""
    ret = syscalls.libc.syscall(_NR_KEYCTL, ctypes.c_int(KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_void_p(None))
    return syscalls.check(int(ret), "keyctl: join a new session keyring")


def session_keyring() -> int:
    """The serial of the calling process's session keyring (for tests and diagnostics)."""
    ret = syscalls.libc.syscall(_NR_KEYCTL, ctypes.c_int(KEYCTL_GET_KEYRING_ID),
                                ctypes.c_int(KEY_SPEC_SESSION_KEYRING), ctypes.c_int(0))
    return syscalls.check(int(ret), "keyctl: read the session keyring")
