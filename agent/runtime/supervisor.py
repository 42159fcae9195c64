"""The supervisor: one small single-threaded process per agent root that parents every container.

The daemon (asyncio, gRPC threads, large heap) must never fork, and containers must outlive it. So this
process launches containers on request, is their parent (child subreaper), pumps their stdout/stderr into
``ctr.log`` (``agent.runtime.logs``), reaps them and records each exit in ``run.json``
(``agent.runtime.runfile``) — also while no daemon is connected. It holds no state the daemon needs after
a restart beyond "which containers are alive", which ``list`` answers.

It runs as ``python -m agent.runtime.supervisor --root ROOT``: binds ``ROOT/supervisor.sock`` (0600),
prints ``ready`` on stdout and closes it, then serves newline-delimited JSON:

* requests ``{"req": n, "op": ..., ...}``; replies ``{"re": n, "ok": true, ...}`` or
  ``{"re": n, "ok": false, "error": msg, "kind": k}``;
* ops: ``hello`` → ``{pid}``; ``start {id, dir, plan, log: {max_bytes, max_files}}`` → ``{pid,
  started_at}`` (launch failures: kind ``not-found``/``not-executable``/``setup``, with run.json written);
  ``kill {id, signal}`` → ``{delivered}``; ``list`` → ``{containers: {id: {pid, started_at}}}``;
  ``shutdown`` → ok and exit if nothing is alive, else kind ``failed-precondition``;
* events ``{"event": "exit", "id", "pid", "exit_code", "signal", "finished_at"}`` to every client, sent
  after run.json and the log are complete.

Lifetime: exits when nothing is alive and no client is connected (after the first client, or after
``--idle-grace`` seconds if none ever came); otherwise it stays up across daemon restarts. If another
supervisor already serves the root, it prints ``ready`` and exits 0, so spawning is idempotent.

Memory matters (one of these per host, but every container adds to it): the module imports only the
standard library, ``agent.errors``, ``agent.runtime.{plan,logs,runfile}`` and, lazily, the launcher —
never grpc or protobuf — and per-container state is a slotted object, two pipe descriptors and a log fd.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import importlib.util
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.errors import LaunchError
from agent.runtime import logs as ctrlogs
from agent.runtime import runfile
from agent.runtime.plan import LaunchPlan

# How long to keep pumping a dead container's pipes. Every process of a pid namespace dies with its
# pid 1, so EOF normally follows the exit at once; a process that escaped (host pid ns) must not pin us.
DRAIN_SECONDS = 2.0
# A client that cannot keep up (or never reads) is dropped rather than buffered without bound.
MAX_CLIENT_BUFFER = 4 << 20
MAX_REQUEST_BYTES = 4 << 20
# Our own log is for post-mortems; cap it crudely.
MAX_OWN_LOG = 1 << 20
DEFAULT_IDLE_GRACE = 60.0
LAUNCH_EXIT_CODES = {"not-found": 127, "not-executable": 126, "setup": 125}
_PR_SET_CHILD_SUBREAPER = 36


class Launcher(Protocol):
    """``agent.runtime.launch.launch``'s shape: start ``plan`` with the given output fds, return the
    host pid of its pid 1, which must be re-parented to the caller; raise LaunchError on failure."""

    def __call__(self, plan: LaunchPlan, *, stdout_fd: int, stderr_fd: int) -> int: ...


@dataclass(frozen=True)
class SupervisorPaths:
    """Where the supervisor of agent root ``root`` keeps its files."""

    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def lock(self) -> Path:
        """Held by clients while they connect-or-spawn, so concurrent spawns start one supervisor."""
        return self.root / "supervisor.lock"

    @property
    def log(self) -> Path:
        return self.root / "supervisor.log"


def _real_launcher(plan: LaunchPlan, *, stdout_fd: int, stderr_fd: int) -> int:
    from agent.runtime import launch  # type: ignore[attr-defined, unused-ignore]  # lazily: may not exist yet

    pid: int = launch.launch(plan, stdout_fd=stdout_fd, stderr_fd=stderr_fd)
    return pid


def load_launcher(spec: str) -> Launcher:
    """``module:attr`` or ``/path/file.py:attr`` → the launcher callable (tests inject fakes so)."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise ValueError(f"launcher must be module:function, got {spec!r}")
    if where.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location("_shoal_launcher", where)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"cannot load {where}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    launcher: Launcher = getattr(module, attr)
    return launcher


