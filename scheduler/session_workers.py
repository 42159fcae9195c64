"""Agent sessions in worker processes: the leader's side (``shoal-scheduler serve --session-workers N``).

In-process, every host costs the leader a gRPC channel, two streams and a usage report to read every
second: about 130-180 KiB and 0.3 ms of cpu a second per host, which at 5,000 hosts is more memory than
the issue's budget and most of a core (docs/scaling.md, part 6). With workers, ``SessionWorkers``
starts N processes (``scheduler.session_worker``) that own those sessions, each for the hosts whose id
hashes to it, and the leader keeps a ``RemoteSession`` per host: what the controller and the actuator
read of a session (its observation, its latest report, its connection and error), kept current by the
worker's batched reports, and a ``containers`` client whose calls the worker carries out on the host's
channel. The leader then pays per change, not per host per second.

A worker that dies is started again and given its hosts back; meanwhile their sessions read as
connecting, as a new leader's do, so their hosts keep their recorded status until the new worker's
session to them finds something wrong (``Controller._status``): nothing is moved for the worker's sake
alone. Calls in flight on it fail as UNAVAILABLE (the next pass retries).

The pool belongs to the scheduler instance, not to a term (``shoal-scheduler serve`` makes it, each
term's ``Controller`` borrows it): when a term ends its sessions are *parked* — the workers go on
following the hosts, nobody is told of changes — and the next term on this instance adopts them as they
are, connected and complete, instead of connecting and listing every host again (at 2,000 hosts each
lost term restarted 2,000 sessions, and the load of that cost the next term too: docs/scaling.md, part
6). Sessions no term claims within ``PARKED_S`` are dropped, so an instance that stays a standby does
not follow hosts for long.

The leader tells each worker every second that its loop runs (``wire.Alive``); a worker that has heard
nothing for ``--leader-hang-limit`` ends, sessions and all, as the hung leader's term does
(``scheduler.liveness``). If that leader runs again, it starts the worker again as for any that died,
but follows again only the hosts of a term still under way: parked sessions are dropped instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import grpc

from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc
from scheduler import gc_pauses
from scheduler import session_wire as wire
from scheduler.agents import Credentials, decided_by, observe_container
from scheduler.liveness import LoopAlive
from scheduler.model import HostId
from scheduler.observed import ContainerUsage, HostObservation
from scheduler.timings import NO_TIMINGS, Timings
from scheduler.usage_pace import AUTO, REPORTS_PER_SECOND, UsagePace

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0      # between a worker's death and its replacement (a worker that cannot start)
CLOSE_TIMEOUT = 10.0     # for a worker to end once its pipe is closed, before it is killed
REPLY_MARGIN = 10.0      # a relayed call waits this much past its own timeout for the worker's reply
PARKED_S = 30.0          # a term's sessions are kept this long after it ends, for the next term to adopt
ALIVE_S = 1.0            # how often the leader tells its workers that its loop runs
_REPO = Path(__file__).resolve().parent.parent  # what ``-m scheduler.session_worker`` must import from


class RemoteSession:
    """A host's agent session run by a worker, as the controller and the actuator read one."""

    def __init__(self, pool: SessionWorkers, host: HostId, address: str, *, heartbeat_timeout: float,
                 on_change: Callable[[HostId], None]) -> None:
        self._pool = pool
        self.host = host
        self.address = address
        self.heartbeat_timeout = heartbeat_timeout
        self._on_change = on_change
        self.started_at = time.time()
        self.observation = HostObservation(host=host)
        self.info: pb.HostInfo | None = None
        self.error = ""
        self.agent_down = False
        self.silent = False
        self.last_seen = 0.0
        self._usage: dict[str, ContainerUsage] = {}
        self._usage_wanted = False
        self._following = False  # the worker was asked to follow the host
        self.parked = False      # kept between terms: nobody is told of changes
        self.containers = cast(pb_grpc.ContainersStub, _Containers(pool, host))

    @property
    def usage(self) -> dict[str, ContainerUsage]:
        """The latest usage the worker sent; asking starts it sending this host's every second."""
        if not self._usage_wanted:
            self._usage_wanted = True
            self._pool.send(self.host, wire.WantUsage(self.host))
        return self._usage

    def start(self) -> None:
        """Has the worker follow the host (once: an adopted session is followed already)."""
        if not self._following:
            self._following = True
            self._pool.send(self.host, wire.Follow(self.host, self.address))

    def park(self) -> None:
        self.parked = True
        self._on_change = _ignore

    def adopt(self, on_change: Callable[[HostId], None]) -> None:
        self.parked = False
        self._on_change = on_change

    async def close(self) -> None:
        self._pool.forget(self)

    def apply(self, ctr: pb.Container) -> None:
        """A container the actuator just created or started (the worker applied it too, before replying)."""
        seen = observe_container(ctr)
        if seen is not None:
            self._set(self.observation.with_container(seen.id, seen))

    def forget(self, container_id: str) -> None:
        self._set(self.observation.with_container(container_id, None))

    def _set(self, observation: HostObservation) -> None:
        if observation is not self.observation:
            self.observation = observation
            self._on_change(self.host)

    # -- from the worker ----------------------------------------------------------------------------

    def update(self, state: wire.HostState) -> None:
        """A state the worker sent: a pass is woken only if it changes what a pass reads (a refreshed
        report alone does not, as in-process)."""
        changed = (state.error, state.agent_down, state.silent) != (self.error, self.agent_down, self.silent)
        observation = self.observation
        if state.observation is not None and state.observation != observation:
            observation = state.observation  # else the known object stays (compared by identity)
        for cid, seen in state.containers:
            observation = observation.with_container(cid, seen)
        if observation is not self.observation:
            self.observation = observation
            changed = True
        if state.info is not None and (self.info is None or decided_by(state.info) != decided_by(self.info)):
            changed = True
        self.info = state.info if state.info is not None else self.info
        self.error, self.agent_down, self.silent = state.error, state.agent_down, state.silent
        self.last_seen = state.last_seen
        if changed:
            self._on_change(self.host)

    def usage_arrived(self, usage: dict[str, ContainerUsage]) -> None:
        self._usage = usage

    def restarted(self) -> None:
        """Its worker was started again: connecting afresh, as a new leader's session is."""
        self.started_at = time.time()
        self.observation = replace(self.observation, connected=False, complete=False)
        self.error, self.agent_down, self.silent = "", False, False
        if self._usage_wanted:
            self._pool.send(self.host, wire.WantUsage(self.host))
        self._pool.send(self.host, wire.Follow(self.host, self.address))
        self._on_change(self.host)


