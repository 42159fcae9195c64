"""The daemon's side of the supervisor: find or spawn it, then talk to it over its socket with asyncio.

``connect_or_spawn`` is the only way in. Requests from many tasks share one connection and are matched to
replies by request id; exit events arrive on the same stream and are queued for ``events()``. If the
connection breaks (the supervisor's worker died), every pending call fails with ``ShoalError`` and
``events()`` ends: the daemon then calls ``connect_or_spawn`` again — which reaches the replacement worker
the keeper starts, since the keeper holds the listening socket — and reconciles from run.json files
(exits that happened meanwhile are recorded there). See ``agent.runtime.supervisor.worker`` for the
protocol.

The supervisor's keeper is spawned as our child (``start_new_session`` so terminal signals don't reach
it, ``close_fds`` so it cannot pin the daemon's sockets); we reap it through a pidfd if it exits while we
run, and if we die first it is re-parented and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from agent import private_root
from agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument, LaunchError, ShoalError
from agent.runtime.helper_env import helper_environment
from agent.runtime.plan import LaunchPlan
from agent.runtime.supervisor.paths import SupervisorPaths

SPAWN_TIMEOUT = 10.0
_READ_LIMIT = 16 << 20
_LAUNCH_KINDS = frozenset({"not-found", "not-executable", "setup"})


@dataclass(frozen=True)
class StartResult:
    pid: int
    started_at: float


@dataclass(frozen=True)
class RunningInfo:
    pid: int
    started_at: float


@dataclass(frozen=True)
class ExitEvent:
    """A container's pid 1 exited; run.json already says so and its log is complete."""

    container_id: str
    pid: int
    exit_code: int  # 128 + signal if killed; 255 if lost
    signal: int | None
    finished_at: float
    lost: str | None = None  # why the exit status could not be learned (then exit_code is 255)


def _error(message: str, kind: str) -> ShoalError:
    if kind in _LAUNCH_KINDS:
        return LaunchError(message, kind=kind)
    if kind == "invalid-argument":
        return InvalidArgument(message)
    if kind == "already-exists":
        return AlreadyExists(message)
    if kind == "failed-precondition":
        return FailedPrecondition(message)
    return ShoalError(message)


class SupervisorClient:
    """One connection to the supervisor. Safe to use from many tasks of one event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[ExitEvent | None] = asyncio.Queue()
        self._lost: ShoalError | None = None
        self._read_task = asyncio.create_task(self._read_loop(), name="supervisor-reader")

    async def hello(self) -> int:
        """Round trip; returns the pid of the supervisor's worker (the process serving us)."""
        reply = await self._call({"op": "hello"})
        return int(reply["pid"])

    async def start(self, container_id: str, *, directory: Path, plan: LaunchPlan, log_max_bytes: int,
                    log_max_files: int) -> StartResult:
        """Launch ``plan`` with its output going to ``directory/ctr.log``. Raises LaunchError (with
        ``kind``) if it could not start — run.json then records the failure — or AlreadyExists."""
        reply = await self._call({
            "op": "start", "id": container_id, "dir": str(directory), "plan": asdict(plan),
            "log": {"max_bytes": log_max_bytes, "max_files": log_max_files},
        })
        return StartResult(pid=int(reply["pid"]), started_at=float(reply["started_at"]))

    async def kill(self, container_id: str, signal: int) -> bool:
        """Signal the container's pid 1 if it is still alive; False if it is not (nothing was sent)."""
        reply = await self._call({"op": "kill", "id": container_id, "signal": int(signal)})
        return bool(reply["delivered"])

    async def list_running(self) -> dict[str, RunningInfo]:
        """Every container whose exit has not been announced yet (one that has just exited counts until
        its exit event, which follows)."""
        reply = await self._call({"op": "list"})
        return {
            cid: RunningInfo(pid=int(info["pid"]), started_at=float(info["started_at"]))
            for cid, info in reply["containers"].items()
        }

    async def shutdown(self) -> None:
        """Ask the supervisor to exit now; FailedPrecondition if containers are still running."""
        await self._call({"op": "shutdown"})

    async def events(self) -> AsyncIterator[ExitEvent]:
        """Exit events until the connection ends. Meant for one consumer."""
        while True:
            event = await self._events.get()
            if event is None:
                self._events.put_nowait(None)  # a later call to events() ends at once too
                return
            yield event

    @property
    def connected(self) -> bool:
        return self._lost is None

    async def close(self) -> None:
        self._fail(ShoalError("the supervisor connection was closed"))
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._read_task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._lost is not None:
            raise ShoalError(str(self._lost))
        req = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req] = future
        try:
            self._writer.write(json.dumps({"req": req, **request}, separators=(",", ":")).encode() + b"\n")
            await self._writer.drain()
            reply = await future
        except (ConnectionError, OSError) as err:
            self._fail(ShoalError(f"lost the connection to the supervisor: {err}"))
            raise ShoalError(f"lost the connection to the supervisor: {err}") from err
        finally:
            self._pending.pop(req, None)
        if not reply.get("ok"):
            raise _error(str(reply.get("error", "supervisor error")), str(reply.get("kind", "")))
        return reply

    async def _read_loop(self) -> None:
        error = ShoalError("the supervisor went away (connection closed)")
        try:
            while True:
                line = await self._reader.readline()
                if not line.endswith(b"\n"):
                    break
                message = json.loads(line)
                if "re" in message:
                    future = self._pending.get(message["re"])
                    if future is not None and not future.done():
                        future.set_result(message)
                elif message.get("event") == "exit":
                    self._events.put_nowait(ExitEvent(
                        container_id=str(message["id"]), pid=int(message["pid"]),
                        exit_code=int(message["exit_code"]),
                        signal=None if message.get("signal") is None else int(message["signal"]),
                        finished_at=float(message["finished_at"]),
                        lost=None if message.get("lost") is None else str(message["lost"]),
                    ))
        except (ConnectionError, OSError, ValueError, KeyError, TypeError) as err:
            error = ShoalError(f"the supervisor connection broke: {err}")
        finally:
            self._fail(error)

    def _fail(self, error: ShoalError) -> None:
        if self._lost is not None:
            return
        self._lost = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ShoalError(str(error)))
        self._events.put_nowait(None)


