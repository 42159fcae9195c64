"""A session worker: the agent sessions of a share of the hosts, in a process of their own.

The leader starts N of these (``shoal-scheduler serve --session-workers N``; ``scheduler.session_workers``)
and gives each the hosts whose id hashes to it. A worker runs the same ``AgentSession`` the leader runs
in-process — channel, event and usage streams, heartbeat watchdog, relisting — so what a session
concludes does not change; what changes is where its cost lands. Every host's usage report arrives here
once a second and stays here: the leader hears of a session only when it reports a change (its
containers, its connection, its room), batched every ``FLUSH_S``, plus each host's latest report every
``INFO_REFRESH_S`` and the usage of the hosts the autoscaler asked about every ``USAGE_S``. The leader's
calls to agents (the actuator's launches and retirements) are carried out on the host's own channel, and
a container a call returns is applied to the session here before the reply goes back, so no state
the worker sends afterwards can lack it.

Run as ``python -m scheduler.session_worker FD LOG_LEVEL`` by the leader only: FD is its end of the
leader's socket pair (``scheduler.session_wire``). The worker ends when the leader closes it or goes away,
and when the leader has sent nothing (not even its ``Alive`` every second) for ``Init.hang_limit``: a
leader whose loop hangs lets its term go after that long (``scheduler.liveness``), and its worker went
on following every host for it, doubling what each agent streams, and buffering for a reader that never
came (part 34 of docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time

import grpc

from proto.agent.v1 import agent_pb2 as pb
from scheduler import gc_pauses
from scheduler import session_wire as wire
from scheduler.agents import AgentSession, pace_sessions
from scheduler.connect_gate import ConnectGate
from scheduler.liveness import hung_for
from scheduler.loop_stalls import LoopStalls
from scheduler.model import HostId
from scheduler.observed import HostObservation, ObservedContainer
from scheduler.usage_pace import Pacer

log = logging.getLogger(__name__)

FLUSH_S = 0.02          # changes reported within this long of each other go to the leader in one message
# The leader hears from a worker at least this often, changes or not: the stamp of the newest batch it
# has read is how recent its view of the worker's hosts is (``SessionWorkers.unheard``), and a lost host's
# grace is counted only that far (docs/scaling.md, part 10).
BEAT_S = 0.25
REPACE_AFTER_S = 1.0    # the hosts followed are counted for the usage interval this long after a change
INFO_REFRESH_S = 10.0   # each host's latest report (disk free and the rest no pass wakes for), this often
USAGE_S = 1.0           # the usage of the hosts the autoscaler reads, this often

# The agent calls the leader makes through a worker: the actuator's, all unary.
CALLS = frozenset({"CreateContainer", "CreateContainers", "StartContainer", "StopContainer", "KillContainer",
                   "RemoveContainer", "GetContainer"})


class Worker:
    def __init__(self, writer: asyncio.StreamWriter, init: wire.Init) -> None:
        self._writer = writer
        self._init = init
        self.sessions: dict[HostId, AgentSession] = {}
        self.stalls = LoopStalls()  # this worker's own stalls: no host is blamed for them
        self.gate = ConnectGate()   # its sessions connect so many at a time
        self._dirty: set[HostId] = set()
        self._wake = asyncio.Event()
        self._wanted: set[HostId] = set()
        # What the leader was sent last of each host: states carry only what changed since.
        self._info_sent: dict[HostId, pb.HostInfo | None] = {}
        self._observation_sent: dict[HostId, HostObservation] = {}
        self._calls: set[asyncio.Task[None]] = set()
        self.pacer = Pacer(init.pace)  # what its sessions ask agents for now
        self._repace_later: asyncio.Handle | None = None  # a repace coming (``_schedule_repace``)
        self._gc_sent = 0  # collections counted in the last totals sent to the leader

    # -- from the leader ----------------------------------------------------------------------------

    def handle(self, message: object) -> None:
        if isinstance(message, wire.Call):
            task = asyncio.get_running_loop().create_task(self._call(message, time.perf_counter()))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        elif isinstance(message, wire.Follow):
            self._follow(message.host, message.address)
        elif isinstance(message, wire.Drop):
            self._drop(message.host)
        elif isinstance(message, wire.WantUsage):
            self._wanted.add(message.host)
        elif isinstance(message, wire.Alive):
            pass  # heard: that is all it says
        else:
            log.warning("session worker: unexpected message %r", type(message).__name__)

    def _follow(self, host: HostId, address: str) -> None:
        self._drop(host, repace=False)
        pace = self._init.pace
        session = AgentSession(host, address, credentials=self._init.credentials, on_change=self._changed,
                               heartbeat_timeout=pace.heartbeat_for(self.pacer.interval),
                               usage_interval=self.pacer.interval, stalls=self.stalls, gate=self.gate,
                               keepalive=self._init.keepalive)
        self.sessions[host] = session
        session.start()
        self._changed(host)
        self._schedule_repace()

    def _drop(self, host: HostId, *, repace: bool = True) -> None:
        session = self.sessions.pop(host, None)
        self._wanted.discard(host)
        self._info_sent.pop(host, None)
        self._observation_sent.pop(host, None)
        if session is not None:
            asyncio.get_running_loop().create_task(session.close())
        if repace:
            self._schedule_repace()

    def _schedule_repace(self) -> None:
        """``REPACE_AFTER_S`` after the first Follow or Drop since the last repace: a new term's thousands
        of Follows are a change or two, not one per step of the ladder (a takeover crossed four steps in
        1.5 s, each having thousands of sessions subscribe again: docs/scaling.md, part 10)."""
        if self._repace_later is None:
            self._repace_later = asyncio.get_running_loop().call_later(REPACE_AFTER_S, self._repace)

    def _repace(self) -> None:
        """The usage interval for as many hosts as this worker follows now (``--usage-interval auto``)."""
        self._repace_later = None
        interval = self.pacer.update(len(self.sessions))
        if interval is not None:
            pace_sessions(self.sessions.values(), self._init.pace, interval, who="session worker")
        elif self.pacer.due is not None:
            loop = asyncio.get_running_loop()
            self._repace_later = loop.call_later(max(0.0, self.pacer.due - time.monotonic()), self._repace)

    async def _call(self, call: wire.Call, arrived: float) -> None:
        """``call`` on its host's channel; the reply says how long since it ``arrived`` (perf_counter)."""
        session = self.sessions.get(call.host)
        if session is None or call.method not in CALLS:
            why = "not followed by this worker" if session is None else f"{call.method} is not relayed"
            wire.send(self._writer, wire.Reply(call.id, code="UNAVAILABLE",
                                               details=f"host {call.host}: {why}"))
            return
        try:
            response = await getattr(session.containers, call.method)(call.request, timeout=call.timeout)
        except grpc.aio.AioRpcError as err:
            trailing = tuple((k, v if isinstance(v, str) else v.decode(errors="replace"))
                             for k, v in (err.trailing_metadata() or ()))
            wire.send(self._writer, wire.Reply(call.id, code=err.code().name, details=err.details() or "",
                                               trailing=trailing, took=time.perf_counter() - arrived))
            return
        except Exception as err:  # the leader's actuator must hear of it, not wait for a reply forever
            log.exception("session worker: %s on %s failed", call.method, call.host)
            wire.send(self._writer, wire.Reply(call.id, code="INTERNAL", details=str(err)))
            return
        _absorb(session, call, response)
        wire.send(self._writer, wire.Reply(call.id, response=response, took=time.perf_counter() - arrived))

    # -- to the leader ------------------------------------------------------------------------------

    def _changed(self, host: HostId) -> None:
        self._dirty.add(host)
        self._wake.set()

    async def flush(self) -> None:
        """Each batch of changed sessions, as one message."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BEAT_S):
                    await self._wake.wait()
                    await asyncio.sleep(FLUSH_S)  # what else changes meanwhile goes in the same message
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            states = tuple(self._state(self.sessions[h]) for h in dirty if h in self.sessions)
            wire.send(self._writer, wire.States(states, sent=time.time(), gc=self._gc()))

    def _gc(self) -> gc_pauses.Pauses | None:
        """This process's collections so far, if there were more since the last sent."""
        if gc_pauses.pauses.count == self._gc_sent:
            return None
        self._gc_sent = gc_pauses.pauses.count
        return gc_pauses.totals()

    async def refresh(self) -> None:
        """The autoscaler's usage every second; every host's latest report every ``INFO_REFRESH_S``."""
        last_info = time.monotonic()
        while True:
            await asyncio.sleep(USAGE_S)
            usage = tuple((h, self.sessions[h].usage) for h in self._wanted if h in self.sessions)
            if usage:
                wire.send(self._writer, wire.Usage(usage))
            if time.monotonic() - last_info >= INFO_REFRESH_S:
                last_info = time.monotonic()
                for host, session in self.sessions.items():
                    if session.info is not self._info_sent.get(host):
                        self._changed(host)

    def _state(self, session: AgentSession) -> wire.HostState:
        host, now = session.host, session.observation
        sent = self._observation_sent.get(host)
        self._observation_sent[host] = now
        full: HostObservation | None = None
        changes: tuple[tuple[str, ObservedContainer | None], ...] = ()
        if sent is None or (sent.connected, sent.complete) != (now.connected, now.complete):
            full = now
        elif now is not sent:  # containers unchanged keep their objects (HostObservation.with_container)
            old, new = sent.containers, now.containers
            changes = tuple((cid, new.get(cid)) for cid in old.keys() | new.keys()
                            if old.get(cid) is not new.get(cid))
        info = session.info if session.info is not self._info_sent.get(host) else None
        self._info_sent[host] = session.info
        return wire.HostState(host=host, observation=full, containers=changes, info=info,
                              error=session.error, agent_down=session.agent_down, silent=session.silent,
                              last_seen=session.last_seen)

    async def close(self) -> None:
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*(s.close() for s in self.sessions.values()), return_exceptions=True)
        self.sessions.clear()
        await self.stalls.close()


