"""Starting a container process from a ``LaunchPlan``: fork, namespaces, root filesystem, exec.

Runs inside the single-threaded supervisor, which parents every container. Process tree::

    caller (subreaper) ── intermediate: joins cgroups (and a prepared netns), unshare(namespaces), forks,
                          reports pid, exits
                              └── init (pid 1 of the new pid ns, re-parented to the caller):
                                    mounts, pivot_root, hostname, credentials, execve(argv)

The intermediate exists because ``unshare(CLONE_NEWPID)`` only applies to the *next* child. The
caller learns the init's host pid from the intermediate over a pipe, then reads a second, close-on-exec
pipe to EOF: EOF with no data means ``execve`` succeeded; otherwise the init wrote one JSON
``{"kind", "message"}`` and exited 126/127, and the caller reaps it and raises ``LaunchError``.
Everything that can be computed or validated is done *before* ``fork`` so the children only make
system calls; after ``fork`` there is no logging, no threads, and every path ends in ``execve`` or
``os._exit``. The overlay is mounted inside the container's mount namespace, so it vanishes with it and
no host mount ever needs cleaning up.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import time
from dataclasses import dataclass
from typing import NoReturn

from agent.errors import LaunchError
from agent.linux import (
    capabilities,
    credentials,
    devices,
    executable,
    mounts,
    namespaces,
    netdev,
    process,
    syscalls,
)
from agent.runtime.plan import LaunchPlan

_EXIT_SETUP = 126


@dataclass(frozen=True)
class _Prepared:
    """Everything derived from the plan before ``fork`` (validation errors surface in the caller)."""

    ns_flags: int
    new_netns: bool  # a fresh network namespace (not joined): its loopback must be brought up
    keep_caps: int
    last_cap: int
    env: dict[str, str]
    fd_limit: int


def _prepare(plan: LaunchPlan) -> _Prepared:
    if not plan.argv:
        raise LaunchError("no command to run: argv is empty", kind="setup")
    if "mount" not in plan.namespaces:
        raise LaunchError("a container needs its own mount namespace", kind="setup")
    if plan.hostname and "uts" not in plan.namespaces:
        raise LaunchError("setting a hostname needs a uts namespace", kind="setup")
    if not os.path.isabs(plan.cwd):
        raise LaunchError(f"working directory {plan.cwd!r} is not absolute", kind="setup")
    if not os.path.isabs(plan.rootfs.target):
        raise LaunchError(f"rootfs target {plan.rootfs.target!r} is not absolute", kind="setup")
    if plan.netns_path and not os.path.isabs(plan.netns_path):
        raise LaunchError(f"network namespace path {plan.netns_path!r} is not absolute", kind="setup")
    # Joining a prepared network namespace replaces creating one.
    created = tuple(n for n in plan.namespaces if not (plan.netns_path and n == "net"))
    try:
        mounts.overlay_options(plan.rootfs.lower, upper=plan.rootfs.upper, work=plan.rootfs.work)
        ns_flags = namespaces.flags_for(created)
        keep = capabilities.mask(plan.capabilities)
    except ValueError as exc:
        raise LaunchError(str(exc), kind="setup") from None
    return _Prepared(
        new_netns="net" in created,
        ns_flags=ns_flags,
        keep_caps=keep,
        last_cap=capabilities.last_cap(),
        env=executable.env_to_mapping(plan.env),
        fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    )


def launch(plan: LaunchPlan, *, stdout_fd: int, stderr_fd: int, timeout: float = 10.0) -> int:
    """Start ``plan`` and return the container init's host pid once ``execve`` has succeeded.

    The caller becomes a child subreaper and is the init's parent: it must ``waitpid`` that pid
    itself. ``stdout_fd``/``stderr_fd`` become the container's fds 1 and 2 (stdin is /dev/null).
    Raises ``LaunchError`` (kind ``not-found``, ``not-executable`` or ``setup``) with nothing left
    running, including when setup takes longer than ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    prep = _prepare(plan)
    try:
        process.set_child_subreaper()
    except OSError as exc:
        raise LaunchError(exc.strerror or str(exc), kind="setup") from None

    pid_r, pid_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        intermediate = os.fork()
    except OSError as exc:
        for fd in (pid_r, pid_w, err_r, err_w):
            os.close(fd)
        raise LaunchError(f"fork: {exc.strerror}", kind="setup") from None
    if intermediate == 0:
        os.close(pid_r)
        os.close(err_r)
        _run_intermediate(plan, prep, pid_w=pid_w, err_w=err_w, stdout_fd=stdout_fd, stderr_fd=stderr_fd)
    os.close(pid_w)
    os.close(err_w)

    init_pid: int | None = None
    try:
        line = _read(pid_r, deadline, stop_at_newline=True)
        if line.strip():
            init_pid = int(line)
        _reap(intermediate)
        report = _read(err_r, deadline, stop_at_newline=False)
    except TimeoutError:
        for pid in (init_pid, intermediate):
            if pid is not None:
                _kill_and_reap(pid)
        raise LaunchError(f"container setup did not finish within {timeout:g}s", kind="setup") from None
    finally:
        os.close(pid_r)
        os.close(err_r)

    if not report:
        if init_pid is None:
            raise LaunchError("launcher exited without starting the container", kind="setup")
        return init_pid
    if init_pid is not None:
        _reap(init_pid)
    try:
        decoded = json.loads(report)
        kind, message = str(decoded["kind"]), str(decoded["message"])
    except (ValueError, KeyError, TypeError):
        kind, message = "setup", report.decode(errors="replace")
    raise LaunchError(message, kind=kind)