async def connect_or_spawn(root: Path, *, python: str = sys.executable, launcher: str | None = None,
                           timeout: float = SPAWN_TIMEOUT) -> SupervisorClient:
    """Connect to the supervisor of ``root``, spawning it first if none is running.

    Concurrent callers (tasks or processes) serialize on ``ROOT/supervisor.lock`` so one supervisor is
    spawned. While its keeper lives, the socket accepts connections even between two workers (the keeper
    holds the listener): ``hello`` is then answered by the next worker, and nothing is spawned. A
    supervisor that is exiting just as we connect fails the ``hello`` round trip; we retry.
    ``launcher`` (``module:function``) replaces the real launcher; tests use it.
    """
    paths = SupervisorPaths(Path(root))
    for _ in range(3):
        client = await _try_connect(paths)
        if client is None:
            async with _spawn_lock(paths, timeout=timeout):
                client = await _try_connect(paths)
                if client is None:
                    await _spawn(paths, python=python, launcher=launcher, timeout=timeout)
                    client = await _try_connect(paths)
        if client is None:
            continue
        try:
            async with asyncio.timeout(timeout):
                await client.hello()
            return client
        except (ShoalError, TimeoutError):
            await client.close()
    raise ShoalError(f"cannot reach the supervisor at {paths.socket}; see {paths.log}")


async def _try_connect(paths: SupervisorPaths) -> SupervisorClient | None:
    try:
        reader, writer = await asyncio.open_unix_connection(str(paths.socket), limit=_READ_LIMIT)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    return SupervisorClient(reader, writer)


@contextlib.asynccontextmanager
async def _spawn_lock(paths: SupervisorPaths, *, timeout: float) -> AsyncIterator[None]:
    paths.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ShoalError(f"{paths.lock} stayed locked for {timeout:.0f}s") from None
                # Polling, not a blocking flock in a thread: a cancelled waiter must not keep the lock.
                await asyncio.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


async def _spawn(paths: SupervisorPaths, *, python: str, launcher: str | None, timeout: float) -> None:
    # -P: never import from the daemon's working directory (``-m`` would put it first on sys.path).
    argv = [python, "-P", "-m", "agent.runtime.supervisor", "--root", str(paths.root)]
    if launcher:
        argv += ["--launcher", launcher]
    # Errors before the supervisor redirects its own stderr (e.g. an import failure) land in its log too;
    # if a full disk leaves no room for the log file, the supervisor still starts (without it).
    try:
        log: IO[bytes] = open(paths.log, "ab", opener=private_root.open_private)  # noqa: SIM115
    except OSError:
        log = open(os.devnull, "ab")  # noqa: SIM115
    with log:
        # The helper environment, not ours: every container init is a fork of the supervisor until its
        # execve (see ``helper_env``).
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            close_fds=True, start_new_session=True, env=helper_environment(),
        )
    _reap_on_exit(proc)
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
    try:
        async with asyncio.timeout(timeout):
            line = await reader.readline()
    except TimeoutError:
        proc.kill()
        raise ShoalError(f"the supervisor did not become ready in {timeout:.0f}s; see {paths.log}") from None
    finally:
        transport.close()
    if line != b"ready\n":
        raise ShoalError(f"the supervisor failed to start; see {paths.log}")


# Spawned supervisors we may still have to reap; holding them also keeps Popen from warning that it was
# garbage-collected while its child runs.
_children: set[subprocess.Popen[bytes]] = set()


def _reap_on_exit(proc: subprocess.Popen[bytes]) -> None:
    """Reap ``proc`` when it exits, without a thread: its pidfd becomes readable then."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        return
    _children.add(proc)

    def reap() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        proc.poll()
        _children.discard(proc)

    loop.add_reader(pidfd, reap)
