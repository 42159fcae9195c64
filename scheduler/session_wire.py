"""The pipe between the leader and its session workers (``scheduler.session_workers``).

Each message is a length-prefixed pickle over a Unix socket pair that the leader created and handed to
the worker it started (never a socket anyone else can reach), so both ends are this scheduler's own
code at the same version. Leader to worker: ``Init`` first, then ``Follow``, ``Drop``, ``Call``,
``WantUsage`` and ``Alive`` (every second: the leader's event loop runs); worker to leader: ``States``
(batched), ``Reply`` (one per ``Call``) and ``Usage``.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from proto.agent.v1 import agent_pb2 as pb
from scheduler.agents import Credentials
from scheduler.gc_pauses import Pauses
from scheduler.model import HostId
from scheduler.observed import ContainerUsage, HostObservation, ObservedContainer
from scheduler.pickled import by_fields
from scheduler.usage_pace import UsagePace

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 30  # a batch of states for thousands of hosts is megabytes; anything larger is a bug


@by_fields
@dataclass(frozen=True, slots=True)
class Init:
    credentials: Credentials | None
    pace: UsagePace  # how often its sessions ask for usage, and their heartbeat (for its own hosts)
    keepalive: float = 0.0  # its sessions' keepalive ping period (``--agent-keepalive``; 0: none)
    # The worker ends, with its sessions, once its leader has sent nothing this long (0: never;
    # ``--leader-hang-limit``): a hung leader's hosts are not followed, and buffered for, by nobody.
    hang_limit: float = 0.0


@by_fields
@dataclass(frozen=True, slots=True)
class Follow:
    host: HostId
    address: str


@by_fields
@dataclass(frozen=True, slots=True)
class Drop:
    host: HostId


@by_fields
@dataclass(frozen=True, slots=True)
class Alive:
    """The leader's event loop runs (its monotonic time); sent every second."""
    at: float


@by_fields
@dataclass(frozen=True, slots=True)
class WantUsage:
    """Send this host's usage every second from now on (the autoscaler reads it)."""

    host: HostId


@by_fields
@dataclass(frozen=True, slots=True)
class Call:
    """One unary call of the agent's Containers API on a host's channel (the actuator's)."""

    id: int
    host: HostId
    method: str
    request: Any
    timeout: float | None


@by_fields
@dataclass(frozen=True, slots=True)
class Reply:
    """A call's outcome: its response, or the gRPC status code's name, details and trailing metadata, and
    how long the worker took over it."""

    id: int
    response: Any = None
    code: str = ""
    details: str = ""
    trailing: tuple[tuple[str, str], ...] = ()
    took: float = 0.0  # seconds from the call's arrival at the worker to this reply (``timings.worker_call``)


@by_fields
@dataclass(frozen=True, slots=True)
class HostState:
    """What the leader reads of one session, sent whenever the session reports a change: the whole
    observation when its connection changed (or the leader has none yet), else only the containers that
    changed since the last state (None: gone) — a host's observation changes with each of its launches,
    and sending all of it each time made placing cost the square of the containers per host; the latest
    report when it is not the one sent last (None: unchanged)."""

    host: HostId
    observation: HostObservation | None
    containers: tuple[tuple[str, ObservedContainer | None], ...]
    info: pb.HostInfo | None
    error: str
    agent_down: bool
    silent: bool
    last_seen: float


@by_fields
@dataclass(frozen=True, slots=True)
class States:
    """Changed sessions, batched; sent at least every ``session_worker.BEAT_S`` even with none, stamped
    with the worker's wall time so that the leader knows how far behind it reads its workers."""

    states: tuple[HostState, ...]
    sent: float = 0.0
    gc: Pauses | None = None  # the worker's collections so far, when more than it last sent


@by_fields
@dataclass(frozen=True, slots=True)
class Usage:
    usage: tuple[tuple[HostId, dict[str, ContainerUsage]], ...]


def send(writer: asyncio.StreamWriter, message: object) -> None:
    """Queue one message (the transport buffers it; neither end waits for the other to read)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(data)) + data)


async def receive(reader: asyncio.StreamReader) -> object:
    """The next message; ``asyncio.IncompleteReadError`` when the other end has gone."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_MESSAGE:
        raise ValueError(f"session worker message of {size} bytes")
    return pickle.loads(await reader.readexactly(size))


__all__ = ["Alive", "Call", "Drop", "Follow", "HostState", "Init", "Reply", "States", "Usage", "WantUsage",
           "receive", "send"]