def _read(fd: int, deadline: float, *, stop_at_newline: bool) -> bytes:
    """Read ``fd`` to EOF (or the first newline), raising ``TimeoutError`` at ``deadline``."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise TimeoutError
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        if stop_at_newline and b"\n" in data:
            return b"".join(chunks)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # already reaped by the supervisor's SIGCHLD handling
        os.waitpid(pid, 0)


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


# --- below here runs in forked children: os.* and ctypes only, always ends in execve or _exit -----


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        if exc.filename is not None:
            return f"{exc.strerror}: {exc.filename}"
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _report_and_exit(err_w: int, kind: str, message: str, code: int) -> NoReturn:
    try:
        os.write(err_w, json.dumps({"kind": kind, "message": message}).encode())
    finally:
        os._exit(code)


def _run_intermediate(
    plan: LaunchPlan, prep: _Prepared, *, pid_w: int, err_w: int, stdout_fd: int, stderr_fd: int,
) -> NoReturn:
    try:
        # First, so a signal meant for the supervisor cannot run the supervisor's handlers here.
        process.reset_signals()
        process.join_cgroups(plan.cgroup_procs)
        if plan.netns_path:
            # Before unshare(mount): the bind-mounted netns file lives in the host's mount namespace.
            with syscalls.described(f"open network namespace {plan.netns_path}"):
                netns_fd = os.open(plan.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                namespaces.join(netns_fd, "net")
            finally:
                os.close(netns_fd)
        syscalls.unshare(prep.ns_flags)
        init_pid = os.fork()
        if init_pid == 0:
            os.close(pid_w)
            _run_init(plan, prep, err_w=err_w, stdout_fd=stdout_fd, stderr_fd=stderr_fd)
        os.write(pid_w, f"{init_pid}\n".encode())
    except BaseException as exc:
        _report_and_exit(err_w, "setup", _describe(exc), _EXIT_SETUP)
    os._exit(0)


def _run_init(plan: LaunchPlan, prep: _Prepared, *, err_w: int, stdout_fd: int, stderr_fd: int) -> NoReturn:
    try:
        _set_up_container(plan, prep, err_w=err_w, stdout_fd=stdout_fd, stderr_fd=stderr_fd)
    except BaseException as exc:
        _report_and_exit(err_w, "setup", _describe(exc), _EXIT_SETUP)
    name = plan.argv[0]
    try:
        path = executable.resolve(name, env=prep.env)
        os.execve(path, list(plan.argv), prep.env)
    except OSError as exc:
        failure = executable.classify(name, exc)
        _report_and_exit(err_w, failure.kind, failure.message, failure.exit_code)
    except BaseException as exc:
        _report_and_exit(err_w, "setup", _describe(exc), _EXIT_SETUP)


def _set_up_container(
    plan: LaunchPlan, prep: _Prepared, *, err_w: int, stdout_fd: int, stderr_fd: int,
) -> None:
    # Modes of device nodes and directories we create must be exact; restored before exec.
    os.umask(0)
    with syscalls.described("set up stdio"):
        null = os.open("/dev/null", os.O_RDWR)
        out, err = os.dup(stdout_fd), os.dup(stderr_fd)  # dup first: the two may be 1 and 2 swapped
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
    process.close_fds_except((err_w,), limit=prep.fd_limit)

    rootfs = plan.rootfs
    root = rootfs.target
    mounts.make_rprivate("/")
    mounts.mount_overlay(rootfs.lower, upper=rootfs.upper, work=rootfs.work, target=root)
    mounts.mount_proc(root)
    devices.populate_dev(root, plan.devices)
    mounts.mount_sys(root)
    # Mask with the container's own /dev/null when it has one, so nothing host-side shows in its mounts.
    null_device = f"{root}/dev/null" if any(d.path == "/dev/null" for d in plan.devices) else "/dev/null"
    for path in plan.masked_paths:
        mounts.mask(root, path, null_device=null_device)
    for path in plan.readonly_paths:
        mounts.make_path_readonly(root, path)
    mounts.pivot_into(root)

    # Docker creates a missing WorkingDir; doing it before the read-only remount makes that work for
    # --read-only too (it lands in the container's upper dir, like Docker's rw layer).
    if not os.path.isdir(plan.cwd):
        with syscalls.described(f"create working directory {plan.cwd}"):
            os.makedirs(plan.cwd, 0o755, exist_ok=True)
    if plan.read_only:
        mounts.remount_readonly("/")
    if plan.hostname:
        process.set_hostname(plan.hostname)
    if prep.new_netns:
        with syscalls.described("bring up lo"):
            netdev.set_up("lo")

    credentials.become(
        uid=plan.uid, gid=plan.gid, additional_gids=plan.additional_gids, keep=prep.keep_caps,
        last_cap=prep.last_cap,
    )
    with syscalls.described(f"chdir to working directory {plan.cwd}"):
        os.chdir(plan.cwd)
    if plan.no_new_privileges:
        process.set_no_new_privs()
    os.umask(0o022)
