"""The container verbs: create, start, stop, kill, remove, wait, logs, exec — and recovery after restart.

``ContainerRuntime`` is the one place that ties images, rootfs, cgroups and the supervisor together. It
runs in the asyncio daemon and never forks a container itself: the supervisor (a small single-threaded
process that outlives the daemon) parents every container, so a SIGKILLed daemon loses nothing. On start
the runtime reads each container's on-disk record (config.json, ours), run record (run.json, the
supervisor's) and status (status.json, ours: restarts, health), asks the supervisor what is alive, and
rebuilds its view from those facts.

Keeping containers up: every exit is acted on exactly once (status.json remembers which), whether it
arrives as a supervisor event or is found at recovery: events are emitted, then the restart policy
(``agent.runtime.restart``) decides and a restart task waits out the backoff. A stop, kill or remove by
the user marks the container "stopped by user" and cancels a pending restart, so stop always wins.
While a container with a health check runs, a ``HealthMonitor`` task probes it. Everything that
happens is appended to ``events`` (``agent.runtime.events``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import functools
import logging
import shutil
import signal as signals
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.cgroups import manager as cgroups
from agent.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LaunchError,
    NotFound,
    ShoalError,
)
from agent.images.pull import Puller
from agent.images.store import Image, ImageStore, PruneReport
from agent.network import netns
from agent.network.manager import Attachment, NetworkManager
from agent.network.ports import PortMapping
from agent.rootfs import initlayer, overlay, users
from agent.runtime import health as healthcheck
from agent.runtime import logs as ctrlogs
from agent.runtime import plan as plans
from agent.runtime import probes, restart, runfile, supervisor_client
from agent.runtime.events import EventLog, EventType
from agent.runtime.health import HealthCheck, HealthResult, HealthStatus, ProbeKind
from agent.runtime.restart import RestartMode, RestartPolicy
from agent.runtime.spec import (
    ContainerId,
    ContainerSpec,
    NetworkMode,
    Resources,
    merge_env,
    new_container_id,
    validate_id,
    validate_name,
)
from agent.runtime.state import (
    ContainerRecord,
    ContainerStatus,
    Prepared,
    State,
    check_transition,
    read_status,
    write_atomic,
    write_status,
)
from agent.streams import drain_until_done
from agent.usage.targets import SampleTarget

log = logging.getLogger(__name__)

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_FAILED_CODES = {"not-found": 127, "not-executable": 126, "setup": 125}
# A user's kill with one of these means "I want it down": the restart policy must not bring it back.
# Other signals (HUP, USR1, ...) are messages to the app, and a later crash is still restarted.
_TERMINATING = frozenset({signals.SIGKILL, signals.SIGTERM, signals.SIGINT, signals.SIGQUIT})


@dataclass(frozen=True)
class RuntimeSettings:
    root: Path
    cgroup_parent: str = "shoal"
    log_max_bytes: int = 10 << 20
    log_max_files: int = 3
    python: str = sys.executable


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    reason: str
    error: str = ""


class PullPolicy(enum.Enum):
    NEVER = "never"
    MISSING = "missing"
    ALWAYS = "always"


@dataclass(frozen=True)
class ImageDiskUsage:
    id: str
    repo_tags: tuple[str, ...]
    size: int
    shared_size: int
    containers: int


@dataclass(frozen=True)
class ContainerDiskUsage:
    id: str
    name: str
    image: str
    state: State
    writable_bytes: int


@dataclass(frozen=True)
class DiskUsage:
    images: list[ImageDiskUsage]
    layers: int
    layers_bytes: int
    blobs_bytes: int
    containers: list[ContainerDiskUsage]


@dataclass
class Container:
    """The daemon's live view of one container. Mutated only by ContainerRuntime."""

    record: ContainerRecord
    state: State = State.CREATED
    pid: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    exit: ExitStatus | None = None
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Restart policy and health bookkeeping; persisted in status.json (see ``status``).
    restart_count: int = 0  # automatic restarts since the user last started it
    next_restart_at: float | None = None  # set while a restart waits out its backoff
    health: HealthStatus = HealthStatus.NONE
    health_log: tuple[HealthResult, ...] = ()
    health_failing_streak: int = 0
    stopped_by_user: bool = False
    backoff_streak: int = 0
    exit_handled: float | None = None
    kill_reason: str = ""
    restart_task: asyncio.Task[None] | None = None
    health_task: asyncio.Task[None] | None = None
    sample_target: SampleTarget | None = field(default=None, repr=False)  # cached per run

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @functools.cached_property
    def spec(self) -> ContainerSpec:
        return spec_from_dict(self.record.spec)

    @property
    def directory(self) -> Path:
        return Path(self.record.prepared.rootfs_dir).parent

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.spec.labels)

    def status(self) -> ContainerStatus:
        return ContainerStatus(
            restart_count=self.restart_count, backoff_streak=self.backoff_streak,
            stopped_by_user=self.stopped_by_user, next_restart_at=self.next_restart_at,
            exit_handled=self.exit_handled, kill_reason=self.kill_reason, health=self.health,
            health_failing_streak=self.health_failing_streak, health_log=self.health_log,
        )

    def load_status(self, status: ContainerStatus) -> None:
        self.restart_count, self.backoff_streak = status.restart_count, status.backoff_streak
        self.stopped_by_user, self.next_restart_at = status.stopped_by_user, status.next_restart_at
        self.exit_handled, self.kill_reason = status.exit_handled, status.kill_reason
        self.health, self.health_log = status.health, status.health_log
        self.health_failing_streak = status.health_failing_streak


