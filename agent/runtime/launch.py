"""Starting a container process from a ``LaunchPlan``: fork, namespaces, root filesystem, exec.

Runs inside the supervisor's single-threaded worker, which is not a subreaper. Process tree::

    keeper (subreaper)
      └── worker (caller) ── intermediate: joins cgroups (and a prepared netns), unshare(namespaces),
                             forks, reports the init's pid, waits until the caller has handed the
                             init to the keeper ("g"), exits
                                 └── init (pid 1 of the new pid ns, re-parented to the keeper):
                                       a session keyring of its own, mounts, pivot_root, hostname,
                                       credentials, no_new_privs, seccomp filter, execve(argv)

Without an adopter (tests, benchmarks) the caller makes itself the subreaper and gets the init.

The intermediate exists because ``unshare(CLONE_NEWPID)`` only applies to the *next* child. The
caller learns the init's host pid from the intermediate over a pipe, then reads a second, close-on-exec
pipe to EOF: EOF with no data means ``execve`` succeeded; otherwise the init wrote one JSON
``{"kind", "message"}`` and exited 126/127, and the caller raises ``LaunchError``.
Both children are non-dumpable until the init's ``execve`` (see ``process.set_undumpable``), and the
supervisor they are forked from runs with the helper environment, not the agent's (``helper_env``).
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from agent.errors import LaunchError
from agent.linux import (
    capabilities,
    credentials,
    devices,
    executable,
    keyring,
    mounts,
    namespaces,
    netdev,
    process,
    seccomp,
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
    seccomp: seccomp.Program | None  # None: unconfined


def _seccomp_program(plan: LaunchPlan) -> seccomp.Program | None:
    if not plan.seccomp_program:
        return None
    try:
        return seccomp.Program.from_base64(plan.seccomp_program, flags=plan.seccomp_flags)
    except ValueError as exc:
        raise LaunchError(f"the plan's seccomp filter is malformed: {exc}", kind="setup") from None


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
        seccomp=_seccomp_program(plan),
    )


Adopter = Callable[[int, int], None]
"""``adopter(pid, pidfd)``: take over the container init ``pid`` before it is re-parented (see launch)."""


def launch(plan: LaunchPlan, *, stdout_fd: int, stderr_fd: int, timeout: float = 10.0,
           adopter: Adopter | None = None) -> int:
    """Start ``plan`` and return the container init's host pid once ``execve`` has succeeded.

    ``stdout_fd``/``stderr_fd`` become the container's fds 1 and 2 (stdin is /dev/null). Raises
    ``LaunchError`` (kind ``not-found``, ``not-executable`` or ``setup``) with nothing left running,
    including when setup takes longer than ``timeout`` seconds.

    Who parents the init. Without ``adopter``, the caller becomes a child subreaper, the init is
    re-parented to it, and it must ``waitpid`` that pid itself. With ``adopter`` the caller must not be
    a subreaper: the init goes to the caller's nearest subreaper ancestor (the supervisor's keeper).
    ``adopter(pid, pidfd)`` is called while the intermediate still parents the init, so the pid can be
    neither reaped nor recycled yet; it must hand the init over to that ancestor before returning, and
    only then does the intermediate exit. ``pidfd`` stays ours (dup it to keep it). If ``adopter``
    raises, the intermediate kills the init and the launch fails with kind ``setup``.
    """
    deadline = time.monotonic() + timeout
    prep = _prepare(plan)
    if adopter is None:
        try:
            process.set_child_subreaper()
        except OSError as exc:
            raise LaunchError(exc.strerror or str(exc), kind="setup") from None

    pid_r, pid_w = os.pipe()
    err_r, err_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        intermediate = os.fork()
    except OSError as exc:
        for fd in (pid_r, pid_w, err_r, err_w, go_r, go_w):
            os.close(fd)
        raise LaunchError(f"fork: {exc.strerror}", kind="setup") from None
    if intermediate == 0:
        os.close(pid_r)
        os.close(err_r)
        os.close(go_w)
        _run_intermediate(plan, prep, pid_w=pid_w, err_w=err_w, go_r=go_r, stdout_fd=stdout_fd,
                          stderr_fd=stderr_fd)
    os.close(pid_w)
    os.close(err_w)
    os.close(go_r)

    init_pid: int | None = None
    pidfd: int | None = None
    try:
        try:
            line = _read(pid_r, deadline, stop_at_newline=True)
            if line.strip():
                init_pid = int(line)
                pidfd = _hand_over(init_pid, adopter)
                os.write(go_w, b"g")
        finally:
            # EOF without "g" tells the intermediate to kill the init: nobody took it over.
            os.close(go_w)
        report = _read(err_r, deadline, stop_at_newline=False)
        _reap(intermediate)  # it exits on "g": by now it is gone or going
    except TimeoutError:
        _kill(init_pid, pidfd, reap=adopter is None)
        _kill(intermediate, None, reap=True)
        _close(pidfd)
        raise LaunchError(f"container setup did not finish within {timeout:g}s", kind="setup") from None
    except LaunchError:
        _reap(intermediate)
        _close(pidfd)
        raise
    finally:
        os.close(pid_r)
        os.close(err_r)
    _close(pidfd)

    if not report:
        if init_pid is None:
            raise LaunchError("launcher exited without starting the container", kind="setup")
        return init_pid
    if init_pid is not None and adopter is None:
        _reap(init_pid)
    try:
        decoded = json.loads(report)
        kind, message = str(decoded["kind"]), str(decoded["message"])
    except (ValueError, KeyError, TypeError):
        kind, message = "setup", report.decode(errors="replace")
    raise LaunchError(message, kind=kind)


def _hand_over(init_pid: int, adopter: Adopter | None) -> int:
    """A pidfd for the init (race-free: the intermediate has not exited, so the pid is not recycled),
    after the adopter has taken the init over."""
    try:
        pidfd = os.pidfd_open(init_pid)
    except OSError as exc:
        raise LaunchError(f"pidfd_open: {exc.strerror}", kind="setup") from None
    if adopter is not None:
        try:
            adopter(init_pid, pidfd)
        except Exception as exc:
            os.close(pidfd)
            raise LaunchError(f"handing the container over: {exc}", kind="setup") from None
    return pidfd


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


def _kill(pid: int | None, pidfd: int | None, *, reap: bool) -> None:
    """SIGKILL ``pid`` (through ``pidfd`` when we have one: the pid may no longer be our child, and a
    pidfd can never reach a recycled pid), and reap it if it is ours to reap."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    if reap:
        _reap(pid)


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


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
    plan: LaunchPlan, prep: _Prepared, *, pid_w: int, err_w: int, go_r: int, stdout_fd: int, stderr_fd: int,
) -> NoReturn:
    try:
        # First, so a signal meant for the supervisor cannot run the supervisor's handlers here.
        process.reset_signals()
        # Before anything of the container: the init inherits it and keeps the supervisor's memory
        # (environment, interpreter, maps) closed to the container until its execve resets it.
        process.set_undumpable()
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
            os.close(go_r)
            _run_init(plan, prep, err_w=err_w, stdout_fd=stdout_fd, stderr_fd=stderr_fd)
        os.write(pid_w, f"{init_pid}\n".encode())
        # The init's exec report needs only the init's copy of err_w: closing ours lets the caller
        # read it without waiting for us to exit.
        os.close(err_w)
        # Stay the init's parent until the caller has taken it over ("g"). End of file means the caller
        # gave up or died: then the init must not outlive the launch.
        if os.read(go_r, 1) != b"g":
            os.kill(init_pid, signal.SIGKILL)
            os.waitpid(init_pid, 0)
            os._exit(_EXIT_SETUP)
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
    except BaseException as exc:
        _report_exec_failure(err_w, name, exc)
    if prep.seccomp is not None:
        # Last before execve, so the filter confines the container's program and none of Shoal's
        # set-up (as runc does); it needs no_new_privs, set above.
        try:
            prep.seccomp.load()
        except BaseException as exc:
            _report_and_exit(err_w, "setup", _describe(exc), _EXIT_SETUP)
    try:
        os.execve(path, list(plan.argv), prep.env)
    except BaseException as exc:
        _report_exec_failure(err_w, name, exc)


def _report_exec_failure(err_w: int, name: str, exc: BaseException) -> NoReturn:
    if isinstance(exc, OSError):
        failure = executable.classify(name, exc)
        _report_and_exit(err_w, failure.kind, failure.message, failure.exit_code)
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
    # Not the agent's session keyring (host root's keys), whatever the seccomp profile allows.
    keyring.join_new_session_keyring()

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
    # After pivot_root the kernel resolves every path inside the container's root, so realpath follows
    # the image's symlinks there (as Docker's securejoin does) and a dangling one is created, not refused.
    if not os.path.isdir(plan.cwd):
        with syscalls.described(f"create working directory {plan.cwd}"):
            os.makedirs(os.path.realpath(plan.cwd), 0o755, exist_ok=True)
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
