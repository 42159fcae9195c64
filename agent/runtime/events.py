"""The container event log: numbered lifecycle events, kept in memory and on disk, streamed to watchers.

Every event gets the next sequence number; numbers never repeat within an *epoch*, also across agent
restarts, because the log is appended to ``<root>/events.jsonl`` and reloaded on start (the last
``capacity`` events and the counter). Each event is written (not fsynced) before any watcher sees it, so a
SIGKILLed agent never hands out a sequence again. A full disk never stops the live stream: an event that
cannot be written is still kept and handed out, the epoch file is removed (so the next agent starts a new
epoch instead of reusing the unwritten sequences), and appending resumes when there is room. The file is
compacted to the newest ``capacity`` events once it holds twice that many, so it stays bounded. A torn
last line from a killed agent is skipped on load.

The epoch (``<root>/events.epoch``, a random id with the boot id it was made under) names one unbroken
history. A new one is made when the history may have holes: the events file is missing, the epoch file is
unreadable, or the host rebooted (unsynced appends may be lost, and every container died anyway). A
client that resumes under an old epoch learns that its history is gone and must re-list.

Watchers (``subscribe``) get every kept event after the sequence they name, then new ones live. Each
watcher has a bounded queue; one that falls ``queue_size`` events behind is cut off with
``WatcherTooSlow`` naming the last sequence it received, so it can reconnect from there and lose
nothing still kept — a slow watcher never slows the agent or other watchers. Asking to resume after a
sequence older than the history, or under another epoch, raises ``HistoryTruncated``: events were lost
for that client, and it must re-list containers (like Kubernetes' "410 Gone") rather than silently miss
some. Sequence 0 is the exception: it means "all kept history" (no client has seen event 0, so nothing
can be missed that it was promised).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from agent import durable, private_root
from agent.errors import InvalidArgument, OutOfRange, ResourceExhausted, ShoalError
from agent.runtime.health import HealthStatus
from agent.streams import singly

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000
DEFAULT_QUEUE_SIZE = 1_000
# Events to a list from ``EventLog.batches``: a WatchHost message of 64 events with their containers is
# ~100 KiB, far below gRPC's 4 MiB message limit.
DEFAULT_BATCH = 64


class EventType(Enum):
    CREATED = "created"
    STARTED = "started"
    EXITED = "exited"  # exit_code and reason set
    OOM_KILLED = "oom_killed"  # followed by EXITED
    RESTARTING = "restarting"  # a restart is scheduled; message says when
    HEALTH_CHANGED = "health_changed"  # health set
    REMOVED = "removed"
    START_FAILED = "start_failed"  # exit_code, reason "StartFailed" and message set
    EVICTED = "evicted"  # over its storage limit; reason "Evicted", message says by how much; EXITED follows


@dataclass(frozen=True)
class Event:
    sequence: int
    time: float  # unix time
    type: EventType
    container_id: str
    container_name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    exit_code: int = 0
    reason: str = ""
    health: HealthStatus = HealthStatus.NONE
    restart_count: int = 0
    message: str = ""

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return not labels or all(self.labels.get(k) == v for k, v in labels.items())

    def to_json(self) -> str:
        # Field by field, not dataclasses.asdict (which deep-copies recursively): this runs on the event
        # loop for every event, and asdict was a tenth of the loop's time in a create/start/remove storm.
        raw = {f: getattr(self, f) for f in _EVENT_FIELDS}
        raw["type"], raw["health"], raw["labels"] = self.type.value, self.health.value, dict(self.labels)
        return json.dumps(raw, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Event:
        raw: dict[str, Any] = json.loads(text)
        raw["type"] = EventType(raw["type"])
        raw["health"] = HealthStatus(raw.get("health", "none"))
        return cls(**raw)


_EVENT_FIELDS = tuple(f.name for f in fields(Event))


def _append_whole(fd: int, line: bytes) -> None:
    """Append ``line`` to ``fd`` (O_APPEND) whole or not at all: a write cut short by a full disk is cut
    back off the file, so a later line never continues a torn one."""
    view = memoryview(line)
    written = 0
    try:
        while written < len(line):
            written += os.write(fd, view[written:])
    except OSError:
        if written:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, os.fstat(fd).st_size - written)
        raise


class WatcherTooSlow(ResourceExhausted):
    """A watcher fell too far behind; it can resume with ``after_sequence=last_sequence``."""

    def __init__(self, message: str, *, last_sequence: int) -> None:
        super().__init__(message)
        self.last_sequence = last_sequence


class HistoryTruncated(OutOfRange):
    """The events after the requested sequence are partly gone from the history (or belong to another
    epoch). ``oldest_sequence`` and ``epoch`` tell the client where it can watch from after re-listing."""

    def __init__(self, message: str, *, epoch: str, oldest_sequence: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.oldest_sequence = oldest_sequence


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Watcher:
    queue: asyncio.Queue[Event]
    overflowed: bool = False


class EventLog:
    def __init__(self, path: Path | None, *, capacity: int = DEFAULT_CAPACITY,
                 queue_size: int = DEFAULT_QUEUE_SIZE, boot_id: str = "") -> None:
        self.path = path
        self.capacity = capacity
        self.queue_size = queue_size
        self._events: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._last = 0
        self._lines_in_file = 0
        self._fd = -1
        # Appends a full disk refused since writing last worked (then history has a hole: see _lost).
        self._unwritten = 0
        self._noted_at = -1e18
        self._watchers: set[_Watcher] = set()
        self.epoch = secrets.token_hex(8)
        if path is not None:
            self.epoch = self._load_epoch(path, boot_id=boot_id)
            self._load(path)

    @staticmethod
    def _load_epoch(path: Path, *, boot_id: str) -> str:
        epoch_file = path.with_suffix(".epoch")
        if path.exists():
            try:
                raw = json.loads(epoch_file.read_text())
                if raw["boot_id"] == boot_id and isinstance(raw["epoch"], str) and raw["epoch"]:
                    return str(raw["epoch"])
                log.info("the host rebooted since the event history began: starting a new epoch")
            except FileNotFoundError:
                pass
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("unreadable %s (%s): starting a new event epoch", epoch_file, err)
        epoch = secrets.token_hex(8)
        try:
            durable.write_file(epoch_file, json.dumps({"epoch": epoch, "boot_id": boot_id}))
            # The history of this epoch starts now, empty: an agent restarted before its first event must
            # not mistake the missing file for a lost history.
            path.touch(mode=0o600, exist_ok=True)
        except (OSError, ShoalError) as err:
            # Watchers still work; the next agent start makes yet another epoch (clients re-list).
            log.error("%s", err)
        return epoch

    @property
    def last_sequence(self) -> int:
        return self._last

    @property
    def oldest_sequence(self) -> int | None:
        return self._events[0].sequence if self._events else None

    def history(self) -> list[Event]:
        return list(self._events)

    def _load(self, path: Path) -> None:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                event = Event.from_json(line)
            except (ValueError, TypeError, KeyError):
                log.warning("skipping an unreadable line in %s", path)
                continue
            if event.sequence > self._last:
                self._events.append(event)
                self._last = event.sequence
        self._lines_in_file = len(lines)
        if self._lines_in_file >= 2 * self.capacity:
            self._compact()

    def append(self, type: EventType, *, container_id: str, container_name: str,
               labels: Mapping[str, str] | None = None, exit_code: int = 0, reason: str = "",
               health: HealthStatus = HealthStatus.NONE, restart_count: int = 0, message: str = "") -> Event:
        """Record an event and hand it to every watcher. Never blocks and never raises for I/O."""
        self._last += 1
        event = Event(
            sequence=self._last, time=time.time(), type=type, container_id=container_id,
            container_name=container_name, labels=dict(labels or {}), exit_code=exit_code, reason=reason,
            health=health, restart_count=restart_count, message=message,
        )
        self._events.append(event)
        self._persist(event)
        for watcher in list(self._watchers):
            if watcher.overflowed:
                continue
            try:
                watcher.queue.put_nowait(event)
            except asyncio.QueueFull:
                watcher.overflowed = True
        return event

    def _persist(self, event: Event) -> None:
        if self.path is None:
            return
        try:
            if self._fd < 0:
                self._fd = private_root.open_private(str(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            _append_whole(self._fd, (event.to_json() + "\n").encode())
        except OSError as err:
            self._lost(durable.os_error(err, op="append to", path=self.path))
            return
        if self._unwritten:
            log.warning("writing %s again; %d events could not be written", self.path, self._unwritten)
            self._unwritten = 0
        self._lines_in_file += 1
        if self._lines_in_file >= 2 * self.capacity:
            try:
                self._compact()
            except ShoalError as err:
                # Try again after another capacity's worth of appends, not on every one.
                self._lines_in_file = self.capacity
                log.error("cannot compact %s: %s", self.path, err)

    def _lost(self, err: ShoalError) -> None:
        """An event is live (ring, watchers) but not on disk. The history on disk now has a hole, so the
        next agent must not resume this epoch: its epoch file goes (unlinking needs no space), and a
        restart starts a new epoch, which makes clients re-list. Logged at most every 30 s."""
        if self._unwritten == 0 and self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path.with_suffix(".epoch"))
        self._unwritten += 1
        now = time.monotonic()
        if now >= self._noted_at + 30:
            self._noted_at = now
            # The live stream still works; only history across a restart is affected.
            log.error("%s (%d events not written so far; watchers still get them)", err, self._unwritten)

    def _compact(self) -> None:
        """Rewrite the file with only the kept events (once per ``capacity`` appends; no fsync: the
        events it drops are the ones no longer kept anyway)."""
        assert self.path is not None
        self.close()
        durable.write_file(self.path, "".join(e.to_json() + "\n" for e in self._events), sync=False)
        self._lines_in_file = len(self._events)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def subscribe(self, *, after_sequence: int | None = None, labels: Mapping[str, str] | None = None,
                  epoch: str = "") -> AsyncGenerator[Event, None]:
        """Kept events with a sequence above ``after_sequence`` (none if it is None), then live ones.

        ``after_sequence=0`` replays all kept history. Raises ``HistoryTruncated`` at once if ``epoch``
        is given and is not this log's, or if events after a non-zero ``after_sequence`` are no longer
        kept; ``InvalidArgument`` if it is beyond the last event; and ``WatcherTooSlow`` when the caller
        stops keeping up (see the module docstring).
        """
        return singly(self.batches(after_sequence=after_sequence, labels=labels, epoch=epoch, most=1))

    async def batches(self, *, after_sequence: int | None = None, labels: Mapping[str, str] | None = None,
                      epoch: str = "", most: int = DEFAULT_BATCH) -> AsyncGenerator[list[Event], None]:
        """What ``subscribe`` hands out, as lists of up to ``most`` events: each list is what was already
        waiting when the caller asked (the replay, or live events appended since it last asked), never
        held back to fill one. One message per list instead of one per event is what a follower of
        thousands of hosts saves (``WatchHostRequest.batch_events``; docs/scaling.md, part 23)."""
        if most < 1:
            raise ValueError(f"a batch holds at least one event, got most={most}")
        oldest = self.oldest_sequence
        if epoch and epoch != self.epoch:
            raise HistoryTruncated(
                f"event epoch {epoch} is not this agent's ({self.epoch}): its history was lost (the agent's "
                "root was reset or the host rebooted); re-list containers, then watch from the listing",
                epoch=self.epoch, oldest_sequence=oldest or self._last + 1,
            )
        if after_sequence is not None:
            if after_sequence > self._last:
                raise InvalidArgument(
                    f"event sequence {after_sequence} is beyond the last event ({self._last}) of this agent"
                )
            if oldest is not None and 0 < after_sequence < oldest - 1:
                raise HistoryTruncated(
                    f"events after {after_sequence} are no longer kept (the oldest kept is {oldest}); "
                    f"re-list containers, then watch from {oldest - 1} or later",
                    epoch=self.epoch, oldest_sequence=oldest,
                )
        # Register before taking the replay snapshot, with no await in between: nothing falls in the gap.
        watcher = _Watcher(asyncio.Queue(maxsize=self.queue_size))
        self._watchers.add(watcher)
        try:
            last = self._last if after_sequence is None else after_sequence
            replay = [e for e in self._events if e.sequence > last and e.matches(labels)]
            if self._events:
                last = max(last, self._events[-1].sequence)
            for i in range(0, len(replay), most):
                yield replay[i:i + most]
            queue = watcher.queue
            while True:
                if watcher.overflowed and queue.empty():
                    raise WatcherTooSlow(
                        f"this event watcher fell more than {self.queue_size} events behind and was "
                        f"cut off; watch again with after_sequence={last} to resume without a gap",
                        last_sequence=last,
                    )
                batch: list[Event] = []
                event = await queue.get()
                while True:
                    if event.sequence > last:  # (else already replayed)
                        last = event.sequence
                        if event.matches(labels):
                            batch.append(event)
                    if len(batch) >= most or queue.empty():
                        break
                    event = queue.get_nowait()
                if batch:
                    yield batch
        finally:
            self._watchers.discard(watcher)


__all__ = ["Event", "EventLog", "EventType", "HistoryTruncated", "WatcherTooSlow"]
