"""The keeper: the tiny process that makes the supervisor survive its own worker's death.

It is what ``python -m agent.runtime.supervisor --root ROOT`` starts. It holds ``supervisor.pid``'s
lock for its lifetime, binds ``supervisor.sock`` (and keeps a copy of the listening socket, so clients
that connect while no worker runs wait in the backlog instead of spawning a second tree), makes itself
the only child subreaper of the tree, and starts the worker (``agent.runtime.supervisor.worker``) with
the listener and one end of a seqpacket socketpair (``channel``). Then it loops on ``poll``:

* reap every child: the worker, container inits (re-parented to us when the launcher's intermediate
  exits, because the worker is not a subreaper), and any orphaned descendant;
* read the channel: ``H`` puts a container in custody (its pidfd and a duplicate of each log-pipe read
  end, so the pipes never lose their last reader and a container never gets SIGPIPE for a dead
  worker), ``D`` releases it;
* forward each container's wait status to the worker (``E``). The status stays in custody until the
  worker has recorded it, so an exit while no worker runs is handed to the next one;
* when the worker dies, start a new one (backing off if it keeps dying young) and hand it every
  container in custody (``A``... ``Z``). A worker that exits 0 has gone idle: the keeper follows it.

Nothing else: no JSON, no launching, no logs. Its imports are the standard library and this package's
``channel`` and ``custody``, so it costs about as little memory as a Python process can.

If the keeper itself dies, the worker re-executes itself as a keeper (``--resume-fd``/``--listen-fd``:
a manifest of the containers and their inherited descriptors) and starts a fresh worker; see
``worker.py``. Exit codes: 0 once idle, 1 if the first worker could not start, 2 for bad arguments.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import signal
import socket
import sys
import time

from agent.runtime import supervisor as files
from agent.runtime.supervisor import channel
from agent.runtime.supervisor.custody import Custody
from agent.runtime.supervisor.ownlog import OwnLog

WORKER_MODULE = "agent.runtime.supervisor.worker"
DEFAULT_IDLE_GRACE = 60.0
# A worker restarted after a crash has clients reconnecting within milliseconds; if none comes, there
# is nothing to keep it for.
RESPAWN_IDLE_GRACE = 2.0
# A worker that dies younger than this counts towards the restart backoff.
STABLE_WORKER_SECONDS = 1.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
MAX_OWN_LOG = 1 << 20
_PR_SET_CHILD_SUBREAPER = 36


def respawn_delay(streak: int) -> float:
    """Seconds to wait before starting a worker after ``streak`` workers in a row died young."""
    if streak <= 0:
        return 0.0
    return min(BACKOFF_FIRST * 2.0 ** (streak - 1), BACKOFF_MAX)


class Options:
    __slots__ = ("idle_grace", "launcher", "listen_fd", "resume_fd", "root")

    def __init__(self, root: str, *, launcher: str | None = None, idle_grace: float = DEFAULT_IDLE_GRACE,
                 resume_fd: int | None = None, listen_fd: int | None = None) -> None:
        self.root = root
        self.launcher = launcher
        self.idle_grace = idle_grace
        self.resume_fd = resume_fd
        self.listen_fd = listen_fd


def parse_args(argv: list[str]) -> Options:
    """``--root R [--launcher L] [--idle-grace S] [--resume-fd N --listen-fd N]``; ValueError if bad.

    Hand-rolled rather than argparse: only our own code starts the keeper, and argparse costs it
    400 KiB."""
    kinds: dict[str, type[str] | type[int] | type[float]] = {
        "--root": str, "--launcher": str, "--idle-grace": float, "--resume-fd": int, "--listen-fd": int}
    values: dict[str, str | int | float] = {}
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name not in kinds:
            raise ValueError(f"unknown argument {arg!r}")
        if not eq:
            following = next(args, None)
            if following is None:
                raise ValueError(f"{name} needs a value")
            value = following
        values[name] = kinds[name](value)
    root = values.get("--root")
    if not isinstance(root, str) or not root:
        raise ValueError("--root is required")
    resume_fd, listen_fd = values.get("--resume-fd"), values.get("--listen-fd")
    if (resume_fd is None) != (listen_fd is None):
        raise ValueError("--resume-fd and --listen-fd go together")
    launcher = values.get("--launcher")
    return Options(root, launcher=str(launcher) if launcher is not None else None,
                   idle_grace=float(values.get("--idle-grace", DEFAULT_IDLE_GRACE)),
                   resume_fd=int(resume_fd) if resume_fd is not None else None,
                   listen_fd=int(listen_fd) if listen_fd is not None else None)


class Keeper:
    """The loop. ``run()`` returns the process exit code."""

    def __init__(self, options: Options, *, listener: socket.socket, custody: Custody,
                 resumed: bool) -> None:
        self._options = options
        self._listener = listener
        self._custody = custody
        self._resumed = resumed
        self._poll = select.poll()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._channel: socket.socket | None = None
        self._outbox: list[tuple[bytes, tuple[int, ...]]] = []
        self._worker_pid: int | None = None
        self._worker_started = 0.0
        self._ever_ready = False
        self._streak = 0
        self._respawn_at: float | None = None

    def run(self) -> int:
        for sock in (self._wakeup_r, self._wakeup_w):
            sock.setblocking(False)
        self._poll.register(self._wakeup_r, select.POLLIN)
        # The handler only has to exist: its C part writes the signal number to the wakeup fd.
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore_in_handler)
        self._spawn_worker()
        while True:
            self._flush()
            timeout = None
            if self._respawn_at is not None:
                timeout = max(0, int((self._respawn_at - time.monotonic()) * 1000) + 1)
            for fd, _ in self._poll.poll(timeout):
                if fd == self._wakeup_r.fileno():
                    with contextlib.suppress(BlockingIOError):
                        self._wakeup_r.recv(4096)
            # Reap before reading the channel: a container's H was sent before its init became our
            # child, so every H that can match a pid reaped here is already queued (custody.py).
            reaped = self._reap()
            self._read_channel()
            worker_status: int | None = None
            for pid, status, finished_at in reaped:
                if pid == self._worker_pid:
                    worker_status = status
                elif (self._custody.reaped(pid, status, finished_at) is not None
                      and self._channel is not None):
                    self._outbox.append((channel.exited(pid, status, finished_at), ()))
            if worker_status is not None:
                code = self._worker_exited(worker_status)
                if code is not None:
                    return code
            if self._respawn_at is not None and time.monotonic() >= self._respawn_at:
                self._spawn_worker()

    # -- the worker --------------------------------------------------------------------------------

    def _spawn_worker(self) -> None:
        self._respawn_at = None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        grace = self._options.idle_grace
        if self._ever_ready or self._resumed:
            grace = min(grace, RESPAWN_IDLE_GRACE)
        argv = [sys.executable, *interpreter_flags(), "-m", WORKER_MODULE, "--root", self._options.root,
                "--channel-fd", str(theirs.fileno()), "--listen-fd", str(self._listener.fileno()),
                "--idle-grace", repr(grace)]
        if self._options.launcher:
            argv += ["--launcher", self._options.launcher]
        theirs.set_inheritable(True)
        try:
            # posix_spawn (vfork + exec): no copy of our memory, and the worker inherits only the
            # descriptors marked inheritable — its channel end and the listener.
            pid = os.posix_spawn(sys.executable, argv, os.environ,
                                 file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
        except OSError as err:
            _log(f"cannot start a worker: {err}")
            mine.close()
            self._respawn_at = time.monotonic() + respawn_delay(self._streak + 1)
            self._streak += 1
            return
        finally:
            theirs.close()
        mine.setblocking(False)
        self._channel = mine
        self._worker_pid = pid
        self._worker_started = time.monotonic()
        self._poll.register(mine, select.POLLIN)
        self._outbox = [(channel.adopt(e.pid, e.status, e.finished_at, e.blob), e.fds)
                        for e in self._custody.entries()]
        self._outbox.append((channel.done(), ()))
        _log(f"started worker {pid}, handing over {len(self._custody)} containers")

    def _worker_exited(self, status: int) -> int | None:
        """The worker is gone: the keeper's exit code, or None to carry on (a new worker is due)."""
        code = os.waitstatus_to_exitcode(status)
        lived = time.monotonic() - self._worker_started
        self._worker_pid = None
        self._close_channel()
        if code == 0 and not len(self._custody):
            return 0  # idle: nothing to supervise and nobody connected
        if not self._ever_ready and not len(self._custody):
            _log(f"the first worker exited ({_describe(code)}) before it was ready")
            return 1
        self._streak = self._streak + 1 if lived < STABLE_WORKER_SECONDS else 0
        delay = respawn_delay(self._streak)
        _log(f"worker exited ({_describe(code)}) after {lived:.1f}s with {len(self._custody)} containers "
             f"in custody; restarting it in {delay:.1f}s")
        self._respawn_at = time.monotonic() + delay
        return None

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._poll.unregister(self._channel)
            self._channel.close()
            self._channel = None
        self._outbox.clear()  # a new worker gets all of it in its handover

    # -- reaping and the channel -------------------------------------------------------------------

    def _reap(self) -> list[tuple[int, int, float]]:
        reaped = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped.append((pid, status, time.time()))
        return reaped

    def _read_channel(self) -> None:
        while self._channel is not None:
            try:
                message = channel.receive(self._channel)
            except BlockingIOError:
                return
            except ValueError as err:
                _log(f"ignoring a bad message from the worker: {err}")
                continue
            except OSError as err:
                _log(f"worker channel: {err}")
                message = None
            if message is None:
                # The worker is exiting or dead: it is reaped (and replaced) on a later pass.
                self._close_channel()
                return
            if message.kind == channel.HOLD:
                assert message.pid is not None and message.blob is not None
                _close_all(self._custody.hold(message.pid, message.blob, message.fds))
            elif message.kind == channel.DROP:
                assert message.pid is not None
                _close_all(self._custody.drop(message.pid))
            elif message.kind == channel.READY:
                if not self._ever_ready:
                    self._ever_ready = True
                    _say_ready()
            else:
                _close_all(message.fds)
                _log(f"ignoring unexpected message {message.kind!r} from the worker")

    def _flush(self) -> None:
        if self._channel is None:
            return
        while self._outbox:
            data, fds = self._outbox[0]
            try:
                channel.send(self._channel, data, fds)
            except BlockingIOError:
                break
            except OSError as err:
                # The worker died: it is reaped on a later pass and its successor gets a handover.
                _log(f"worker channel: {err}")
                self._close_channel()
                return
            self._outbox.pop(0)
        self._poll.modify(self._channel, select.POLLIN | (select.POLLOUT if self._outbox else 0))

    def close(self) -> None:
        self._close_channel()
        _close_all(self._custody.close_all())
        signal.set_wakeup_fd(-1)
        self._wakeup_r.close()
        self._wakeup_w.close()


