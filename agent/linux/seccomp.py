"""Loading a compiled seccomp filter into the calling process: ``seccomp(SECCOMP_SET_MODE_FILTER)``.

The BPF program is built by libseccomp elsewhere (``agent.security.seccomp_filter``); here it is only
handed to the kernel. ``Program`` wraps it in a ``struct sock_fprog`` *before* ``fork`` so the child
makes one system call and allocates nothing. The kernel requires ``no_new_privs`` (or CAP_SYS_ADMIN)
first; the filter applies to this thread and is inherited by everything it ``execve``s or forks.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import platform

from agent.linux import syscalls

SECCOMP_SET_MODE_FILTER = 1
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277}.get(platform.machine(), 317)
_INSTRUCTION_BYTES = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Program:
    """A BPF program ready to load (its buffer lives as long as this object)."""

    def __init__(self, program: bytes, *, flags: int = 0) -> None:
        if not program or len(program) % _INSTRUCTION_BYTES:
            raise ValueError("a seccomp program is a whole number of 8-byte instructions, got "
                             f"{len(program)} bytes")
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // _INSTRUCTION_BYTES, ctypes.addressof(self._buffer))
        self.flags = flags

    @classmethod
    def from_base64(cls, text: str, *, flags: int = 0) -> Program:
        """A program from its base64 form (how plans carry it); ``ValueError`` if malformed."""
        try:
            return cls(base64.b64decode(text, validate=True), flags=flags)
        except binascii.Error as exc:
            raise ValueError(f"a seccomp program must be base64: {exc}") from None

    def load(self) -> None:
        """Install the filter on the calling thread (no_new_privs must be set). Safe after fork."""
        ret = syscalls.libc.syscall(_NR_SECCOMP, ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                                    ctypes.c_uint(self.flags), ctypes.byref(self._fprog))
        syscalls.check(int(ret), "seccomp: load the container's filter")


def load_encoded(text: str, *, flags: int = 0) -> None:
    """Load the base64 program ``text`` (nothing if empty: unconfined). For a process that is about to
    ``execve`` and may allocate (the exec helper); the init prepares a ``Program`` before fork."""
    if text:
        Program.from_base64(text, flags=flags).load()


def mode() -> int:
    """``Seccomp:`` of /proc/self/status: 0 none, 1 strict, 2 filter (for tests and diagnostics)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    return 0
