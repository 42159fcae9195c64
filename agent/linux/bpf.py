"""bpf(2) for cgroup device programs: load one, attach it to a cgroup2 directory, list and detach.

A ``BPF_PROG_TYPE_CGROUP_DEVICE`` program runs on every device access (open, mknod) by a process whose
cgroup2 group has it attached, directly or through an ancestor, and the access fails with EPERM unless
every such program returns 1 (``include/linux/device_cgroup.h``). It works on v1-hybrid hosts too: the
programs follow the process's group in the unified hierarchy whatever the v1 controllers do.

Lifetime: an attached program is held by the cgroup, not by the file descriptor that loaded it, so
``replace_device_program`` closes every descriptor before returning; the program lives until it is
detached or the group is removed (rmdir releases it), and surviving the agent needs nothing more.
Attaching uses ``BPF_F_ALLOW_MULTI`` (what runc and systemd use, so a program on an ancestor stays in
force and a child's program can only narrow it) and replaces the group's own earlier programs by
attaching the new one *before* detaching the old: in between both run, which only ever denies more,
never a moment with no filter. Errors are ``OSError`` naming the command and the directory; a program
the verifier rejects carries the verifier's log.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os

from agent.linux import syscalls

log = logging.getLogger("shoal.bpf")

# Commands, program and attach types, flags (include/uapi/linux/bpf.h).
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 1 << 1

LICENSE = b"Apache-2.0"  # any string: device programs call no GPL-only helper
PROGRAM_NAME = b"shoal_devices"  # shown by bpftool; at most 15 bytes
_LOAD_RETRIES = 30  # the verifier returns EAGAIN when a signal interrupts it
_LOG_SIZE = 64 * 1024
_MAX_PROGRAMS = 64  # the kernel's limit of programs per cgroup and attach type


class _LoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
    ]


class _AttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
    ]


class _QueryAttr(ctypes.Structure):
    # Up to ``revision``: kernels from 6.17 write that field whatever size they are given.
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("prog_attach_flags", ctypes.c_uint64),
        ("link_ids", ctypes.c_uint64),
        ("link_attach_flags", ctypes.c_uint64),
        ("revision", ctypes.c_uint64),
    ]


class _IdAttr(ctypes.Structure):
    _fields_ = [("prog_id", ctypes.c_uint32)]


def _not_stdin(fd: int) -> int:
    # bpf(2) reads fd 0 as "no fd" in some fields; a closed stdin could hand us 0.
    if fd != 0:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1)
    finally:
        os.close(fd)


def load_device_program(code: bytes) -> int:
    """Load ``code`` (``agent.linux.bpf_asm.assemble`` output) as a cgroup device program; its fd
    (close-on-exec). On rejection the ``OSError`` message ends with the verifier's log."""
    if not code or len(code) % 8:
        raise ValueError(f"BPF code of {len(code)} bytes is not whole instructions")
    insns = ctypes.create_string_buffer(code, len(code))
    license_buf = ctypes.create_string_buffer(LICENSE)
    attr = _LoadAttr(
        prog_type=BPF_PROG_TYPE_CGROUP_DEVICE, insn_cnt=len(code) // 8,
        insns=ctypes.addressof(insns), license=ctypes.addressof(license_buf), prog_name=PROGRAM_NAME,
    )
    for _ in range(_LOAD_RETRIES):
        try:
            return _not_stdin(syscalls.bpf(BPF_PROG_LOAD, attr, what="load the BPF device program"))
        except BlockingIOError:
            continue
        except OSError as err:
            # Load again with the verifier's log on: it is the only account of why.
            log_buf = ctypes.create_string_buffer(_LOG_SIZE)
            attr.log_level, attr.log_size, attr.log_buf = 1, _LOG_SIZE, ctypes.addressof(log_buf)
            try:
                return _not_stdin(syscalls.bpf(BPF_PROG_LOAD, attr, what="load the BPF device program"))
            except OSError:
                lines = log_buf.value.decode(errors="replace").splitlines()
                verifier = " | ".join(line.strip() for line in lines if line.strip())
                detail = f"{err.strerror}; verifier: {verifier}" if verifier else err.strerror
                raise OSError(err.errno, detail) from None
    raise syscalls.error(errno.EAGAIN, f"load the BPF device program: interrupted {_LOAD_RETRIES} times")


def _open_group(directory: str) -> int:
    with syscalls.described(f"open cgroup {directory}"):
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _query(group_fd: int, directory: str) -> list[int]:
    ids = (ctypes.c_uint32 * _MAX_PROGRAMS)()
    attr = _QueryAttr(target_fd=group_fd, attach_type=BPF_CGROUP_DEVICE, prog_ids=ctypes.addressof(ids),
                      prog_cnt=_MAX_PROGRAMS)
    syscalls.bpf(BPF_PROG_QUERY, attr, what=f"list the device programs of {directory}")
    return list(ids[: attr.prog_cnt])


def attached_program_ids(directory: str) -> list[int]:
    """Ids of the device programs attached to the group ``directory`` itself (not its ancestors')."""
    group_fd = _open_group(directory)
    try:
        return _query(group_fd, directory)
    finally:
        os.close(group_fd)


def _program_fd(prog_id: int) -> int:
    return syscalls.bpf(BPF_PROG_GET_FD_BY_ID, _IdAttr(prog_id), what=f"open BPF program {prog_id}")


def program_exists(prog_id: int) -> bool:
    """Whether the kernel still holds program ``prog_id`` (a removed group's program goes away)."""
    try:
        os.close(_program_fd(prog_id))
    except FileNotFoundError:
        return False
    return True


def _old_program_fds(group_fd: int, directory: str) -> list[int]:
    fds: list[int] = []
    for prog_id in _query(group_fd, directory):
        try:
            fds.append(_program_fd(prog_id))
        except (FileNotFoundError, PermissionError) as err:
            # Gone meanwhile, or an LSM hides it: a program left attached can only deny more.
            log.info("leaving device program %d on %s: %s", prog_id, directory, err)
    return fds


def replace_device_program(directory: str, code: bytes) -> None:
    """Make ``code`` the device program of the cgroup2 group ``directory``: attach it, then detach the
    group's earlier ones (see the module docstring). Blocking; ``OSError`` naming the step."""
    group_fd = _open_group(directory)
    old: list[int] = []
    prog_fd = -1
    try:
        old = _old_program_fds(group_fd, directory)
        prog_fd = load_device_program(code)
        attach = _AttachAttr(target_fd=group_fd, attach_bpf_fd=prog_fd, attach_type=BPF_CGROUP_DEVICE,
                             attach_flags=BPF_F_ALLOW_MULTI)
        syscalls.bpf(BPF_PROG_ATTACH, attach, what=f"attach the device program to {directory}")
        for fd in old:
            detach = _AttachAttr(target_fd=group_fd, attach_bpf_fd=fd, attach_type=BPF_CGROUP_DEVICE)
            syscalls.bpf(BPF_PROG_DETACH, detach, what=f"detach the old device program of {directory}")
    finally:
        for fd in [*old, prog_fd, group_fd]:
            if fd >= 0:
                os.close(fd)