def spec_to_dict(spec: ContainerSpec) -> dict[str, Any]:
    raw = asdict(spec)
    raw["network"] = spec.network.value
    raw["labels"] = dict(spec.labels)
    raw["restart"] = {"mode": spec.restart.mode.value, "max_retries": spec.restart.max_retries}
    if spec.health is not None:
        raw["health"] = {**asdict(spec.health), "kind": spec.health.kind.value}
    raw["ports"] = [p.to_dict() for p in spec.ports]
    return raw


def spec_from_dict(raw: dict[str, Any]) -> ContainerSpec:
    """The inverse of ``spec_to_dict``; keys an older agent did not write get their defaults."""
    data = dict(raw)
    data["resources"] = Resources(**data["resources"])
    data["network"] = NetworkMode(data["network"])
    data["labels"] = tuple(sorted(data["labels"].items()))
    for key in ("entrypoint", "command", "env"):
        data[key] = tuple(data[key])
    policy = data.pop("restart", None)
    if policy is not None:
        data["restart"] = RestartPolicy(RestartMode(policy["mode"]), max_retries=policy["max_retries"])
    data["ports"] = tuple(PortMapping.from_dict(p) for p in data.get("ports", ()))
    check = data.pop("health", None)
    if check is not None:
        data["health"] = HealthCheck(**{**check, "kind": ProbeKind(check["kind"]),
                                        "command": tuple(check["command"])})
    return ContainerSpec(**data)


def _exit_reason(*, code: int, sig: int | None, oom: bool) -> str:
    if oom:
        return "OOMKilled"
    if sig == signals.SIGKILL:
        return "Killed"
    return "Completed" if code == 0 else "Error"