def _absorb(session: AgentSession, call: wire.Call, response: object) -> None:
    """What a call's outcome tells the session at once, as the leader's actuator tells it (the leader
    applies the same to its copy when the reply arrives)."""
    if isinstance(response, pb.Container):
        session.apply(response)
    elif isinstance(response, pb.CreateContainersResponse):
        for result in response.results:
            if result.HasField("container"):
                session.apply(result.container)
    elif call.method == "RemoveContainer":
        session.forget(call.request.id)


async def serve(fd: int) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    init = await wire.receive(reader)
    if not isinstance(init, wire.Init):
        raise SystemExit(f"session worker: expected Init first, got {type(init).__name__}")
    worker = Worker(writer, init)
    worker.stalls.start()
    heard = time.monotonic()
    tasks = [asyncio.create_task(worker.flush(), name="flush"),
             asyncio.create_task(worker.refresh(), name="refresh")]

    async def listen() -> None:
        nonlocal heard
        while True:
            try:
                message = await wire.receive(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the leader closed the pipe, or is gone
            heard = time.monotonic()
            worker.handle(message)

    async def leader_hung() -> None:
        silent = await hung_for(lambda: heard, init.hang_limit)
        log.error("session worker: the leader has sent nothing for %.1fs (--leader-hang-limit %gs): ending "
                  "its %d sessions and this worker", silent, init.hang_limit, len(worker.sessions))

    ends = {asyncio.create_task(listen(), name="listen")}
    if init.hang_limit > 0:
        ends.add(asyncio.create_task(leader_hung(), name="leader-hung"))
    try:
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in ends:
            task.cancel()
        await asyncio.gather(*ends, return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await worker.close()
        with contextlib.suppress(Exception):
            writer.close()


def main(argv: list[str]) -> None:
    if len(argv) != 2 or not argv[0].isdigit():
        raise SystemExit("usage: python -m scheduler.session_worker FD LOG_LEVEL (run by shoal-scheduler)")
    # ^C in a terminal reaches the whole process group: the leader ends this worker by closing its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=argv[1].upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s session-worker %(name)s: %(message)s")
    collect_rarely()
    asyncio.run(serve(int(argv[0])))


def collect_rarely() -> None:
    """The leader's collector settings (``scheduler.gc_pauses``), here too: a worker's sessions keep
    hundreds of MiB of live objects, which every full collection scans to free next to nothing, holding
    the loop meanwhile (with CPython's thresholds, 39-62 s of a 5,000-host run's placing, against 2-8 s
    with these; docs/scaling.md, part 31). Long ones are logged; the totals go to the leader."""
    gc_pauses.install()
    gc_pauses.tune()


if __name__ == "__main__":
    main(sys.argv[1:])