class RequestError(Exception):
    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Container:
    """A launched container until its exit has been recorded and announced."""

    __slots__ = ("directory", "drain_deadline", "finished_at", "id", "log", "pid", "pipes", "started_at",
                 "status")

    def __init__(self, container_id: str, *, directory: str, pid: int, started_at: float,
                 log: ctrlogs.LogWriter, pipes: dict[int, str]) -> None:
        self.id = container_id
        self.directory = directory
        self.pid = pid
        self.started_at = started_at
        self.log = log
        self.pipes = pipes  # read fd → stream name, until that pipe hits EOF
        self.status: int | None = None  # wait status once reaped
        self.finished_at: float | None = None
        self.drain_deadline = 0.0

    @property
    def alive(self) -> bool:
        return self.status is None


class _Client:
    __slots__ = ("inbuf", "outbuf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()


class Supervisor:
    """The event loop. ``serve()`` blocks until the supervisor decides to exit."""

    def __init__(self, root: Path, *, launcher: Launcher | None = None,
                 idle_grace: float = DEFAULT_IDLE_GRACE, clock: Callable[[], float] = time.time) -> None:
        self.paths = SupervisorPaths(root)
        self._launcher: Launcher = launcher or _real_launcher
        self._idle_grace = idle_grace
        self._clock = clock
        self._sel = selectors.DefaultSelector()
        self._containers: dict[str, _Container] = {}
        self._by_pid: dict[int, _Container] = {}
        self._clients: dict[int, _Client] = {}
        self._had_client = False
        self._started = time.monotonic()
        self._stop = False
        self._listener: socket.socket | None = None
        self._socket_ino = 0
        self._wakeup_r: socket.socket | None = None
        self._wakeup_w: socket.socket | None = None

    # -- setup -------------------------------------------------------------------------------------

    def listen(self) -> None:
        """Bind the socket (replacing a stale one) and install signal handling; call before serve()."""
        path = str(self.paths.socket)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        # The file's identity, so we never unlink a socket a successor bound after us.
        self._socket_ino = os.stat(path).st_ino
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._sel.register(listener, selectors.EVENT_READ, "listen")

        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._sel.register(self._wakeup_r, selectors.EVENT_READ, "wakeup")
        # Handlers do nothing: the C-level handler writes the signal number to the wakeup fd, and the
        # loop acts on it between selects, in the one thread.
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, _ignore_in_handler)

    # -- main loop ---------------------------------------------------------------------------------

    def serve(self) -> None:
        while not self._stop:
            for key, mask in self._sel.select(self._timeout()):
                tag = key.data
                if tag == "listen":
                    self._accept()
                elif tag == "wakeup":
                    self._on_signals()
                elif isinstance(tag, _Client):
                    self._on_client(tag, mask)
                else:
                    container, stream = tag
                    self._pump(container, key.fd, stream)
            # Cheap and robust against coalesced or lost wakeups: reap on every iteration.
            self._reap()
            self._finish_drained()
            if self._idle():
                break
        self._close()

    def _timeout(self) -> float | None:
        deadlines = [c.drain_deadline for c in self._containers.values() if not c.alive]
        if not self._had_client:
            deadlines.append(self._started + self._idle_grace)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _idle(self) -> bool:
        if self._stop:
            return True
        if self._containers or self._clients:
            return False
        return self._had_client or time.monotonic() >= self._started + self._idle_grace

    def _close(self) -> None:
        # Unlink first so new clients spawn a fresh supervisor instead of queueing on a dying socket.
        if self._listener is not None:
            path = str(self.paths.socket)
            try:
                if os.stat(path).st_ino == self._socket_ino:
                    os.unlink(path)
            except OSError:
                pass
            self._listener.close()
        for client in list(self._clients.values()):
            self._drop(client)
        signal.set_wakeup_fd(-1)
        alive = [c.id for c in self._containers.values() if c.alive]
        if alive:
            _log(f"exiting with containers still running (orphaned): {', '.join(alive)}")

    def _on_signals(self) -> None:
        assert self._wakeup_r is not None
        try:
            data = self._wakeup_r.recv(4096)
        except BlockingIOError:
            return
        if signal.SIGTERM in data:
            _log("SIGTERM: exiting")
            self._stop = True

    # -- containers --------------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            container = self._by_pid.pop(pid, None)
            if container is None:
                continue  # an orphan re-parented to us (we are a subreaper): nothing to record
            container.status = status
            container.finished_at = self._clock()
            container.drain_deadline = time.monotonic() + DRAIN_SECONDS
            if not container.pipes:
                self._finish(container)

    def _pump(self, container: _Container, fd: int, stream: str) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as err:
            _log(f"{container.id}: reading {stream}: {err.strerror}")
            data = b""
        if data:
            container.log.write(stream, data)
            return
        self._close_pipe(container, fd)
        if not container.alive and not container.pipes:
            self._finish(container)

    def _close_pipe(self, container: _Container, fd: int) -> None:
        stream = container.pipes.pop(fd)
        self._sel.unregister(fd)
        os.close(fd)
        container.log.end_stream(stream)

    def _finish_drained(self) -> None:
        now = time.monotonic()
        for container in [c for c in self._containers.values() if not c.alive]:
            if container.drain_deadline <= now:
                for fd, stream in list(container.pipes.items()):
                    self._drain_now(container, fd, stream)
                self._finish(container)

    def _drain_now(self, container: _Container, fd: int, stream: str) -> None:
        # Whatever is buffered in the pipe still belongs in the log; then give up on that pipe.
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            container.log.write(stream, data)
        self._close_pipe(container, fd)

    def _finish(self, container: _Container) -> None:
        """Log complete → run.json → event: a reader that sees the exit sees the whole log."""
        assert container.status is not None
        for fd in list(container.pipes):
            self._close_pipe(container, fd)
        container.log.close()
        code = os.waitstatus_to_exitcode(container.status)
        sig = -code if code < 0 else None
        exit_code = 128 + sig if sig is not None else code
        try:
            runfile.write_run_file(container.directory, runfile.RunRecord(
                pid=container.pid, started_at=container.started_at, exit_code=exit_code, signal=sig,
                finished_at=container.finished_at,
            ))
        except Exception as err:
            _log(f"{container.id}: {err}")
        del self._containers[container.id]
        self._broadcast({
            "event": "exit", "id": container.id, "pid": container.pid, "exit_code": exit_code,
            "signal": sig, "finished_at": container.finished_at,
        })

    def _start(self, request: dict[str, Any]) -> dict[str, Any]:
        container_id = _field(request, "id", str)
        directory = _field(request, "dir", str)
        log_options = _field(request, "log", dict)
        max_bytes = _field(log_options, "max_bytes", int)
        max_files = _field(log_options, "max_files", int)
        if max_bytes <= 0 or max_files <= 0:
            raise RequestError("log max_bytes and max_files must be positive", kind="invalid-argument")
        if container_id in self._containers:
            raise RequestError(f"container {container_id} is already running", kind="already-exists")
        if not os.path.isdir(directory):
            raise RequestError(f"container directory {directory} does not exist", kind="invalid-argument")
        try:
            plan = LaunchPlan.from_dict(_field(request, "plan", dict))
        except (KeyError, TypeError, ValueError) as err:
            raise RequestError(f"bad launch plan: {err}", kind="invalid-argument") from err

        log = ctrlogs.LogWriter(directory, max_bytes=max_bytes, max_files=max_files)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = self._launcher(plan, stdout_fd=out_w, stderr_fd=err_w)
        except LaunchError as err:
            for fd in (out_r, err_r):
                os.close(fd)
            log.close()
            code = LAUNCH_EXIT_CODES.get(err.kind, 125)
            runfile.write_run_file(directory, runfile.RunRecord(
                pid=None, started_at=None, exit_code=code, finished_at=self._clock(),
                error=str(err), error_kind=err.kind,
            ))
            raise RequestError(str(err), kind=err.kind) from err
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            log.close()
            raise
        finally:
            # Only the container may hold the write ends, or we would never see EOF.
            os.close(out_w)
            os.close(err_w)
        started_at = self._clock()
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        container = _Container(container_id, directory=directory, pid=pid, started_at=started_at,
                               log=log, pipes={out_r: "stdout", err_r: "stderr"})
        self._containers[container_id] = container
        self._by_pid[pid] = container
        self._sel.register(out_r, selectors.EVENT_READ, (container, "stdout"))
        self._sel.register(err_r, selectors.EVENT_READ, (container, "stderr"))
        runfile.write_run_file(directory, runfile.RunRecord(pid=pid, started_at=started_at))
        return {"pid": pid, "started_at": started_at}

    def _kill(self, request: dict[str, Any]) -> dict[str, Any]:
        container_id = _field(request, "id", str)
        signum = _field(request, "signal", int)
        if not 0 < signum < signal.NSIG:
            raise RequestError(f"bad signal {signum}", kind="invalid-argument")
        container = self._containers.get(container_id)
        # Not yet reaped means the pid is still this process (at worst a zombie): it cannot be recycled.
        if container is None or not container.alive:
            return {"delivered": False}
        try:
            os.kill(container.pid, signum)
        except ProcessLookupError:
            return {"delivered": False}
        return {"delivered": True}

    def _list(self) -> dict[str, Any]:
        return {"containers": {
            c.id: {"pid": c.pid, "started_at": c.started_at} for c in self._containers.values() if c.alive
        }}

    # -- clients -----------------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and friends: keep serving the clients we have
                _log(f"accept: {err}")
                return
            sock.setblocking(False)
            client = _Client(sock)
            self._clients[sock.fileno()] = client
            self._had_client = True
            self._sel.register(sock, selectors.EVENT_READ, client)

    def _on_client(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
        if mask & selectors.EVENT_READ and client.sock.fileno() >= 0:
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._drop(client)
                return
            client.inbuf += data
            while (newline := client.inbuf.find(b"\n")) >= 0 and client.sock.fileno() >= 0:
                line = bytes(client.inbuf[:newline])
                del client.inbuf[: newline + 1]
                self._handle(client, line)
            if len(client.inbuf) > MAX_REQUEST_BYTES:
                _log("dropping a client that sent an oversized request")
                self._drop(client)

    def _handle(self, client: _Client, line: bytes) -> None:
        req: Any = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise RequestError("a request must be a JSON object", kind="invalid-argument")
            req = request.get("req")
            op = request.get("op")
            if op == "start":
                reply = self._start(request)
            elif op == "kill":
                reply = self._kill(request)
            elif op == "list":
                reply = self._list()
            elif op == "hello":
                reply = {"pid": os.getpid()}
            elif op == "shutdown":
                if any(c.alive for c in self._containers.values()):
                    raise RequestError("containers are still running", kind="failed-precondition")
                self._stop = True
                reply = {}
            else:
                raise RequestError(f"unknown op {op!r}", kind="invalid-argument")
            message: dict[str, Any] = {"re": req, "ok": True, **reply}
        except RequestError as err:
            message = {"re": req, "ok": False, "error": str(err), "kind": err.kind}
        except ValueError as err:
            message = {"re": req, "ok": False, "error": f"bad request: {err}", "kind": "invalid-argument"}
        except Exception as err:  # a bug or an OS failure must not take every container down with us
            _log(f"request {req!r} failed: {err!r}")
            message = {"re": req, "ok": False, "error": f"supervisor: {err}", "kind": "internal"}
        self._send(client, message)
        if self._stop:
            self._flush(client)

    def _send(self, client: _Client, message: dict[str, Any]) -> None:
        if client.sock.fileno() < 0:
            return
        was_empty = not client.outbuf
        client.outbuf += json.dumps(message, separators=(",", ":")).encode() + b"\n"
        if len(client.outbuf) > MAX_CLIENT_BUFFER:
            _log("dropping a client that does not read its replies")
            self._drop(client)
            return
        if was_empty:
            self._flush(client)

    def _flush(self, client: _Client) -> None:
        if client.sock.fileno() < 0:
            return
        try:
            sent = client.sock.send(client.outbuf)
            del client.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(client)
            return
        self._sel.modify(client.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0),
                         client)

    def _broadcast(self, message: dict[str, Any]) -> None:
        for client in list(self._clients.values()):
            self._send(client, message)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd < 0:
            return
        self._clients.pop(fd, None)
        self._sel.unregister(client.sock)
        client.sock.close()


