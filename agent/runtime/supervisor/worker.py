"""The worker: the supervisor process the agent talks to. It launches containers, pumps their logs, and
records their exits; its keeper parents them and outlives it.

The daemon (asyncio, gRPC threads, large heap) must never fork, and containers must outlive it. So this
process launches containers on request, pumps their stdout/stderr into ``ctr.log``
(``agent.runtime.logs``) and records each exit in ``run.json`` (``agent.runtime.runfile``) — also while
no daemon is connected. It is started by the keeper (``keeper.py``) as ``python -m
agent.runtime.supervisor.worker --root ROOT --channel-fd N --listen-fd M`` and is *not* a subreaper:

* every container's init is re-parented to the keeper, which reaps it and sends its wait status here;
* right after each launch (before the init can be re-parented, see ``launch.launch``'s adopter) the
  worker gives the keeper custody of the init's pidfd and a duplicate of both log-pipe read ends;
* when a worker dies, the keeper starts another and hands it every container in custody with any exit
  reaped meanwhile; ``adoption.py`` turns that into this worker's table. Clients that connected in the
  meantime waited in the listener's backlog (the keeper holds it too).
* kills go through pidfds (``pidfd_send_signal``), so a recycled pid is never signalled.

If the keeper dies, the containers are re-parented to the host's init. This worker then re-executes
itself as a keeper (``_rehome``): same pid, the listener and every container's descriptors inherited,
a manifest in a memfd. The new keeper starts a new worker, which learns the exits of those containers
— now orphans — through their pidfds (``exitstatus.py``), reporting an exit whose status the kernel
can no longer give as lost (exit code 255) rather than invent one. Containers launched after that are
the new keeper's again.

Protocol on ``ROOT/supervisor.sock`` (0600), newline-delimited JSON:

* requests ``{"req": n, "op": ..., ...}``; replies ``{"re": n, "ok": true, ...}`` or
  ``{"re": n, "ok": false, "error": msg, "kind": k}``;
* ops: ``hello`` → ``{pid, keeper}``; ``start {id, dir, plan, log: {max_bytes, max_files}}`` →
  ``{pid, started_at}`` (launch failures: kind ``not-found``/``not-executable``/``setup``, with run.json
  written); ``kill {id, signal}`` → ``{delivered}``; ``list`` → ``{containers: {id: {pid, started_at}}}``
  (every container whose exit has not been announced yet); ``shutdown`` → ok and exit if nothing is
  supervised, else kind ``failed-precondition``;
* events ``{"event": "exit", "id", "pid", "exit_code", "signal", "finished_at", "lost"}`` to every
  client, sent after run.json and the log are complete.

Lifetime: exits 0 (and the keeper with it) when nothing is supervised and no client is connected (after
the first client, or after ``--idle-grace`` seconds if none came). SIGTERM makes it exit at once with
code 75, and the keeper starts a fresh worker: a way to load new worker code without touching
containers.

Memory matters (every container adds to it): the module imports only the standard library,
``agent.errors``, ``agent.runtime.{plan,logs,runfile}`` (and ``agent.rootfs.overlay`` through the
plan), this package and, lazily, the launcher — never grpc or protobuf — and per-container state is a
slotted object, a pidfd, two pipe descriptors and a log fd.
"""

from __future__ import annotations

import argparse
import contextlib
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
from pathlib import Path
from typing import Any, Protocol

from agent.errors import LaunchError
from agent.runtime import logs as ctrlogs
from agent.runtime import runfile
from agent.runtime.plan import LaunchPlan
from agent.runtime.supervisor import channel, exitstatus, keeper
from agent.runtime.supervisor.adoption import Adoption, ContainerRecord, Handed, plan_adoption
from agent.runtime.supervisor.ownlog import OwnLog
from agent.runtime.supervisor.paths import SupervisorPaths