def _parse_signal(raw: str | int, *, default: int) -> int:
    if isinstance(raw, int):
        return raw
    text = raw.strip().upper()
    if not text:
        return default
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else "SIG" + text
    try:
        return int(signals.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {raw!r}: use a name like TERM or KILL, or a number") from None


class ContainerRuntime:
    def __init__(self, settings: RuntimeSettings, *, images: ImageStore,
                 cgroup_manager: cgroups.CgroupManager, puller: Puller | None = None,
                 network: NetworkManager | None = None) -> None:
        self.settings = settings
        self.images = images
        # Bridge networking, when the agent has a --subnet (set up by the daemon before open()).
        self.network = network
        self._puller = puller
        self.cgroups = cgroup_manager
        self.containers_dir = settings.root / "containers"
        self._containers: dict[str, Container] = {}
        self._supervisor: supervisor_client.SupervisorClient | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._supervisor_ready = asyncio.Event()
        self._closing = False
        self._background: set[asyncio.Task[Any]] = set()
        self.events = EventLog(settings.root / "events.jsonl")

    # -- lifecycle of the runtime itself ----------------------------------------------------------

    async def open(self) -> None:
        self.containers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self._connect_supervisor()
        if self.network is not None:
            # Addresses, ports and namespaces of containers that no longer exist (a crash between
            # attach and record, or an rm the agent did not finish) are freed.
            freed = await self.network.reconcile(list(self._containers))
            if freed:
                log.info("freed the network of %d vanished containers", len(freed))
        self._events_task = asyncio.create_task(self._watch_supervisor(), name="supervisor-events")

    async def close(self) -> None:
        """Daemon shutdown: containers keep running under the supervisor."""
        self._closing = True
        if self._events_task:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._events_task
        for task in list(self._background):
            task.cancel()
        # Pending restarts stay in status.json (next_restart_at) and are rescheduled by the next agent.
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._supervisor:
            await self._supervisor.close()
        self.events.close()
        if not self._containers:
            # Leave no empty cgroup parent behind on a host that no longer runs containers here.
            with contextlib.suppress(ShoalError, OSError):
                self.cgroups.remove_parent_if_empty(self.settings.cgroup_parent)

    async def _connect_supervisor(self) -> None:
        self._supervisor = await supervisor_client.connect_or_spawn(
            self.settings.root, python=self.settings.python
        )
        running = await self._supervisor.list_running()
        self._recover(alive=set(running))
        self._supervisor_ready.set()

    def _recover(self, *, alive: set[str]) -> None:
        """Rebuild the in-memory view from disk; ``alive`` is what the supervisor says is running."""
        for entry in sorted(self.containers_dir.iterdir()):
            config = entry / "config.json"
            if not config.is_file():
                # A create that died before writing its record: nothing refers to it.
                shutil.rmtree(entry, ignore_errors=True)
                continue
            record = ContainerRecord.from_json(config.read_text())
            ctr = self._containers.get(record.id)
            if ctr is None:
                ctr = Container(record=record)
                ctr.load_status(read_status(entry))
                self._containers[record.id] = ctr
            self._apply_run_record(ctr, alive=record.id in alive)

    def _apply_run_record(self, ctr: Container, *, alive: bool) -> None:
        run = runfile.read_run_file(ctr.directory)
        if run is None:
            ctr.state = State.CREATED
            return
        if run.error:
            # A failed start leaves started_at null in run.json: keep the previous run's.
            self._exited(ctr, ExitStatus(run.exit_code or 125, "StartFailed", run.error),
                         finished_at=run.finished_at, start_failed=True)
            return
        ctr.started_at = run.started_at
        if run.exit_code is not None:
            self._exited(ctr, self._exit_status(ctr, run.exit_code, run.signal), finished_at=run.finished_at)
        elif alive:
            ctr.state, ctr.pid = State.RUNNING, run.pid or 0
            ctr.exited.clear()
            self._start_health_monitor(ctr)
        else:
            # Its supervisor died with it running: nobody can report its exit any more. Kill what is
            # left of it so it cannot linger unsupervised, and say so.
            self._kill_cgroup(ctr)
            runfile.write_run_file(ctr.directory, runfile.RunRecord(
                pid=run.pid, started_at=run.started_at, exit_code=137, signal=None,
                finished_at=time.time(), error=None, error_kind=None,
            ))
            run = runfile.read_run_file(ctr.directory) or run
            self._exited(ctr, ExitStatus(137, "Lost", "the container's supervisor exited"),
                         finished_at=run.finished_at)

    async def _watch_supervisor(self) -> None:
        """Apply exit events; if the supervisor goes away, start a new one and reconcile."""
        while not self._closing:
            assert self._supervisor is not None
            try:
                async for event in self._supervisor.events():
                    ctr = self._containers.get(event.container_id)
                    if ctr is not None:
                        self._apply_run_record(ctr, alive=False)
            except Exception:
                log.exception("supervisor event stream failed")
            if self._closing:
                return
            log.warning("lost the supervisor; reconnecting")
            self._supervisor_ready.clear()
            await self._supervisor.close()
            await self._connect_supervisor()

    def _exit_status(self, ctr: Container, code: int, sig: int | None) -> ExitStatus:
        cg = self.cgroups.open(ctr.record.prepared.cgroup_name)
        oom = bool(cg and cg.oom_killed())
        reason = _exit_reason(code=code, sig=sig, oom=oom)
        if ctr.kill_reason and not oom:
            reason = ctr.kill_reason
        return ExitStatus(code, reason)

    def _exited(self, ctr: Container, status: ExitStatus, *, finished_at: float | None,
                start_failed: bool = False, restartable: bool = True) -> None:
        """Record an exit and act on it once: events, then the restart policy.

        Called again for the same exit (a supervisor event racing ``start``'s own check, recovery after a
        reconnect), it only refreshes the view. ``restartable`` is False for a start the user asked for
        that failed: the user got the error, and the policy is for crashes, not for bad commands.
        """
        self._mark_exited(ctr, status, finished_at=finished_at)
        self._stop_health_monitor(ctr)
        if self._closing:
            return  # acted on by the next agent, at recovery
        if finished_at is not None and ctr.exit_handled == finished_at:
            # Already acted on. If the agent restarted during a backoff, the restart is due again.
            if ctr.next_restart_at is not None and ctr.restart_task is None and not ctr.stopped_by_user:
                self._schedule_restart(ctr, delay=max(0.0, ctr.next_restart_at - time.time()))
            return
        ctr.exit_handled = finished_at
        if start_failed:
            self._emit(ctr, EventType.START_FAILED, exit_code=status.exit_code, reason=status.reason,
                       message=status.error)
        else:
            if status.reason == "OOMKilled":
                self._emit(ctr, EventType.OOM_KILLED, exit_code=status.exit_code, reason=status.reason)
            self._emit(ctr, EventType.EXITED, exit_code=status.exit_code, reason=status.reason)
        ctr.kill_reason = ""
        wanted = restartable and restart.decide(
            ctr.spec.restart, exit_code=status.exit_code, oom=status.reason == "OOMKilled",
            restart_count=ctr.restart_count, stopped_by_user=ctr.stopped_by_user,
        )
        if wanted and ctr.id in self._containers and ctr.state is not State.REMOVING:
            ran_for = None
            if not start_failed and ctr.started_at is not None and finished_at is not None:
                ran_for = finished_at - ctr.started_at
            delay, ctr.backoff_streak = restart.schedule(ctr.backoff_streak, ran_for=ran_for)
            self._schedule_restart(ctr, delay=delay)
            self._emit(ctr, EventType.RESTARTING, restart_count=ctr.restart_count + 1,
                       message=f"restart {ctr.restart_count + 1} in {delay:.1f}s ({ctr.spec.restart})")
        self._save_status(ctr)

    # -- restarts ---------------------------------------------------------------------------------

    def _schedule_restart(self, ctr: Container, *, delay: float) -> None:
        self._cancel_restart(ctr)
        ctr.next_restart_at = time.time() + delay
        ctr.restart_task = self._spawn(self._restart_after(ctr, delay), name=f"restart-{ctr.id[:12]}")

    def _cancel_restart(self, ctr: Container) -> None:
        if ctr.restart_task is not None:
            ctr.restart_task.cancel()
            ctr.restart_task = None
        ctr.next_restart_at = None

    async def _restart_after(self, ctr: Container, delay: float) -> None:
        await asyncio.sleep(delay)
        # From here on this restart can no longer be cancelled, only refused below: a cancel in the
        # middle of a launch could lose track of the process the supervisor just started.
        ctr.restart_task = None
        async with ctr.lock:
            if ctr.stopped_by_user or ctr.id not in self._containers or ctr.state is not State.EXITED:
                return
            ctr.next_restart_at = None
            ctr.restart_count += 1
            try:
                await self._start_locked(ctr, automatic=True)
            except ShoalError as err:
                # A launch failure was recorded as an exit (and the policy consulted) by _start_locked.
                log.warning("restart %d of %s failed: %s", ctr.restart_count, ctr.name, err)

    def _save_status(self, ctr: Container) -> None:
        if ctr.state is State.REMOVING or ctr.id not in self._containers:
            return
        try:
            write_status(ctr.directory, ctr.status())
        except OSError as err:
            log.error("cannot write the status of %s: %s", ctr.name, err)

    def _spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_event_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _emit(self, ctr: Container, type: EventType, **fields: Any) -> None:
        fields.setdefault("restart_count", ctr.restart_count)
        fields.setdefault("health", ctr.health)
        self.events.append(type, container_id=ctr.id, container_name=ctr.name, labels=ctr.labels, **fields)

    # -- health -----------------------------------------------------------------------------------

    def _start_health_monitor(self, ctr: Container) -> None:
        check = ctr.spec.health
        if check is None or ctr.health_task is not None or self._closing:
            return
        monitor = healthcheck.HealthMonitor(
            check, started_at=ctr.started_at or time.time(),
            state=healthcheck.HealthState(status=ctr.health if ctr.health is not HealthStatus.NONE
                                          else HealthStatus.STARTING,
                                          failing_streak=ctr.health_failing_streak, log=ctr.health_log),
            probe=functools.partial(self._probe, ctr, check),
            on_result=functools.partial(self._on_health_result, ctr),
        )
        ctr.health_task = self._spawn(monitor.run(), name=f"health-{ctr.id[:12]}")

    def _stop_health_monitor(self, ctr: Container) -> None:
        if ctr.health_task is not None:
            ctr.health_task.cancel()
            ctr.health_task = None

    async def _probe(self, ctr: Container, check: HealthCheck) -> healthcheck.ProbeOutcome:
        if ctr.state is not State.RUNNING:
            return False, "container is not running"
        if check.kind is ProbeKind.EXEC:
            try:
                proc = await self._spawn_exec(ctr, argv=list(check.command), env=[], working_dir="",
                                              user="", merge_stderr=True)
            except ShoalError as err:
                return False, str(err)
            return await probes.exec_probe(proc, timeout=check.timeout)
        # On the host's network the container's loopback is ours: no namespace to enter.
        pid = None if ctr.spec.network is NetworkMode.HOST else ctr.pid
        if check.kind is ProbeKind.TCP:
            return await probes.tcp_probe(pid=pid, port=check.port, timeout=check.timeout)
        return await probes.http_probe(pid=pid, port=check.port, path=check.path, timeout=check.timeout)

    def _on_health_result(self, ctr: Container, old: healthcheck.HealthState,
                          new: healthcheck.HealthState) -> None:
        ctr.health, ctr.health_log, ctr.health_failing_streak = new.status, new.log, new.failing_streak
        if new.status is not old.status:
            last = new.log[-1].output if new.log else ""
            self._emit(ctr, EventType.HEALTH_CHANGED, message=last)
            check = ctr.spec.health
            if (new.status is HealthStatus.UNHEALTHY and check is not None and check.restart_on_unhealthy
                    and ctr.state is State.RUNNING):
                # The exit then carries reason "Unhealthy" and the restart policy decides what follows
                # (with policy "no" the container just stays exited).
                ctr.kill_reason = "Unhealthy"
                self._spawn(self._kill_unhealthy(ctr), name=f"kill-unhealthy-{ctr.id[:12]}")
        self._save_status(ctr)

    async def _kill_unhealthy(self, ctr: Container) -> None:
        try:
            await self.supervisor.kill(ctr.id, int(signals.SIGKILL))
        except ShoalError as err:
            log.warning("cannot kill unhealthy container %s: %s", ctr.name, err)

    def _mark_exited(self, ctr: Container, status: ExitStatus, *, finished_at: float | None) -> None:
        first = ctr.state is not State.EXITED
        ctr.state, ctr.pid, ctr.exit = State.EXITED, 0, status
        ctr.finished_at = finished_at
        ctr.exited.set()
        if first and ctr.spec.auto_remove and not self._closing:
            self._spawn(self._auto_remove(ctr.id), name=f"auto-remove-{ctr.id[:12]}")

    async def _auto_remove(self, container_id: str) -> None:
        with contextlib.suppress(ShoalError):
            await self.remove(container_id, force=True)

    @property
    def supervisor(self) -> supervisor_client.SupervisorClient:
        assert self._supervisor is not None
        return self._supervisor

    # -- lookup -----------------------------------------------------------------------------------

    def resolve(self, ref: str) -> Container:
        if not ref:
            raise InvalidArgument("a container id or name is required")
        if ref in self._containers:
            return self._containers[ref]
        by_name = [c for c in self._containers.values() if c.name == ref]
        if by_name:
            return by_name[0]
        matches = [c for c in self._containers.values() if c.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"container id prefix {ref!r} is ambiguous: give more characters")
        raise NotFound(f"no such container: {ref}")

    def list_containers(self, *, all: bool = False, labels: dict[str, str] | None = None, name: str = "",
             states: set[State] | None = None) -> list[Container]:
        out = []
        for ctr in sorted(self._containers.values(), key=lambda c: c.record.created_at, reverse=True):
            if not all and not states and ctr.state is not State.RUNNING:
                continue
            if states and ctr.state not in states:
                continue
            if name and ctr.name != name:
                continue
            if labels and any(dict(ctr.spec.labels).get(k) != v for k, v in labels.items()):
                continue
            out.append(ctr)
        return out

    def image_in_use(self, image_id: str) -> bool:
        return any(c.record.prepared.image_id == image_id for c in self._containers.values())

    # -- images -----------------------------------------------------------------------------------

    @property
    def puller(self) -> Puller:
        if self._puller is None:
            raise FailedPrecondition("this agent was started without registry access")
        return self._puller

    async def _image_for(self, ref: str, pull: PullPolicy) -> Image:
        if pull is PullPolicy.ALWAYS:
            return await asyncio.to_thread(self.puller.pull, ref)
        try:
            return self.images.resolve(ref)
        except NotFound:
            if pull is PullPolicy.NEVER:
                raise
        return await asyncio.to_thread(self.puller.pull, ref)

    def layers_in_use(self) -> set[str]:
        """diff_ids of the image layers some container's rootfs is built from (never garbage)."""
        used = set()
        for ctr in self._containers.values():
            for lower in ctr.record.prepared.lower_dirs[1:]:  # [0] is the container's own init layer
                used.add("sha256:" + Path(lower).name)
        return used

    def prune_images(self) -> PruneReport:
        return self.images.prune(image_in_use=self.image_in_use, layers_in_use=self.layers_in_use)

    def disk_usage(self) -> DiskUsage:
        store = self.images.disk_usage()
        per_image = collections.Counter(c.record.prepared.image_id for c in self._containers.values())
        return DiskUsage(
            images=[ImageDiskUsage(id=i.id, repo_tags=tuple(i.repo_tags), size=i.size,
                                   shared_size=i.shared_size, containers=per_image[i.id])
                    for i in store.images],
            layers=store.layer_count, layers_bytes=store.layer_bytes, blobs_bytes=store.blob_bytes,
            containers=[ContainerDiskUsage(
                id=c.id, name=c.name, image=c.spec.image, state=c.state,
                writable_bytes=overlay.upper_size_bytes(Path(c.record.prepared.upper_dir)),
            ) for c in list(self._containers.values())],
        )

    # -- create -----------------------------------------------------------------------------------

    async def create(self, *, container_id: str = "", name: str = "", spec: ContainerSpec,
                     pull: PullPolicy = PullPolicy.NEVER) -> Container:
        if spec.ports and spec.network is not NetworkMode.BRIDGE:
            raise InvalidArgument("publishing ports (-p) needs the bridge network (--network bridge)")
        if spec.network is NetworkMode.BRIDGE and self.network is None:
            raise FailedPrecondition(
                "bridge networking needs an agent started with --subnet (e.g. --subnet 10.88.0.0/24)"
            )
        cid = validate_id(container_id) if container_id else new_container_id()
        if name:
            validate_name(name)
        if spec.auto_remove and spec.restart.mode is not RestartMode.NO:
            raise InvalidArgument(
                f"auto-remove (--rm) and restart policy {spec.restart} conflict: a removed container "
                "cannot be restarted; choose one"
            )
        existing = self._containers.get(cid)
        if existing is not None:
            # Compared through the domain value, so a record written by an older agent (fewer keys)
            # still matches the same request.
            if existing.spec == spec and existing.name == (name or existing.name):
                return existing  # idempotent create: same id, same spec
            raise AlreadyExists(f"container id {cid} already exists with a different spec")
        if name:
            for other in self._containers.values():
                if other.name == name:
                    raise AlreadyExists(
                        f"the name {name!r} is already in use by container {other.id[:12]}; "
                        "remove it or choose another name"
                    )
        name = name or f"shoal-{cid[:12]}"
        image = await self._image_for(spec.image, pull)
        layers = self.images.layer_paths(image)
        prepared_dir = self.containers_dir / cid
        dirs = overlay.ContainerDirs(prepared_dir)
        try:
            prepared = self._prepare(cid, spec=spec, image=image, layers=layers, dirs=dirs)
            record = ContainerRecord(id=cid, name=name, spec=spec_to_dict(spec), prepared=prepared)
            write_atomic(dirs.config, record.to_json())
        except BaseException:
            shutil.rmtree(prepared_dir, ignore_errors=True)
            raise
        ctr = Container(record=record)
        self._containers[cid] = ctr
        self._emit(ctr, EventType.CREATED, message=spec.image)
        return ctr

    def _prepare(self, cid: ContainerId, *, spec: ContainerSpec, image: Image, layers: list[Path],
                 dirs: overlay.ContainerDirs) -> Prepared:
        cfg = image.config
        entrypoint = list(spec.entrypoint or cfg.entrypoint)
        command = list(spec.command) if spec.command else ([] if spec.entrypoint else list(cfg.cmd))
        argv = tuple(entrypoint + command)
        if not argv:
            raise InvalidArgument(
                f"no command specified: image {spec.image} has no Entrypoint or Cmd; "
                "give a command after the image name"
            )
        creds = users.resolve_user(spec.user or cfg.user, layers=layers)
        hostname = spec.hostname or cid[:12]
        env = merge_env(tuple(cfg.env), ())
        defaults = [DEFAULT_PATH] if not any(e.startswith("PATH=") for e in env) else []
        env = merge_env(tuple(defaults) + env, (f"HOSTNAME={hostname}",))
        if not any(e.startswith("HOME=") for e in env):
            env = merge_env(env, (f"HOME={creds.home}",))
        env = merge_env(env, spec.env)
        dirs.create()
        initlayer.write_init_layer(dirs.init, hostname=hostname,
                                   host_network=spec.network is NetworkMode.HOST)
        stop_signal = _parse_signal(cfg.stop_signal or "", default=int(signals.SIGTERM))
        rootfs = overlay.describe_rootfs(image_layers=layers, dirs=dirs)
        return Prepared(
            image_id=image.id, image_ref=spec.image, argv=argv, env=env,
            working_dir=spec.working_dir or cfg.working_dir or "/",
            uid=creds.uid, gid=creds.gid, additional_gids=creds.additional_gids, hostname=hostname,
            lower_dirs=rootfs.lower, upper_dir=rootfs.upper, work_dir=rootfs.work,
            rootfs_dir=rootfs.target,
            cgroup_name=f"{self.settings.cgroup_parent}/{cid}", stop_signal=stop_signal,
        )

    # -- start ------------------------------------------------------------------------------------

    async def start(self, ref: str) -> Container:
        """The user's start: forgets "stopped by user", restarts counting from zero, and replaces a
        pending automatic restart (it starts now)."""
        ctr = self.resolve(ref)
        async with ctr.lock:
            if ctr.state is State.RUNNING:
                return ctr
            check_transition(ctr.id, ctr.state, State.RUNNING)
            self._cancel_restart(ctr)
            ctr.stopped_by_user = False
            ctr.restart_count = ctr.backoff_streak = 0
            return await self._start_locked(ctr, automatic=False)

    async def _start_locked(self, ctr: Container, *, automatic: bool) -> Container:
        check_transition(ctr.id, ctr.state, State.RUNNING)
        await self._supervisor_ready.wait()
        # A fresh group for every run: the kernel's OOM-kill counter is per group, and a restarted
        # container must not inherit "OOMKilled" from an earlier run.
        cg = self._ensure_cgroup(ctr, fresh=ctr.state is State.EXITED)
        launch_plan = self._launch_plan(ctr, cgroup_procs=cg.join_files())
        if ctr.spec.network is NetworkMode.BRIDGE:
            # Before the process exists: a taken port is refused here, and the address is known
            # for /etc/hosts. The attachment lives until rm, across restarts.
            attachment = await self._attach(ctr)
            launch_plan = dataclasses.replace(launch_plan, netns_path=attachment.netns_path)
        ctr.exited.clear()
        try:
            result = await self.supervisor.start(
                ctr.id, directory=ctr.directory, plan=launch_plan,
                log_max_bytes=self.settings.log_max_bytes, log_max_files=self.settings.log_max_files,
            )
        except LaunchError as err:
            await self._detach(ctr)
            code = START_FAILED_CODES.get(err.kind, 125)
            run = runfile.read_run_file(ctr.directory)
            finished = run.finished_at if run is not None and run.error else time.time()
            self._exited(ctr, ExitStatus(code, "StartFailed", str(err)), finished_at=finished,
                         start_failed=True, restartable=automatic)
            raise
        ctr.state, ctr.pid, ctr.started_at = State.RUNNING, result.pid, result.started_at
        ctr.exit, ctr.finished_at = None, None
        ctr.kill_reason = ""
        if ctr.spec.health is not None:
            ctr.health, ctr.health_failing_streak = HealthStatus.STARTING, 0
        self._emit(ctr, EventType.STARTED)
        self._save_status(ctr)
        self._start_health_monitor(ctr)
        # The process may already have exited (and the event arrived before we got here).
        run = runfile.read_run_file(ctr.directory)
        if run is not None and run.exit_code is not None and run.pid == result.pid:
            self._apply_run_record(ctr, alive=False)
        return ctr

    async def _attach(self, ctr: Container) -> Attachment:
        if self.network is None:
            raise FailedPrecondition(
                "bridge networking needs an agent started with --subnet (e.g. --subnet 10.88.0.0/24)"
            )
        attachment = self.network.attachment(ctr.id)
        # A recorded namespace whose bind mount is gone (the host rebooted) is just an empty file.
        if attachment is None or not netns.is_pinned(Path(attachment.netns_path)):
            if attachment is not None:
                await self.network.detach(ctr.id)  # its namespace is gone (e.g. the host rebooted)
            attachment = await self.network.attach(ctr.id, publish=ctr.spec.ports)
        p = ctr.record.prepared
        initlayer.write_hosts(Path(p.lower_dirs[0]), hostname=p.hostname, address=str(attachment.address.ip))
        return attachment

    async def _detach(self, ctr: Container) -> None:
        if self.network is not None and ctr.spec.network is NetworkMode.BRIDGE:
            await self.network.detach(ctr.id)

    def attachment(self, ctr: Container) -> Attachment | None:
        """Its place on the bridge (address, gateway, ports), for ps/inspect."""
        if self.network is None or ctr.spec.network is not NetworkMode.BRIDGE:
            return None
        return self.network.attachment(ctr.id)

    def _ensure_cgroup(self, ctr: Container, *, fresh: bool = False) -> cgroups.Cgroup:
        prepared = ctr.record.prepared
        res = ctr.spec.resources
        limits = cgroups.Limits(
            memory_bytes=res.memory_bytes,
            cpu_quota_us=(res.cpu_millis * 100_000 // 1000) if res.cpu_millis else None,
            pids_max=res.pids_max,
        )
        cg = self.cgroups.open(prepared.cgroup_name)
        if cg is not None and fresh:
            try:
                cg.kill_all()
                cg.remove()
                cg = None
            except (ShoalError, OSError) as err:
                log.warning("reusing the cgroup of %s: %s", ctr.name, err)
        if cg is None:
            rules = cgroups.DEFAULT_DEVICE_RULES if self.cgroups.supports_device_rules else ()
            cg = self.cgroups.create(prepared.cgroup_name, limits=limits, devices=rules)
        else:
            cg.apply(limits)
        ctr.cgroup_paths = cg.paths()
        return cg

    def _capabilities(self, network: NetworkMode) -> tuple[str, ...]:
        caps = plans.DEFAULT_CAPABILITIES
        if not self.cgroups.supports_device_rules:
            # Without a device cgroup (v2 needs eBPF), mknod is the only guard against host disks.
            caps = tuple(c for c in caps if c != "MKNOD")
        if network is NetworkMode.HOST:
            # Docker keeps NET_RAW; on the host's own network it lets a container sniff and spoof
            # the host's traffic, so Shoal drops it there.
            caps = tuple(c for c in caps if c != "NET_RAW")
        return caps

    def _launch_plan(self, ctr: Container, *, cgroup_procs: tuple[str, ...]) -> plans.LaunchPlan:
        p = ctr.record.prepared
        spec = ctr.spec
        namespaces: tuple[str, ...] = ("pid", "mount", "uts", "ipc", "cgroup")
        if spec.network is not NetworkMode.HOST:
            namespaces += ("net",)
        return plans.LaunchPlan(
            container_id=ctr.id,
            rootfs=plans.OverlayRootfs(lower=p.lower_dirs, upper=p.upper_dir, work=p.work_dir,
                                       target=p.rootfs_dir),
            argv=p.argv, env=p.env, cwd=p.working_dir, uid=p.uid, gid=p.gid,
            additional_gids=p.additional_gids, hostname=p.hostname, read_only=spec.read_only,
            namespaces=namespaces, cgroup_procs=cgroup_procs, capabilities=self._capabilities(spec.network),
        )

    # -- stop / kill / wait -----------------------------------------------------------------------

    async def _stopped_by_user(self, ctr: Container) -> None:
        """The user wants it down: cancel a pending restart, wait out one already launching."""
        ctr.stopped_by_user = True
        self._cancel_restart(ctr)
        self._save_status(ctr)
        async with ctr.lock:
            pass

    async def kill(self, ref: str, signal: str | int = "KILL") -> Container:
        ctr = self.resolve(ref)
        sig = _parse_signal(signal, default=int(signals.SIGKILL))
        if sig in _TERMINATING or sig == ctr.record.prepared.stop_signal:
            had_pending = ctr.next_restart_at is not None
            await self._stopped_by_user(ctr)
            if had_pending and ctr.state is not State.RUNNING:
                return ctr  # killing a container waiting to restart: the restart is cancelled
        if ctr.state is not State.RUNNING:
            raise FailedPrecondition(f"container {ctr.name} is not running")
        await self.supervisor.kill(ctr.id, sig)
        return ctr

    async def stop(self, ref: str, *, timeout: float = 10.0) -> Container:
        ctr = self.resolve(ref)
        await self._stopped_by_user(ctr)
        if ctr.state is not State.RUNNING:
            return ctr  # docker stop on a stopped container is not an error
        await self.supervisor.kill(ctr.id, ctr.record.prepared.stop_signal)
        try:
            await asyncio.wait_for(ctr.exited.wait(), timeout=max(timeout, 0))
        except TimeoutError:
            await self.supervisor.kill(ctr.id, int(signals.SIGKILL))
            await self._wait_exited(ctr, timeout=30)
        return ctr

    async def _wait_exited(self, ctr: Container, *, timeout: float) -> None:
        try:
            await asyncio.wait_for(ctr.exited.wait(), timeout=timeout)
        except TimeoutError:
            raise ShoalError(f"container {ctr.name} did not exit within {timeout:.0f}s of SIGKILL") from None

    async def wait(self, ref: str) -> ExitStatus:
        ctr = self.resolve(ref)
        if ctr.state is State.CREATED:
            raise FailedPrecondition(f"container {ctr.name} has not been started")
        await ctr.exited.wait()
        assert ctr.exit is not None
        return ctr.exit

    # -- remove -----------------------------------------------------------------------------------

    async def remove(self, ref: str, *, force: bool = False) -> str:
        ctr = self.resolve(ref)
        if ctr.state is State.RUNNING and not force:
            raise FailedPrecondition(f"container {ctr.name} is running: stop it first or use rm -f")
        await self._stopped_by_user(ctr)
        async with ctr.lock:
            if ctr.state is State.RUNNING:
                if not force:
                    raise FailedPrecondition(
                        f"container {ctr.name} is running: stop it first or use rm -f"
                    )
                await self.supervisor.kill(ctr.id, int(signals.SIGKILL))
                await self._wait_exited(ctr, timeout=30)
            check_transition(ctr.id, ctr.state, State.REMOVING)
            ctr.state = State.REMOVING
            self._stop_health_monitor(ctr)
            self._kill_cgroup(ctr, remove=True)
            await self._detach(ctr)
            await asyncio.to_thread(shutil.rmtree, ctr.directory, True)
            self._containers.pop(ctr.id, None)
            self._emit(ctr, EventType.REMOVED)
            return ctr.id

    def _kill_cgroup(self, ctr: Container, *, remove: bool = False) -> None:
        cg = self.cgroups.open(ctr.record.prepared.cgroup_name)
        if cg is None:
            return
        cg.kill_all()
        if remove:
            cg.remove()

    # -- logs and exec ----------------------------------------------------------------------------

    async def logs(self, ref: str, *, follow: bool, tail: int | None) -> AsyncIterator[ctrlogs.LogEntry]:
        ctr = self.resolve(ref)
        directory = ctr.directory
        if not follow:
            for entry in await asyncio.to_thread(lambda: list(ctrlogs.read_entries(directory, tail=tail))):
                yield entry
            return

        def finished() -> bool:
            return ctr.state in (State.EXITED, State.REMOVING) or ctr.id not in self._containers

        async for entry in ctrlogs.follow_entries(directory, is_finished=finished, tail=tail):
            yield entry

    async def exec(self, ref: str, *, argv: list[str], env: list[str], working_dir: str,
                   user: str) -> AsyncIterator[tuple[str, bytes | int]]:
        """Yields ("stdout", bytes), ("stderr", bytes) and finally ("exit", code)."""
        ctr = self.resolve(ref)
        proc = await self._spawn_exec(ctr, argv=argv, env=env, working_dir=working_dir, user=user,
                                      merge_stderr=False)
        assert proc.stdout and proc.stderr
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        async def pump(stream: asyncio.StreamReader, name: str) -> None:
            while chunk := await stream.read(65536):
                await queue.put((name, chunk))

        pumps = [asyncio.create_task(pump(proc.stdout, "stdout")),
                 asyncio.create_task(pump(proc.stderr, "stderr"))]
        try:
            async for chunk in drain_until_done(asyncio.gather(*pumps), queue):
                yield chunk
            code = await proc.wait()
            yield ("exit", code)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            for task in pumps:
                task.cancel()

    async def _spawn_exec(self, ctr: Container, *, argv: list[str], env: list[str], working_dir: str,
                          user: str, merge_stderr: bool) -> asyncio.subprocess.Process:
        """Start ``python -m agent.runtime.nsenter`` for ``argv`` in ``ctr`` (a new session, stdout
        piped, stderr piped or merged into stdout); ``exec`` and health probes share it."""
        if ctr.state is not State.RUNNING:
            raise FailedPrecondition(f"container {ctr.name} is not running")
        if not argv:
            raise InvalidArgument("exec needs a command")
        p = ctr.record.prepared
        if user:
            creds = users.resolve_user(user, layers=[Path(d) for d in p.lower_dirs])
            uid, gid, groups = creds.uid, creds.gid, creds.additional_gids
        else:
            uid, gid, groups = p.uid, p.gid, p.additional_gids
        cg = self.cgroups.open(p.cgroup_name)
        exec_plan = plans.ExecPlan(
            target_pid=ctr.pid, argv=tuple(argv), env=merge_env(p.env, tuple(env)),
            cwd=working_dir or p.working_dir, uid=uid, gid=gid, additional_gids=groups,
            cgroup_procs=cg.join_files() if cg else (),
            capabilities=self._capabilities(ctr.spec.network),
        )
        proc = await asyncio.create_subprocess_exec(
            self.settings.python, "-m", "agent.runtime.nsenter",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdin
        try:
            proc.stdin.write(exec_plan.to_json().encode())
            await proc.stdin.drain()
            proc.stdin.close()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        return proc

    # -- for the usage sampler and the host API ---------------------------------------------------

    def sample_targets(self) -> list[SampleTarget]:
        """The running containers, as the usage sampler needs them (cgroup, pid, limits)."""
        out = []
        for ctr in list(self._containers.values()):
            if ctr.state is not State.RUNNING or not ctr.pid:
                continue
            target = ctr.sample_target
            if target is None or target.pid != ctr.pid:
                # Built once per run (a restart has a new pid and a fresh cgroup): this is called
                # every sampling interval for every container.
                cg = self.cgroups.open(ctr.record.prepared.cgroup_name)
                if cg is None:
                    continue
                res = ctr.spec.resources
                target = ctr.sample_target = SampleTarget(
                    id=ctr.id, name=ctr.name, image=ctr.spec.image, labels=ctr.labels, pid=ctr.pid,
                    cgroup=cg, upper_dir=Path(ctr.record.prepared.upper_dir),
                    started_at=ctr.started_at or 0.0, memory_limit_bytes=res.memory_bytes,
                    cpu_limit_millis=res.cpu_millis, own_network=ctr.spec.network is not NetworkMode.HOST,
                )
            out.append(target)
        return out

    def committed(self) -> tuple[int, int]:
        """(memory bytes, cpu millis): the sums of the running containers' limits (unlimited counts 0)."""
        memory = cpu = 0
        for ctr in self._containers.values():
            if ctr.state is State.RUNNING:
                memory += ctr.spec.resources.memory_bytes or 0
                cpu += ctr.spec.resources.cpu_millis or 0
        return memory, cpu


__all__ = ["Container", "ContainerRuntime", "ExitStatus", "RuntimeSettings"]