def _field(raw: dict[str, Any], name: str, kind: type[Any]) -> Any:
    value = raw.get(name)
    # bool is an int in Python; a JSON true is not a signal number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError(f"field {name!r} must be a {kind.__name__}", kind="invalid-argument")
    return value


def _ignore_in_handler(signum: int, frame: object) -> None:
    """The wakeup fd carries the signal; the handler only has to exist for it to be written."""


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} supervisor[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _redirect_std_streams(paths: SupervisorPaths) -> None:
    try:
        if os.stat(paths.log).st_size > MAX_OWN_LOG:
            os.replace(paths.log, f"{paths.log}.1")
    except FileNotFoundError:
        pass
    log_fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(null_fd, 0)
    os.close(null_fd)


def _become_subreaper() -> None:
    import ctypes  # only here: a one-time call, and the launcher sets it too

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _claim_root(paths: SupervisorPaths, *, timeout: float = 10.0) -> int | None:
    """Lock the pidfile for our lifetime. None means another live supervisor serves this root (its
    socket answers); waits out one that is just exiting."""
    fd = os.open(paths.pidfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if _socket_answers(paths.socket):
                os.close(fd)
                return None
            if time.monotonic() >= deadline:
                os.close(fd)
                raise TimeoutError(
                    f"{paths.pidfile} is locked but {paths.socket} does not answer") from None
            time.sleep(0.01)  # a supervisor that is exiting releases the lock within milliseconds
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def _socket_answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _say_ready() -> None:
    os.write(1, b"ready\n")
    null_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(null_fd, 1)
    os.close(null_fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.runtime.supervisor")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--launcher", help="module:function or /file.py:function (tests)")
    parser.add_argument("--idle-grace", type=float, default=DEFAULT_IDLE_GRACE,
                        help="exit after this many seconds if no client ever connects")
    args = parser.parse_args(argv)
    paths = SupervisorPaths(args.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    _redirect_std_streams(paths)
    with contextlib.suppress(PermissionError):
        os.setsid()  # fails if already a session leader (the spawner used start_new_session)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)

    pid_fd = _claim_root(paths)
    if pid_fd is None:
        _say_ready()  # idempotent spawn: the caller connects to the supervisor that is already there
        return 0
    launcher = load_launcher(args.launcher) if args.launcher else None
    _become_subreaper()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        # Three descriptors per container (two pipes, one log).
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    supervisor = Supervisor(paths.root, launcher=launcher, idle_grace=args.idle_grace)
    supervisor.listen()
    _log(f"serving {paths.socket}")
    _say_ready()
    try:
        supervisor.serve()
    finally:
        os.ftruncate(pid_fd, 0)  # the pidfile stays (the lock lives on its inode), empty means none
        _log("exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