# How long to keep pumping a dead container's pipes. Every process of a pid namespace dies with its
# pid 1, so EOF normally follows the exit at once; a process that escaped (host pid ns) must not pin us.
DRAIN_SECONDS = 2.0
# A client that cannot keep up (or never reads) is dropped rather than buffered without bound.
MAX_CLIENT_BUFFER = 4 << 20
MAX_REQUEST_BYTES = 4 << 20
DEFAULT_IDLE_GRACE = 60.0
# The keeper answers within microseconds; this only bounds a wedged one.
KEEPER_TIMEOUT = 10.0
LAUNCH_EXIT_CODES = {"not-found": 127, "not-executable": 126, "setup": 125}
# What an exit whose status cannot be known is reported as: containerd's "unknown exit status".
LOST_EXIT_CODE = 255
LOST_MESSAGE = ("the container's exit status was lost: its supervisor's keeper had died, and the kernel "
                "no longer had the status when the container exited")
EXIT_RESTART_ME = 75  # any code but 0 makes the keeper start a new worker
# How often a run record that could not be written (a full disk) is tried again.
RUN_FILE_RETRY_SECONDS = 1.0


class Launcher(Protocol):
    """``agent.runtime.launch.launch``'s shape: start ``plan`` with the given output fds and return the
    host pid of its pid 1, having called ``adopter(pid, pidfd)`` before that pid 1 is re-parented away
    from the launcher's intermediate; raise LaunchError on failure, leaving nothing running."""

    def __call__(self, plan: LaunchPlan, *, stdout_fd: int, stderr_fd: int,
                 adopter: Callable[[int, int], None]) -> int: ...


def _real_launcher(plan: LaunchPlan, *, stdout_fd: int, stderr_fd: int,
                   adopter: Callable[[int, int], None]) -> int:
    from agent.runtime import launch  # lazily: it pulls in agent.linux (ctypes)

    pid: int = launch.launch(plan, stdout_fd=stdout_fd, stderr_fd=stderr_fd, adopter=adopter)
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
    """A container from launch (or adoption) until its exit has been recorded and announced."""

    __slots__ = ("drain_deadline", "exit_event", "finished_at", "log", "lost", "pid", "pidfd", "pipes",
                 "record", "status", "unwritten")

    def __init__(self, record: ContainerRecord, *, pid: int, pidfd: int, log: ctrlogs.LogWriter,
                 pipes: dict[int, str]) -> None:
        self.record = record
        self.pid = pid
        self.pidfd = pidfd
        self.log = log
        self.pipes = pipes  # read fd → stream name, until that pipe hits EOF
        self.status: int | None = None  # wait status once it has exited
        self.lost = False  # exited, but its status could not be learned
        self.finished_at: float | None = None
        self.drain_deadline = 0.0
        # The run record still to be written (the disk was full): retried until it is on disk.
        self.unwritten: runfile.RunRecord | None = None
        # Set once the exit has been announced to clients; the container is forgotten (released to the
        # keeper) only when its exit is also on disk, so a full disk never loses an exit.
        self.exit_event: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def alive(self) -> bool:
        return self.status is None and not self.lost


