"""``python -m agent.runtime.nsenter [PLAN_FD]``: run a process inside a running container (``shoal exec``).

Input: an ``ExecPlan`` as JSON, read to EOF from file descriptor ``PLAN_FD`` if given (the command's
own stdin is then passed through untouched, for interactive exec), otherwise from stdin (the command
then gets /dev/null as stdin). stdout and stderr are inherited and belong to the command.

Steps: seal ourselves (below), write our pid into the target's cgroups, open ``/proc/PID/ns/*`` for
every namespace that differs from ours, join them (mnt last), fork (a joined pid namespace only applies
to children), and in the child switch credentials and capabilities like the container's init, join a
session keyring of its own, load the container's seccomp filter (compiled by the agent; loading it is
one system call), then ``execve`` via ``$PATH``.

Sealing, before anything of the container is joined. From ``fork`` to ``execve`` our child stands in
the container's pid namespace, and its root can see it. So the helper (spawned with a clean environment,
see ``execs.spawn``) makes itself non-dumpable (the child inherits that until ``execve``): its
``environ``, ``exe`` (the host's Python), ``maps``, ``mem``, ``cwd``, ``root`` and ``fd/*`` cannot be
opened by a root without CAP_SYS_PTRACE, even once the child holds the container's own capabilities.
It closes every descriptor but stdio, and it clears ``sys.path``: after joining the mount namespace a
path resolves in the container's files, so an import from then on would run the container's code with
the host's capabilities; with nothing on the path it fails instead (everything is imported up front).

The parent forwards SIGTERM/SIGINT/SIGHUP to the child and exits with its status (128+N if killed by
signal N). A failure before the command runs prints one line ``shoal exec: <what failed>`` on stderr
and exits 126 (setup, not executable) or 127 (command not found).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
from types import FrameType
from typing import NoReturn

from agent.linux import capabilities, credentials, executable, keyring, namespaces, process, seccomp, syscalls
from agent.runtime.plan import ExecPlan

_EXIT_SETUP = 126
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while data := os.read(fd, 65536):
        chunks.append(data)
    return b"".join(chunks)


def _fail(message: str, code: int) -> NoReturn:
    try:
        os.write(2, f"shoal exec: {message}\n".encode(errors="replace"))
    finally:
        os._exit(code)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename is not None else exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _enter(plan: ExecPlan) -> None:
    """Join the target's cgroups and namespaces (this process; pid ns only for children)."""
    process.join_cgroups(plan.cgroup_procs)
    # Joining our own namespace again is pointless and, for --network host, still needs the fd.
    wanted = [n for n in namespaces.JOIN_ORDER if namespaces.differs_from_own(plan.target_pid, n)]
    fds = namespaces.open_fds(plan.target_pid, wanted)
    try:
        for name, fd in fds:
            namespaces.join(fd, name)
    finally:
        for _, fd in fds:
            os.close(fd)


def _run_child(plan: ExecPlan, *, keep: int, last_cap: int, stdin_consumed: bool) -> NoReturn:
    env = executable.env_to_mapping(plan.env)
    try:
        process.reset_signals()
        if stdin_consumed:
            with syscalls.described("open /dev/null"):
                null = os.open("/dev/null", os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
        credentials.become(
            uid=plan.uid, gid=plan.gid, additional_gids=plan.additional_gids, keep=keep, last_cap=last_cap,
        )
        with syscalls.described(f"chdir to working directory {plan.cwd}"):
            os.chdir(plan.cwd)
        if plan.no_new_privileges:
            process.set_no_new_privs()
        os.umask(0o022)
        process.close_fds_except((), limit=resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        keyring.join_new_session_keyring()  # not the agent's (host root's) session keyring
        # Last: the container's filter, so the command runs as confined as the container's init.
        seccomp.load_encoded(plan.seccomp_program, flags=plan.seccomp_flags)
    except BaseException as exc:
        _fail(_describe(exc), _EXIT_SETUP)
    name = plan.argv[0]
    try:
        os.execve(executable.resolve(name, env=env), list(plan.argv), env)
    except OSError as exc:
        failure = executable.classify(name, exc)
        _fail(failure.message, failure.exit_code)
    except BaseException as exc:
        _fail(_describe(exc), _EXIT_SETUP)


def _seal() -> None:
    """Keep the host's state out of the container's reach (see module docstring)."""
    process.set_undumpable()
    process.close_fds_except((), limit=resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    sys.path.clear()
    sys.path_importer_cache.clear()


def run(plan: ExecPlan, *, stdin_consumed: bool) -> int:
    """Carry out ``plan``; returns the exit code for this process (see module docstring)."""
    if not plan.argv:
        _fail("no command given", _EXIT_SETUP)
    try:
        _seal()
        keep = capabilities.mask(plan.capabilities)
        last_cap = capabilities.last_cap()
        _enter(plan)
        # Joining the mount namespace already moved us to its root; say so, rather than rely on it.
        os.chdir("/")
    except (OSError, ValueError) as exc:
        _fail(_describe(exc), _EXIT_SETUP)

    child = 0

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    # Installed before fork so no signal is lost in between; the child resets them first thing.
    for sig in _FORWARDED:
        signal.signal(sig, forward)
    try:
        child = os.fork()
    except OSError as exc:
        _fail(f"fork: {exc.strerror}", _EXIT_SETUP)
    if child == 0:
        _run_child(plan, keep=keep, last_cap=last_cap, stdin_consumed=stdin_consumed)
    _, status = os.waitpid(child, 0)  # PEP 475: retried after our forwarding handler runs
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        plan_fd = int(args[0]) if args else 0
        raw = _read_all(plan_fd)
        if plan_fd != 0:
            os.close(plan_fd)  # never into the container
        plan = ExecPlan.from_json(raw.decode())
    except (OSError, ValueError, TypeError) as exc:
        _fail(f"reading exec plan: {_describe(exc)}", _EXIT_SETUP)
    return run(plan, stdin_consumed=not args)


if __name__ == "__main__":
    sys.exit(main())