# -- process setup ---------------------------------------------------------------------------------


def interpreter_flags() -> list[str]:
    """The flags we were started with that the worker should share (e.g. -S: no site, less memory)."""
    flags = []
    if sys.flags.no_site:
        flags.append("-S")
    if sys.flags.safe_path:
        flags.append("-P")
    return flags


def _describe(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"code {code}"


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _ignore_in_handler(signum: int, frame: object) -> None:
    """The wakeup fd carries the signal; the handler only has to exist for it to be written."""


_OWN_LOG = OwnLog("keeper")


def _log(message: str) -> None:
    """One line to supervisor.log; a full disk drops it (counted), never raises (see ``ownlog``)."""
    _OWN_LOG.line(message)


def _redirect_std_streams(log_path: str) -> None:
    with contextlib.suppress(OSError):  # FileNotFoundError, or a full disk: keep the one file
        if os.stat(log_path).st_size > MAX_OWN_LOG:
            os.replace(log_path, f"{log_path}.1")
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError:
        # No room for even an empty file (no inodes left): supervise without a log rather than not at all.
        log_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(null_fd, 0)
    os.close(null_fd)


def _say_ready() -> None:
    """Tell the spawner (reading our stdout) that the worker serves the socket; then let go of it."""
    with contextlib.suppress(OSError):
        os.write(1, b"ready\n")
    null_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(null_fd, 1)
    os.close(null_fd)


def _become_subreaper() -> None:
    import ctypes  # only here: a one-time call

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def claim_root(pidfile: str, socket_path: str, *, timeout: float = 10.0,
               defer_to_live: bool = True) -> int | None:
    """Lock the pidfile for our lifetime and write our pid into it; returns the locked fd.

    None means another live supervisor serves this root (its socket answers) and ``defer_to_live`` is
    set. Waits out a holder that is just exiting; TimeoutError if the lock stays held.
    """
    fd = os.open(pidfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if defer_to_live and _socket_answers(socket_path):
                os.close(fd)
                return None
            if time.monotonic() >= deadline:
                os.close(fd)
                raise TimeoutError(f"{pidfile} is locked but {socket_path} does not answer") from None
            time.sleep(0.01)  # a keeper that is exiting releases the lock within milliseconds
            continue
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as err:
            # A full disk: the lock (on the inode) is what serves the root; the pid is for people.
            _log(f"cannot write our pid into {pidfile}: {err.strerror}")
        return fd


def _socket_answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _bind(path: str) -> tuple[socket.socket, int]:
    """Bind the root's socket (replacing a stale one: we hold the root's lock) as 0600; returns it with
    its inode, so we never unlink a socket a successor bound after us."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    listener.listen(128)
    return listener, os.stat(path).st_ino


def _load_manifest(fd: int, custody: Custody) -> None:
    """The containers a worker that lost its keeper passed to us, its re-execution (see worker.py)."""
    chunks = []
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    for line in b"".join(chunks).splitlines():
        try:
            pid, fds, blob = channel.parse_resume_line(line)
        except ValueError as err:
            _log(f"resume manifest: {err}")
            continue
        for held in fds:
            os.set_inheritable(held, False)  # never into the workers we spawn
        _close_all(custody.hold(pid, blob, fds))


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        print(f"usage: python -m agent.runtime.supervisor --root ROOT [--launcher L] [--idle-grace S]: "
              f"{err}", file=sys.stderr)
        return 2
    root = options.root
    resumed = options.resume_fd is not None
    os.makedirs(root, exist_ok=True)
    socket_path = os.path.join(root, files.SOCKET_NAME)
    if not resumed:
        _redirect_std_streams(os.path.join(root, files.LOG_NAME))
    with contextlib.suppress(PermissionError):
        os.setsid()  # fails if already a session leader (the spawner used start_new_session)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)

    pidfile = os.path.join(root, files.PIDFILE_NAME)
    try:
        # A resumed keeper already serves the root (it holds the listener): it must not defer.
        pid_fd = claim_root(pidfile, socket_path, defer_to_live=not resumed)
    except TimeoutError as err:
        if not resumed:
            _log(str(err))
            return 1
        _log(f"{err}; carrying on without the lock rather than abandon the containers")
        pid_fd = None
    if pid_fd is None and not resumed:
        _say_ready()  # idempotent spawn: the caller connects to the supervisor that is already there
        return 0
    _become_subreaper()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        # Three descriptors per container in custody.
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    custody = Custody()
    if options.resume_fd is not None and options.listen_fd is not None:
        listener = socket.socket(fileno=options.listen_fd)
        socket_ino = _inode(socket_path)
        _load_manifest(options.resume_fd, custody)
    else:
        listener, socket_ino = _bind(socket_path)
    # Every worker inherits the listener; nothing else is ever spawned by the keeper.
    listener.set_inheritable(True)
    keeper = Keeper(options, listener=listener, custody=custody, resumed=resumed)
    _log(f"keeping {root}" + (f" (resumed with {len(custody)} containers)" if resumed else ""))
    try:
        return keeper.run()
    finally:
        # Unlink before closing, so a client arriving now spawns a fresh supervisor instead of
        # queueing on a socket nobody will accept on.
        if socket_ino and _inode(socket_path) == socket_ino:
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
        listener.close()
        keeper.close()
        if pid_fd is not None:
            os.ftruncate(pid_fd, 0)  # the pidfile stays (the lock lives on its inode): empty means none
            os.close(pid_fd)
        _log("exiting")


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0