class _Client:
    __slots__ = ("inbuf", "outbuf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()


class Worker:
    """The event loop. ``take_handover()``, ``listen()``, then ``serve()`` until it decides to exit."""

    def __init__(self, root: Path, *, listener: socket.socket, keeper_link: socket.socket | None,
                 launcher: Launcher | None = None, launcher_spec: str | None = None,
                 idle_grace: float = DEFAULT_IDLE_GRACE, clock: Callable[[], float] = time.time) -> None:
        self.paths = SupervisorPaths(root)
        self._launcher: Launcher = launcher or _real_launcher
        self._launcher_spec = launcher_spec
        self._idle_grace = idle_grace
        self._clock = clock
        self._listener = listener
        self._keeper = keeper_link
        self._sel = selectors.DefaultSelector()
        self._containers: dict[str, _Container] = {}
        self._by_pid: dict[int, _Container] = {}
        self._clients: dict[int, _Client] = {}
        self._had_client = False
        self._started = time.monotonic()
        self._exit_code: int | None = None
        self._wakeup_r: socket.socket | None = None
        self._wakeup_w: socket.socket | None = None
        self._retry_at: float | None = None  # monotonic time to retry unwritten run records

    # -- setup -------------------------------------------------------------------------------------

    def take_handover(self) -> None:
        """Read the keeper's handover (``A``... ``Z``) and rebuild the table before serving anyone."""
        if self._keeper is None:
            return
        handed: list[Handed] = []
        self._keeper.settimeout(KEEPER_TIMEOUT)
        try:
            while True:
                message = channel.receive(self._keeper)
                if message is None:
                    _log("the keeper went away during the handover")
                    self._keeper.close()
                    self._keeper = None
                    break
                if message.kind == channel.DONE:
                    break
                if message.kind != channel.ADOPT or message.pid is None or message.blob is None:
                    _log(f"ignoring {message!r} during the handover")
                    _close_all(message.fds)
                    continue
                handed.append(Handed(pid=message.pid, status=message.status,
                                     finished_at=message.finished_at, blob=message.blob, fds=message.fds))
        finally:
            if self._keeper is not None:
                self._keeper.setblocking(False)
        self._adopt(handed)

    def _adopt(self, handed: list[Handed]) -> None:
        plan = plan_adoption(handed)
        for rejected in plan.rejected:
            item = rejected.handed
            _log(f"releasing container pid {item.pid}: {rejected.reason}")
            if item.status is None:
                # Nothing could supervise it (no readable record): it must not run on unseen.
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(item.fds[0], signal.SIGKILL)
            _close_all(item.fds)
            self._release(item.pid)
        skipped = 0
        for adoption in plan.running + plan.exited:
            current = _read_run_file(adoption.record.directory)
            if current is not None and current.pid == adoption.pid and current.finished:
                # Recorded by a worker that died before releasing it (an orphan's exit, timed by that
                # worker's own clock), or declared lost by the agent: keep that record, so the agent
                # never sees a second, different exit.
                _close_all(adoption.fds)
                self._release(adoption.pid)
                skipped += 1
                continue
            try:
                container = self._add(adoption)
            except OSError as err:
                # Its log cannot be opened (its directory is gone: nobody knows this container any
                # more). One such container must not crash every worker the keeper starts.
                _log(f"cannot supervise container {adoption.record.id} (pid {adoption.pid}): {err}")
                if adoption.status is None:
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(adoption.fds[0], signal.SIGKILL)
                _close_all(adoption.fds)
                self._release(adoption.pid)
                skipped += 1
                continue
            if adoption.status is None:
                if current is None or current.pid != adoption.pid:
                    # The previous worker died between the launch and writing run.json.
                    self._write_run_file(container, runfile.RunRecord(
                        pid=container.pid, started_at=container.record.started_at))
                if adoption.record.orphan:
                    self._watch_pidfd(container)
                continue
            container.status = adoption.status
            container.finished_at = adoption.finished_at
            # Exited while no worker ran. Its pid namespace died with it, so what its pipes hold is
            # all there is: record it now, before any client can ask.
            for fd, stream in list(container.pipes.items()):
                self._drain_now(container, fd, stream)
            self._finish(container)
        if handed:
            _log(f"adopted {len(plan.running)} running and {len(plan.exited)} exited containers"
                 + (f" ({skipped} already recorded or gone)" if skipped else "")
                 + (f", released {len(plan.rejected)}" if plan.rejected else ""))

    def _add(self, adoption: Adoption) -> _Container:
        record = adoption.record
        pidfd, out_r, err_r = adoption.fds
        pipes = {out_r: "stdout", err_r: "stderr"}
        for fd in pipes:
            os.set_blocking(fd, False)
        log = ctrlogs.LogWriter(record.directory, max_bytes=record.log_max_bytes,
                                max_files=record.log_max_files, report=_log)
        container = _Container(record, pid=adoption.pid, pidfd=pidfd, log=log, pipes=pipes)
        self._containers[record.id] = container
        self._by_pid[adoption.pid] = container
        for fd, stream in pipes.items():
            self._sel.register(fd, selectors.EVENT_READ, (container, stream))
        return container

    def listen(self) -> None:
        """Serve the listener and install signal handling; call before serve()."""
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        if self._keeper is not None:
            self._sel.register(self._keeper, selectors.EVENT_READ, "keeper")
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._sel.register(self._wakeup_r, selectors.EVENT_READ, "wakeup")
        # Handlers do nothing: the C-level handler writes the signal number to the wakeup fd, and the
        # loop acts on it between selects, in the one thread.
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, _ignore_in_handler)
        if self._keeper is not None:
            self._send_keeper(channel.ready())

    # -- main loop ---------------------------------------------------------------------------------

    def serve(self) -> int:
        """Run until idle (returns 0), SIGTERM (75) or a ``shutdown`` request (0)."""
        if self._keeper is None:
            self._keeper_lost()  # it died during the handover
        while self._exit_code is None:
            if self._idle():
                self._exit_code = 0
                break
            for key, mask in self._sel.select(self._timeout()):
                current = self._sel.get_map().get(key.fd)
                if current is None or current.data is not key.data:
                    # Unregistered by an earlier event of this batch (a finished container's pidfd
                    # or pipe), and its number perhaps already reused by another registration.
                    continue
                tag = key.data
                if tag == "listen":
                    self._accept()
                elif tag == "wakeup":
                    self._on_signals()
                elif tag == "keeper":
                    self._on_keeper()
                elif isinstance(tag, _Client):
                    self._on_client(tag, mask)
                elif isinstance(tag, _Container):
                    self._on_pidfd(tag)
                else:
                    container, stream = tag
                    self._pump(container, key.fd, stream)
            self._finish_drained()
            self._retry_run_files()
        self._close()
        return self._exit_code

    def _timeout(self) -> float | None:
        deadlines = [c.drain_deadline for c in self._containers.values()
                     if not c.alive and c.exit_event is None]
        if self._retry_at is not None:
            deadlines.append(self._retry_at)
        if not self._had_client:
            deadlines.append(self._started + self._idle_grace)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _idle(self) -> bool:
        if self._containers or self._clients:
            return False
        return self._had_client or time.monotonic() >= self._started + self._idle_grace

    def _close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        signal.set_wakeup_fd(-1)
        for container in self._containers.values():
            container.log.flush_partial()
        alive = [c.id for c in self._containers.values()]
        if alive:
            # Exits announced but not yet on disk stay with the keeper: the next worker records them.
            _log(f"exiting with containers for the next worker: {', '.join(alive)}")

    def _on_signals(self) -> None:
        assert self._wakeup_r is not None
        try:
            data = self._wakeup_r.recv(4096)
        except BlockingIOError:
            return
        if signal.SIGTERM in data:
            _log("SIGTERM: exiting; the keeper starts a new worker")
            self._exit_code = EXIT_RESTART_ME

    # -- the keeper --------------------------------------------------------------------------------

    def _on_keeper(self) -> None:
        while self._keeper is not None:
            try:
                message = channel.receive(self._keeper)
            except BlockingIOError:
                return
            except ValueError as err:
                _log(f"ignoring a bad message from the keeper: {err}")
                continue
            except OSError as err:
                _log(f"keeper channel: {err}")
                message = None
            if message is None:
                self._keeper_lost()
                return
            if message.kind == channel.EXIT and message.pid is not None and message.status is not None:
                container = self._by_pid.get(message.pid)
                # Unknown pids: a launch that failed after the hand-over (already released).
                if container is not None and container.alive:
                    assert message.finished_at is not None
                    self._exited(container, status=message.status, finished_at=message.finished_at)
            else:
                _close_all(message.fds)
                _log(f"ignoring unexpected message {message.kind!r} from the keeper")

    def _send_keeper(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        """Send to the keeper, waiting (bounded) if its queue is full. Raises OSError if it is gone."""
        assert self._keeper is not None
        deadline = time.monotonic() + KEEPER_TIMEOUT
        while True:
            try:
                channel.send(self._keeper, data, fds)
                return
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the supervisor's keeper does not read its channel") from None
                with selectors.DefaultSelector() as waiter:
                    waiter.register(self._keeper, selectors.EVENT_WRITE)
                    waiter.select(remaining)

    def _release(self, pid: int) -> None:
        """Tell the keeper it can forget ``pid`` (its exit is recorded, or its launch failed)."""
        if self._keeper is None:
            return
        try:
            self._send_keeper(channel.drop(pid))
        except OSError as err:
            _log(f"keeper channel: {err}")  # a dead keeper shows up as end of file on the channel

    def _keeper_lost(self) -> None:
        """The keeper died: its containers now belong to the host's init. Record what has exited, then
        become the keeper ourselves (``_rehome``); if even that fails, carry on without one."""
        _log("the keeper died; taking its place")
        if self._keeper is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._keeper)
            self._keeper.close()
            self._keeper = None
        for container in [c for c in self._containers.values() if not c.alive]:
            for fd, stream in list(container.pipes.items()):
                self._drain_now(container, fd, stream)
            self._finish(container)
        self._rehome()
        # Still here: exec failed. Supervise what we have through pidfds (re-armed: one that turned
        # readable while waiting for the keeper's report fires again); containers launched from now on
        # are re-parented to the host's init too, and handled the same way.
        for container in self._containers.values():
            container.record = container.record.as_orphan()
            self._watch_pidfd(container)

    def _rehome(self) -> None:
        """Re-execute as a keeper (same pid) holding every container: it starts a fresh worker, and
        containers launched after that are its children again. Returns only if that failed."""
        inherit: list[int] = [self._listener.fileno()]
        placeholders: list[int] = []
        memfd: int | None = None
        try:
            manifest: list[bytes] = []
            for container in self._containers.values():
                container.log.flush_partial()
                by_stream = {stream: fd for fd, stream in container.pipes.items()}
                fds = [container.pidfd]
                for stream in ctrlogs.STREAMS:
                    fd = by_stream.get(stream)
                    if fd is None:
                        # That pipe already hit end of file: the successor reads end of file here.
                        fd = os.open(os.devnull, os.O_RDONLY)
                        placeholders.append(fd)
                    fds.append(fd)
                inherit += fds
                manifest.append(channel.resume_line(container.pid, tuple(fds),
                                                    container.record.as_orphan().to_blob()))
            memfd = os.memfd_create("shoal-keeper-manifest", 0)
            data = b"".join(manifest)
            while data:
                data = data[os.write(memfd, data):]
            for fd in [*inherit, memfd]:
                os.set_inheritable(fd, True)
            argv = [sys.executable, *keeper.interpreter_flags(), "-m", "agent.runtime.supervisor",
                    "--root", str(self.paths.root), "--resume-fd", str(memfd),
                    "--listen-fd", str(self._listener.fileno()), "--idle-grace", repr(self._idle_grace)]
            if self._launcher_spec:
                argv += ["--launcher", self._launcher_spec]
            _log(f"re-executing as the keeper with {len(manifest)} containers")
            os.execv(sys.executable, argv)
        except Exception as err:  # whatever it was, the containers still need supervising
            _log(f"cannot re-execute as the keeper ({err!r}); supervising without one")
            _close_all(tuple(placeholders) + ((memfd,) if memfd is not None else ()))
            for fd in inherit:
                with contextlib.suppress(OSError):
                    os.set_inheritable(fd, False)

    # -- containers --------------------------------------------------------------------------------

    def _watch_pidfd(self, container: _Container) -> None:
        """No keeper will report this exit: the pidfd turns readable when the process exits."""
        with contextlib.suppress(KeyError):
            self._sel.register(container.pidfd, selectors.EVENT_READ, container)

    def _on_pidfd(self, container: _Container) -> None:
        """An orphan's pid 1 has exited: learn its status through the pidfd, or report it lost."""
        self._sel.unregister(container.pidfd)
        if not container.alive:
            return
        status = exitstatus.exit_status(container.pid, container.pidfd)
        finished_at = self._clock()
        if status is None:
            _log(f"{container.id}: exited; its status is lost")
            container.lost = True
            container.finished_at = finished_at
            container.drain_deadline = time.monotonic() + DRAIN_SECONDS
            if not container.pipes:
                self._finish(container)
            return
        self._exited(container, status=status, finished_at=finished_at)

    def _exited(self, container: _Container, *, status: int, finished_at: float) -> None:
        container.status = status
        container.finished_at = finished_at
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
        for container in [c for c in self._containers.values() if not c.alive and c.exit_event is None]:
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

    def _forget(self, container: _Container) -> None:
        """Drop a container from the table and release it to the keeper."""
        del self._containers[container.id]
        self._by_pid.pop(container.pid, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(container.pidfd)
        os.close(container.pidfd)
        self._release(container.pid)

    def _finish(self, container: _Container) -> None:
        """Log complete → run.json → event → release: a reader that sees the exit sees the whole log.

        If run.json cannot be written (a full disk), the exit is announced anyway — the agent must learn
        of it — and the container stays in the table (and in the keeper's custody) with its record kept
        in memory, retried every ``RUN_FILE_RETRY_SECONDS``: it is released only once its exit is on
        disk, and a client that connects meanwhile is told of the exit again (``_list``)."""
        if container.exit_event is not None:
            return  # already announced; waiting for its record to be written
        for fd in list(container.pipes):
            self._close_pipe(container, fd)
        container.log.close()
        lost = LOST_MESSAGE if container.lost else None
        if container.status is not None:
            code = os.waitstatus_to_exitcode(container.status)
            sig = -code if code < 0 else None
            exit_code = 128 + sig if sig is not None else code
        else:
            exit_code, sig = LOST_EXIT_CODE, None
        record = container.record
        written = self._write_run_file(container, runfile.RunRecord(
            pid=container.pid, started_at=record.started_at, exit_code=exit_code, signal=sig,
            finished_at=container.finished_at, lost=lost,
        ))
        container.exit_event = {
            "event": "exit", "id": record.id, "pid": container.pid, "exit_code": exit_code,
            "signal": sig, "finished_at": container.finished_at, "lost": lost,
        }
        self._broadcast(container.exit_event)
        if written:
            # Last: the event is not delayed by waking the keeper. A worker that dies before this leaves
            # the exit with the keeper, and the next one keeps the run.json written here.
            self._forget(container)

    def _write_run_file(self, container: _Container, record: runfile.RunRecord) -> bool:
        """Write ``record`` now, or keep it to retry (a full disk); True once it is on disk."""
        try:
            runfile.write_run_file(container.record.directory, record)
        except Exception as err:
            if not os.path.isdir(container.record.directory):
                # Removed (the agent deleted the container): the record has no home any more.
                container.unwritten = None
                return True
            if container.unwritten is None:
                _log(f"{container.id}: {err}; keeping the record and retrying every "
                     f"{RUN_FILE_RETRY_SECONDS:g}s")
            container.unwritten = record
            if self._retry_at is None:
                self._retry_at = time.monotonic() + RUN_FILE_RETRY_SECONDS
            return False
        if container.unwritten is not None:
            _log(f"{container.id}: run record written after all")
            container.unwritten = None
        return True

    def _retry_run_files(self) -> None:
        """Try again every run record a full disk refused; release the exited ones that made it."""
        if self._retry_at is None or time.monotonic() < self._retry_at:
            return
        self._retry_at = None
        for container in [c for c in self._containers.values() if c.unwritten is not None]:
            record = container.unwritten
            assert record is not None
            if self._write_run_file(container, record) and container.exit_event is not None:
                self._forget(container)
            elif container.unwritten is not None:
                break  # the disk is still full: one attempt per round is enough to know

    def _start(self, request: dict[str, Any]) -> dict[str, Any]:
        container_id = _field(request, "id", str)
        directory = _field(request, "dir", str)
        log_options = _field(request, "log", dict)
        max_bytes = _field(log_options, "max_bytes", int)
        max_files = _field(log_options, "max_files", int)
        if max_bytes <= 0 or max_files <= 0:
            raise RequestError("log max_bytes and max_files must be positive", kind="invalid-argument")
        previous = self._containers.get(container_id)
        if previous is not None and previous.exit_event is not None:
            # Its exit was announced but a full disk kept it from run.json: the agent, starting it
            # again, has applied that exit, and this run's record replaces it.
            _log(f"{container_id}: started again before its last exit could be written")
            self._forget(previous)
        elif previous is not None:
            raise RequestError(f"container {container_id} is already running", kind="already-exists")
        if not os.path.isdir(directory):
            raise RequestError(f"container directory {directory} does not exist", kind="invalid-argument")
        try:
            plan = LaunchPlan.from_dict(_field(request, "plan", dict))
        except (KeyError, TypeError, ValueError) as err:
            raise RequestError(f"bad launch plan: {err}", kind="invalid-argument") from err

        log = ctrlogs.LogWriter(directory, max_bytes=max_bytes, max_files=max_files, report=_log)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        adopted: list[tuple[ContainerRecord, int, int]] = []
        # Built before the launch: the adopter runs while the container waits on it. started_at is
        # therefore when the start began, a few milliseconds before the exec.
        record = ContainerRecord(id=container_id, directory=directory, started_at=self._clock(),
                                 log_max_bytes=max_bytes, log_max_files=max_files,
                                 orphan=self._keeper is None)
        blob = record.to_blob()

        def adopter(pid: int, pidfd: int) -> None:
            # Called while the launcher's intermediate still parents the init: custody reaches the
            # keeper before the init does, so the keeper recognises its exit (custody.py).
            own = os.dup(pidfd)
            try:
                if self._keeper is not None:
                    self._send_keeper(channel.hold(pid, blob), (pidfd, out_r, err_r))
            except BaseException:
                os.close(own)
                raise
            adopted.append((record, pid, own))

        try:
            pid = self._launcher(plan, stdout_fd=out_w, stderr_fd=err_w, adopter=adopter)
        except LaunchError as err:
            for fd in (out_r, err_r):
                os.close(fd)
            log.close()
            for _, held_pid, own in adopted:
                os.close(own)
                self._release(held_pid)
            code = LAUNCH_EXIT_CODES.get(err.kind, 125)
            try:
                runfile.write_run_file(directory, runfile.RunRecord(
                    pid=None, started_at=None, exit_code=code, finished_at=self._clock(),
                    error=str(err), error_kind=err.kind,
                ))
            except Exception as write_err:
                # Nothing runs; the reply below tells the agent why, which is what matters.
                _log(f"{container_id}: {write_err}")
            raise RequestError(str(err), kind=err.kind) from err
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            log.close()
            for _, held_pid, own in adopted:
                os.close(own)
                self._release(held_pid)
            raise
        finally:
            # Only the container may hold the write ends, or we would never see EOF.
            os.close(out_w)
            os.close(err_w)
        record, held_pid, pidfd = adopted[-1]
        assert held_pid == pid, "the launcher returned a pid it did not hand over"
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        container = _Container(record, pid=pid, pidfd=pidfd, log=log,
                               pipes={out_r: "stdout", err_r: "stderr"})
        self._containers[container_id] = container
        self._by_pid[pid] = container
        self._sel.register(out_r, selectors.EVENT_READ, (container, "stdout"))
        self._sel.register(err_r, selectors.EVENT_READ, (container, "stderr"))
        if record.orphan:
            self._watch_pidfd(container)
        # It runs now whatever happens to this write: a full disk keeps the record to retry, and the
        # reply (and ``list``) tell the agent it runs.
        self._write_run_file(container, runfile.RunRecord(pid=pid, started_at=record.started_at))
        return {"pid": pid, "started_at": record.started_at}

    def _kill(self, request: dict[str, Any]) -> dict[str, Any]:
        container_id = _field(request, "id", str)
        signum = _field(request, "signal", int)
        if not 0 < signum < signal.NSIG:
            raise RequestError(f"bad signal {signum}", kind="invalid-argument")
        container = self._containers.get(container_id)
        if container is None or not container.alive:
            return {"delivered": False}
        try:
            # Through the pidfd: once the process is reaped it fails with ESRCH, whoever got its pid.
            signal.pidfd_send_signal(container.pidfd, signum)
        except ProcessLookupError:
            return {"delivered": False}
        return {"delivered": True}

    def _list(self) -> dict[str, Any]:
        # Exited but not yet announced counts as running: its exit event is still to come, and an
        # agent that asked now would otherwise find a run.json without the exit and think it lost.
        return {"containers": {
            c.id: {"pid": c.pid, "started_at": c.record.started_at} for c in self._containers.values()
        }}

    # -- clients -----------------------------------------------------------------------------------

    def _accept(self) -> None:
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
        announce: list[dict[str, Any]] = []
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
                announce = [c.exit_event for c in self._containers.values() if c.exit_event is not None]
            elif op == "hello":
                reply = {"pid": os.getpid(), "keeper": os.getppid() if self._keeper is not None else None}
            elif op == "shutdown":
                if self._containers:
                    raise RequestError("containers are still running", kind="failed-precondition")
                self._exit_code = 0
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
        for event in announce:
            # Listed as running, because their exit is not on disk yet: this client (an agent that just
            # connected) learns of the exit right after the listing, as if it happened now.
            self._send(client, event)
        if self._exit_code is not None:
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


def _read_run_file(directory: str) -> runfile.RunRecord | None:
    try:
        return runfile.read_run_file(directory)
    except Exception:
        return None  # unreadable: the agent quarantines it; we supervise as if it were not there


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _ignore_in_handler(signum: int, frame: object) -> None:
    """The wakeup fd carries the signal; the handler only has to exist for it to be written."""


_OWN_LOG = OwnLog("worker")


def _log(message: str) -> None:
    """One line to supervisor.log; a full disk drops it (counted), never raises (see ``ownlog``)."""
    _OWN_LOG.line(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.runtime.supervisor.worker",
                                     description="started by the keeper, never by hand")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--channel-fd", required=True, type=int, help="the keeper's seqpacket channel")
    parser.add_argument("--listen-fd", required=True, type=int, help="the listening supervisor.sock")
    parser.add_argument("--launcher", help="module:function or /file.py:function (tests)")
    parser.add_argument("--idle-grace", type=float, default=DEFAULT_IDLE_GRACE,
                        help="exit after this many seconds if no client ever connects")
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    # Inherited from the keeper: ours alone from here, never a container's.
    listener = socket.socket(fileno=args.listen_fd)
    keeper_link = socket.socket(fileno=args.channel_fd)
    for sock in (listener, keeper_link):
        sock.set_inheritable(False)
    launcher = load_launcher(args.launcher) if args.launcher else None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        # Four descriptors per container (pidfd, two pipes, one log).
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    worker = Worker(args.root, listener=listener, keeper_link=keeper_link, launcher=launcher,
                    launcher_spec=args.launcher, idle_grace=args.idle_grace)
    worker.take_handover()
    worker.listen()
    _log(f"serving {worker.paths.socket}")
    code = worker.serve()
    _log(f"exiting ({code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