def _ignore(_host: HostId) -> None:
    pass


class _Containers:
    """The agent's Containers API on one host, relayed through its worker (the calls in
    ``session_worker.CALLS``): each method takes the request and an optional ``timeout``, as a stub's."""

    def __init__(self, pool: SessionWorkers, host: HostId) -> None:
        self._pool = pool
        self._host = host

    def __getattr__(self, method: str) -> Callable[..., Any]:
        async def call(request: Any, *, timeout: float | None = None, **_: Any) -> Any:
            return await self._pool.call(self._host, method, request, timeout)
        return call


class _Worker:
    """One worker process and its end of the pipe."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.calls: dict[int, asyncio.Future[wire.Reply]] = {}
        # The worker's wall time as of which the leader has read all it sent (its newest batch's stamp).
        self.heard_through = 0.0
        self.gc: gc_pauses.Pauses | None = None  # the collections its process reported last


class SessionWorkers:
    """N session worker processes and the remote sessions of the hosts they follow."""

    def __init__(self, count: int, *, credentials: Credentials | None, heartbeat_timeout: float,
                 usage_interval: float | None = AUTO, usage_reports_per_second: float = REPORTS_PER_SECOND,
                 log_level: str = "", keepalive: float = 0.0, hang_limit: float = 0.0,
                 timings: Timings = NO_TIMINGS) -> None:
        if count < 1:
            raise ValueError("session workers: at least one")
        self.heartbeat_timeout = heartbeat_timeout
        self.timings = timings  # how long calls took in the workers, how late their messages are read
        # Each worker paces its own sessions (``usage_interval`` None: by how many hosts it follows).
        self._init = wire.Init(credentials=credentials, pace=UsagePace(
            interval=usage_interval, reports_per_second=usage_reports_per_second,
            heartbeat_timeout=heartbeat_timeout), keepalive=keepalive, hang_limit=hang_limit)
        self._alive = LoopAlive(every=ALIVE_S, on_tick=self._tell_alive)
        self._log_level = log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self._workers = [_Worker(i) for i in range(count)]
        self.sessions: dict[HostId, RemoteSession] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._restarting: set[asyncio.Task[None]] = set()
        self._started = False
        self._parked_until: asyncio.TimerHandle | None = None
        self.restarts = 0  # workers started again after dying (for tests and the log)

    async def start(self) -> None:
        """Starts the workers (once: every term on this instance calls it)."""
        if self._started:
            return
        self._started = True
        for worker in self._workers:
            await self._spawn(worker)
        if self._init.hang_limit > 0:
            self._alive.start()

    def _tell_alive(self, at: float) -> None:
        for worker in self._workers:
            if worker.writer is not None and not worker.writer.is_closing():
                wire.send(worker.writer, wire.Alive(at))

    def session(self, host: HostId, address: str, *, on_change: Callable[[HostId], None]) -> RemoteSession:
        """The session for ``host``: the one parked by the last term if it follows the same address
        (adopted as it is), else a new one (not started: ``start()`` asks its worker to follow the host)."""
        kept = self.sessions.get(host)
        if kept is not None and kept.parked and kept.address == address:
            kept.adopt(on_change)
            return kept
        if kept is not None:
            self.forget(kept)
        session = RemoteSession(self, host, address, heartbeat_timeout=self.heartbeat_timeout,
                                on_change=on_change)
        self.sessions[host] = session
        return session

    def park(self) -> None:
        """A term ended: its sessions go on for the next term to adopt, for ``PARKED_S`` at most."""
        for session in self.sessions.values():
            session.park()
        if self._parked_until is not None:
            self._parked_until.cancel()
        self._parked_until = asyncio.get_running_loop().call_later(PARKED_S, self.drop_parked)

    def drop_parked(self) -> None:
        """Stops following the hosts no term adopted."""
        for session in [s for s in self.sessions.values() if s.parked]:
            self.forget(session)
        self._parked_until = None

    def forget(self, session: RemoteSession) -> None:
        if self.sessions.get(session.host) is session:
            del self.sessions[session.host]
            self.send(session.host, wire.Drop(session.host))

    def worker_of(self, host: HostId) -> int:
        return zlib.crc32(host.encode()) % len(self._workers)

    def unheard(self, host: HostId) -> float:
        """Seconds of what ``host``'s worker has found that the leader has not read yet: now less the stamp
        of the newest batch read from it (a batch comes at least every ``session_worker.BEAT_S``). Grows
        while the worker is down or the leader is behind, so that no host is judged on news not read."""
        return max(0.0, time.time() - self._workers[self.worker_of(host)].heard_through)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]

    def send(self, host: HostId, message: object) -> None:
        writer = self._workers[self.worker_of(host)].writer
        if writer is not None and not writer.is_closing():
            wire.send(writer, message)
        # else: the worker is being started again, and is given its hosts once it is up

    async def call(self, host: HostId, method: str, request: Any, timeout: float | None) -> Any:
        worker = self._workers[self.worker_of(host)]
        if worker.writer is None or worker.writer.is_closing():
            raise _rpc_error("UNAVAILABLE", f"the session worker of host {host} is restarting")
        call_id = next(self._ids)
        reply: asyncio.Future[wire.Reply] = asyncio.get_running_loop().create_future()
        worker.calls[call_id] = reply
        try:
            wire.send(worker.writer, wire.Call(call_id, host, method, request, timeout))
            async with asyncio.timeout(None if timeout is None else timeout + REPLY_MARGIN):
                answer = await reply
        except TimeoutError:
            raise _rpc_error("DEADLINE_EXCEEDED",
                             f"no reply from the session worker of host {host}") from None
        finally:
            worker.calls.pop(call_id, None)
        if answer.took:
            self.timings.worker_call(answer.took, method)
        if answer.code:
            raise _rpc_error(answer.code, answer.details, answer.trailing)
        return answer.response

    async def close(self) -> None:
        self._closing = True
        await self._alive.close()
        if self._parked_until is not None:
            self._parked_until.cancel()
        for worker in self._workers:
            if worker.writer is not None:
                worker.writer.close()
        for worker in self._workers:
            await self._reap(worker)
        tasks = [*self._restarting, *(w.reader_task for w in self._workers if w.reader_task is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the processes ------------------------------------------------------------------------------

    async def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scheduler.session_worker", str(theirs.fileno()), self._log_level,
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        reader, worker.writer = await asyncio.open_unix_connection(sock=ours)
        worker.gc = None  # a new process: it counts from zero
        wire.send(worker.writer, self._init)
        worker.heard_through = max(worker.heard_through, time.time())  # nothing to read before its start
        worker.reader_task = asyncio.get_running_loop().create_task(
            self._read(worker, reader), name=f"session-worker-{worker.index}")
        log.info("session worker %d started (pid %d)", worker.index, worker.process.pid)

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await wire.receive(reader)
                if isinstance(message, wire.States):
                    worker.heard_through = max(worker.heard_through, message.sent)
                    self.timings.worker_delay(max(0.0, time.time() - message.sent))
                    if message.gc is not None:
                        gc_pauses.add_reported(message.gc, worker.gc)
                        worker.gc = message.gc
                    for state in message.states:
                        session = self.sessions.get(state.host)
                        if session is not None:
                            session.update(state)
                elif isinstance(message, wire.Reply):
                    pending = worker.calls.get(message.id)
                    if pending is not None and not pending.done():
                        pending.set_result(message)
                elif isinstance(message, wire.Usage):
                    for host, usage in message.usage:
                        if (session := self.sessions.get(host)) is not None:
                            session.usage_arrived(usage)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if not self._closing:
            task = asyncio.get_running_loop().create_task(self._restart(worker))
            self._restarting.add(task)
            task.add_done_callback(self._restarting.discard)

    async def _restart(self, worker: _Worker) -> None:
        """A worker died: fail its calls, start another, give it its hosts back (bounded by the term)."""
        code = await self._reap(worker)
        log.error("session worker %d ended (exit %s): starting another; its hosts reconnect (those of a "
                  "term under way)", worker.index, code)
        while not self._closing:
            await asyncio.sleep(RESTART_DELAY)
            try:
                await self._spawn(worker)
                break
            except OSError as err:
                log.error("session worker %d could not be started: %s", worker.index, err)
        if self._closing:
            return
        self.restarts += 1
        for session in list(self.sessions.values()):
            if self.worker_of(session.host) == worker.index:
                if session.parked:  # no term needs it: the new worker need not follow it
                    del self.sessions[session.host]
                else:
                    session.restarted()

    async def _reap(self, worker: _Worker) -> int | None:
        for pending in worker.calls.values():
            if not pending.done():
                pending.set_result(wire.Reply(0, code="UNAVAILABLE", details="the session worker ended"))
        worker.calls.clear()
        if worker.writer is not None:
            worker.writer.close()
            worker.writer = None
        process, worker.process = worker.process, None
        if process is None:
            return None
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                return await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()


def _rpc_error(code: str, details: str, trailing: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    status = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
    return grpc.aio.AioRpcError(status, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details)


__all__ = ["RemoteSession", "SessionWorkers"]
