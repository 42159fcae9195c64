"""The container runtime's front: the verbs (create, start, stop, kill, remove, wait, logs, exec),
lookup and listing, recovery after a restart, and the connection to the supervisor.

``ContainerRuntime`` decides nothing itself. Each verb resolves the container, checks the verb against
the state (``agent.runtime.state.check_verb``) and the caller's fence (``agent.runtime.fencing``), feeds
the request or what the world reported to the pure core (``agent.runtime.core``), stores the new
lifecycle, and hands the resulting actions to the executor (``agent.runtime.executor``), which does the
I/O. A state change and its event happen in one synchronous step on the event loop, so a listing and the
event stream never disagree (``listing`` returns the event sequence it reflects).

Launches and removals run as tasks of their own, shielded from the caller: a client that hangs up cannot
abandon a launch half-way (the supervisor may already have started the process) or a removal half-done.

It drives the world only through small interfaces (``agent.runtime.drivers``: supervisor, images,
network; ``agent.cgroups.manager.CgroupManager``), so it is unit-tested with fakes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import signal as signals
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.cgroups import leftovers
from agent.cgroups import manager as cgroups
from agent.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LaunchError,
    NotFound,
    ShoalError,
    SupervisorUnavailable,
)
from agent.images.store import DiskUsage as StoreDiskUsage
from agent.images.store import Image
from agent.network.manager import Attachment
from agent.rootfs import overlay
from agent.rootfs.storage_limit import ProjectQuotas
from agent.runtime import core, execs, prepare, records, runfile
from agent.runtime import health as healthcheck
from agent.runtime import logs as ctrlogs
from agent.runtime.container import Container, Hold
from agent.runtime.drivers import ImageSource, Network, Supervisor, SupervisorConnector
from agent.runtime.events import EventLog, EventType
from agent.runtime.executor import Executor, LaunchFailed
from agent.runtime.fencing import UNFENCED, Fence, FenceBook
from agent.runtime.restart import RestartMode
from agent.runtime.spec import (
    ContainerSpec,
    NetworkMode,
    new_container_id,
    parse_signal,
    validate_id,
    validate_name,
)
from agent.runtime.state import HOLDS_RESERVATION, State, Verb, check_verb
from agent.runtime.supervisor_client import ExitEvent, RunningInfo
from agent.usage.targets import SampleTarget

log = logging.getLogger(__name__)

T = TypeVar("T")
ExitStatus = core.ExitStatus
# A user's kill with one of these means "I want it down": the restart policy must not bring it back.
# Other signals (HUP, USR1, ...) are messages to the app, and a later crash is still restarted.
_TERMINATING = frozenset({signals.SIGKILL, signals.SIGTERM, signals.SIGINT, signals.SIGQUIT})
_SIGKILL_WAIT = 30.0


@dataclass(frozen=True)
class RuntimeSettings:
    root: Path
    cgroup_parent: str = "shoal"
    log_max_bytes: int = 10 << 20
    log_max_files: int = 3
    python: str = sys.executable
    # How long a start waits for a supervisor that is being restarted before UNAVAILABLE.
    supervisor_grace: float = 2.0


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


@dataclass(frozen=True)
class Commitments:
    """What the containers holding a reservation (every state but exited) have been promised."""

    memory_requested: int
    cpu_requested: int
    memory_limits: int
    cpu_limits: int
    containers: int
    running: int


@dataclass(frozen=True)
class Listing:
    containers: list[Container]
    event_sequence: int
    event_epoch: str


class ContainerRuntime:
    def __init__(self, settings: RuntimeSettings, *, images: ImageSource,
                 cgroup_manager: cgroups.CgroupManager, connect: SupervisorConnector,
                 network: Network | None = None, boot_id: str = "",
                 quotas: ProjectQuotas | None = None) -> None:
        self.settings = settings
        self._quotas = quotas  # --storage-size as project quotas; None: measured by the usage sampler
        self.images = images
        # Bridge networking, when the agent has a --subnet (set up by the daemon before open()).
        self.network = network
        self.cgroups = cgroup_manager
        self.boot_id = boot_id
        self.containers_dir = settings.root / "containers"
        self._connect = connect
        self._containers: dict[str, Container] = {}
        # Ids and names held by creates in flight: a second create of either waits for the first.
        self._creating: dict[str, asyncio.Future[None]] = {}
        self._supervisor: Supervisor | None = None
        self._supervisor_ready = asyncio.Event()
        self.supervisor_down_since: float | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._closing = False
        self._events: EventLog | None = None
        self._fences: FenceBook | None = None
        self._executor: Executor | None = None

    # -- lifecycle of the runtime itself ----------------------------------------------------------

    async def open(self) -> None:
        """Load the event history, fences and every container record (in threads), connect to the
        supervisor (spawning it if needed) and rebuild each container's state from what it reports."""
        root = self.settings.root
        await asyncio.to_thread(self.containers_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        self._events = await asyncio.to_thread(EventLog, root / "events.jsonl", boot_id=self.boot_id)
        self._fences = await asyncio.to_thread(FenceBook, root)
        self._executor = Executor(
            events=self._events, cgroup_manager=self.cgroups, network=self.network,
            python=self.settings.python, log_max_bytes=self.settings.log_max_bytes,
            log_max_files=self.settings.log_max_files, supervisor=self._require_supervisor,
            restart_due=self._restart_due, health_result=self._health_result, auto_remove=self._auto_remove,
            quotas=self._quotas,
        )
        loaded = await asyncio.to_thread(records.load_all, self.containers_dir,
                                         quarantine_dir=root / "quarantine")
        for item in loaded:
            self._containers[item.record.id] = Container(record=item.record,
                                                         lc=core.Lifecycle.from_status(item.status))
        supervisor = await self._connect()
        alive = await supervisor.list_running()
        self._supervisor = supervisor
        await self._resync(alive, loaded={item.record.id: item for item in loaded})
        self._supervisor_ready.set()
        # Groups of containers that no longer exist (a crash, a quarantined record) would keep their
        # processes and their place in the hierarchy forever.
        collected = await asyncio.to_thread(leftovers.collect_leftovers, self.cgroups,
                                            self.settings.cgroup_parent, keep_ids=list(self._containers))
        if collected.failed:
            log.warning("%s", collected.summary())
        elif collected.removed:
            log.info("%s", collected.summary())
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
        for ctr in self._containers.values():
            self.executor.cancel_restart(ctr)
        # Pending restarts stay in status.json (next_restart_at) and are rescheduled by the next agent.
        await self.executor.close()
        if self._supervisor:
            await self._supervisor.close()
        self.events.close()
        if not self._containers:
            # Leave no empty cgroup parent behind on a host that no longer runs containers here.
            with contextlib.suppress(ShoalError, OSError):
                await asyncio.to_thread(self.cgroups.remove_parent_if_empty, self.settings.cgroup_parent)

    @property
    def events(self) -> EventLog:
        assert self._events is not None, "ContainerRuntime.open() first"
        return self._events

    @property
    def fences(self) -> FenceBook:
        assert self._fences is not None, "ContainerRuntime.open() first"
        return self._fences

    @property
    def executor(self) -> Executor:
        assert self._executor is not None, "ContainerRuntime.open() first"
        return self._executor

    def _apply(self, ctr: Container, step: core.Step) -> None:
        """Store the new lifecycle and perform its actions: one synchronous step."""
        ctr.lc = step.lifecycle
        if ctr.lc.state in (State.CREATED, State.STARTING, State.RUNNING):
            ctr.exited.clear()
        else:
            ctr.exited.set()
        self.executor.perform(ctr, step.actions)

    def _shielded(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Future[T]:
        """Run ``coro`` as a task a cancelled caller does not cancel (see the module docstring)."""
        task: asyncio.Task[T] = self.executor.spawn(coro, name=name)
        return asyncio.shield(task)

    # -- the supervisor connection ----------------------------------------------------------------

    def _require_supervisor(self) -> Supervisor:
        if not self._supervisor_ready.is_set() or self._supervisor is None:
            raise SupervisorUnavailable(self._down_message())
        return self._supervisor

    async def _ready_supervisor(self) -> Supervisor:
        """The supervisor, waiting up to ``supervisor_grace`` for one being restarted."""
        if not self._supervisor_ready.is_set():
            try:
                async with asyncio.timeout(self.settings.supervisor_grace):
                    await self._supervisor_ready.wait()
            except TimeoutError:
                raise SupervisorUnavailable(self._down_message()) from None
        return self._require_supervisor()

    def _down_message(self) -> str:
        since = self.supervisor_down_since
        ago = f" for {time.time() - since:.1f}s" if since is not None else ""
        return (f"the agent's supervisor (the process that parents containers) has been unreachable{ago}; "
                "the agent is restarting it: retry shortly")

    async def _watch_supervisor(self) -> None:
        """Apply exit events; if the supervisor goes away, start a new one and reconcile."""
        while not self._closing:
            supervisor = self._supervisor
            assert supervisor is not None
            try:
                async for event in supervisor.events():
                    await self._on_exit(event)
            except Exception:
                log.exception("supervisor event stream failed")
            if self._closing:
                return
            log.warning("lost the supervisor; reconnecting")
            self._supervisor_ready.clear()
            self.supervisor_down_since = time.time()
            await supervisor.close()
            await self._reconnect()

    async def _reconnect(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                supervisor = await self._connect()
                alive = await supervisor.list_running()
            except (ShoalError, OSError) as err:  # OSError: a full disk refusing its lock or log file
                log.error("cannot reach a supervisor (%s); retrying in %.1fs", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._supervisor = supervisor
            await self._resync(alive)
            self.supervisor_down_since = None
            self._supervisor_ready.set()
            return

    async def _resync(self, alive: dict[str, RunningInfo], *,
                      loaded: dict[str, records.Loaded] | None = None) -> None:
        """Rebuild containers' states from their run records and what the supervisor has alive: every
        container at start (``loaded``), the running ones after a reconnect."""
        for ctr in list(self._containers.values()):
            if loaded is not None:
                item = loaded[ctr.id]
                run, unreadable = item.run, item.run_unreadable
            elif ctr.lc.state is State.RUNNING:
                try:
                    run, unreadable = await asyncio.to_thread(runfile.read_run_file, ctr.directory), False
                except ShoalError:
                    run, unreadable = None, True
            else:
                continue
            facts = core.RunFacts(recorded=run is not None, alive=ctr.id in alive, unreadable=unreadable)
            if run is not None:
                facts = core.RunFacts(
                    recorded=True, alive=ctr.id in alive, pid=run.pid or 0, started_at=run.started_at,
                    exit_code=run.exit_code, signal=run.signal, finished_at=run.finished_at, error=run.error,
                    error_kind=run.error_kind,
                    oom=run.exit_code is not None and not run.error and await self.executor.oom_killed(ctr),
                    lost=run.lost,
                )
            step, lost = core.recovered(ctr.id, ctr.lc, facts=facts, policy=ctr.policy, now=time.time())
            self._apply(ctr, step)
            if lost:
                await self.executor.record_lost(ctr)

    async def _on_exit(self, event: ExitEvent) -> None:
        ctr = self._containers.get(event.container_id)
        if ctr is None:
            return
        if ctr.lc.state is State.STARTING:
            ctr.pending_exit = event  # its launch is being applied; handled right after
            return
        if ctr.lc.state is not State.RUNNING or event.pid != ctr.lc.pid:
            return  # an earlier run's, or already known
        oom = await self.executor.oom_killed(ctr)
        if ctr.lc.state is not State.RUNNING or event.pid != ctr.lc.pid:
            return
        self._apply(ctr, core.exited(ctr.id, ctr.lc, code=event.exit_code, sig=event.signal, oom=oom,
                                     finished_at=event.finished_at, policy=ctr.policy, now=time.time(),
                                     lost=event.lost))

    # -- lookup -----------------------------------------------------------------------------------

    def get(self, container_id: str) -> Container | None:
        """The container with exactly this id, if there is one (no name or prefix matching)."""
        return self._containers.get(container_id)

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
        """Default (not ``all``): the running ones and those about to run again (restarting)."""
        out = []
        for ctr in sorted(self._containers.values(), key=lambda c: c.record.created_at, reverse=True):
            state = ctr.lc.state
            if not all and not states and state not in (State.RUNNING, State.STARTING, State.RESTARTING):
                continue
            if states and state not in states:
                continue
            if name and ctr.name != name:
                continue
            if labels and any(ctr.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(ctr)
        return out

    def listing(self, **filters: Any) -> Listing:
        """``list_containers`` plus the event sequence it reflects (taken in the same step)."""
        return Listing(self.list_containers(**filters), self.events.last_sequence, self.events.epoch)

    def attachment(self, ctr: Container) -> Attachment | None:
        """Its place on the bridge (address, gateway, ports), for ps/inspect."""
        if self.network is None or ctr.spec.network is not NetworkMode.BRIDGE:
            return None
        return self.network.attachment(ctr.id)

    # -- create -----------------------------------------------------------------------------------

    async def create(self, *, container_id: str = "", name: str = "", spec: ContainerSpec,
                     pull: PullPolicy = PullPolicy.NEVER, fence: Fence = UNFENCED) -> Container:
        if spec.ports and spec.network is not NetworkMode.BRIDGE:
            raise InvalidArgument("publishing ports (-p) needs the bridge network (--network bridge)")
        if spec.network is NetworkMode.BRIDGE and self.network is None:
            raise FailedPrecondition(
                "bridge networking needs an agent started with --subnet (e.g. --subnet 10.88.0.0/24)"
            )
        spec.resources.validate()
        cid = validate_id(container_id) if container_id else new_container_id()
        if name:
            validate_name(name)
        if spec.auto_remove and spec.restart.mode is not RestartMode.NO:
            raise InvalidArgument(
                f"auto-remove (--rm) and restart policy {spec.restart} conflict: a removed container "
                "cannot be restarted; choose one"
            )
        await self.fences.admit(fence)
        while True:
            existing = self._containers.get(cid)
            if existing is not None:
                # Compared through the domain value, so a record written by an older agent (fewer keys)
                # still matches the same request.
                if existing.spec == spec and existing.name == (name or existing.name):
                    return existing  # idempotent create: same id, same spec
                raise AlreadyExists(f"container id {cid} already exists with a different spec")
            in_flight = self._creating.get(cid) or (self._creating.get("name:" + name) if name else None)
            if in_flight is None:
                break
            await asyncio.shield(in_flight)  # then look again: it may have made what we were asked for
        if name:
            for other in self._containers.values():
                if other.name == name:
                    raise AlreadyExists(
                        f"the name {name!r} is already in use by container {other.id[:12]}; "
                        "remove it or choose another name"
                    )
        request = prepare.Request(container_id=cid, name=name or f"shoal-{cid[:12]}", spec=spec, fence=fence)
        # Reserved now, in the same step as the checks above: the work runs in a task of its own.
        keys = [cid] + (["name:" + name] if name else [])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._creating[key] = done
        return await self._shielded(self._create(request, pull=pull, keys=keys, done=done),
                                    name=f"create-{cid[:12]}")

    async def create_and_start(self, *, container_id: str = "", name: str = "", spec: ContainerSpec,
                               pull: PullPolicy = PullPolicy.NEVER, fence: Fence = UNFENCED,
                               hold: Hold | None = None,
                               start: Callable[[str], Awaitable[Container]] | None = None) -> Container:
        """Create, then start (``start``, the API's with its metrics, or ``self.start``): one unit a
        caller going away cannot split, so it never leaves a Created container nobody will start.
        ``hold`` is put on the container before it can exit."""
        async def both() -> Container:
            ctr = await self.create(container_id=container_id, name=name, spec=spec, pull=pull, fence=fence)
            if hold is not None:
                hold.hold(ctr)
            if start is not None:
                return await start(ctr.id)
            return await self.start(ctr.id, fence=fence)

        return await self._shielded(both(), name=f"run-{(container_id or name)[:12]}")

    async def _create(self, request: prepare.Request, *, pull: PullPolicy, keys: list[str],
                      done: asyncio.Future[None]) -> Container:
        cid = request.container_id
        try:
            image = None
            if pull is PullPolicy.ALWAYS:
                image = await asyncio.to_thread(self.images.pull, request.spec.image)
            # One trip to a worker thread for the whole create (resolve, layers, prepare): each hop costs
            # a thread wake-up and a loop wake-up, which on an idle host is most of a create's time.
            record = await asyncio.to_thread(self._prepare_blocking, request, image, pull)
            if record is None:  # not on this host, and the policy allows a pull
                image = await asyncio.to_thread(self.images.pull, request.spec.image)
                record = await asyncio.to_thread(self._prepare_blocking, request, image, PullPolicy.NEVER)
                assert record is not None
            ctr = Container(record=record)
            self._containers[cid] = ctr
            self.executor.emit(ctr, core.Emit(EventType.CREATED, message=request.spec.image))
            return ctr
        finally:
            for key in keys:
                self._creating.pop(key, None)
            done.set_result(None)

    def _prepare_blocking(self, request: prepare.Request, image: Image | None,
                          pull: PullPolicy) -> records.ContainerRecord | None:
        """Blocking. Resolve the image (unless given), then stage the container's files; None when the
        image is not here and ``pull`` allows pulling it."""
        if image is None:
            try:
                image = self.images.resolve(request.spec.image)
            except NotFound:
                if pull is PullPolicy.NEVER:
                    raise
                return None
        layers = self.images.layer_paths(image)
        # Compiled now: a profile libseccomp refuses fails the create, and the start finds it cached.
        self.executor.compiled_seccomp(request.spec)
        return prepare.prepare(request, image=image, layers=layers, containers_dir=self.containers_dir,
                               cgroup_parent=self.settings.cgroup_parent)

    # -- start ------------------------------------------------------------------------------------

    async def start(self, ref: str, *, fence: Fence = UNFENCED) -> Container:
        """The user's start: forgets "stopped by user", restarts counting from zero, and replaces a
        pending automatic restart (it starts now)."""
        ctr = self.resolve(ref)
        await self.fences.admit(fence)
        check_verb(Verb.START, name=ctr.name, state=ctr.lc.state)
        return await self._shielded(self._start(ctr), name=f"start-{ctr.id[:12]}")

    async def _start(self, ctr: Container) -> Container:
        async with ctr.lock:
            if ctr.lc.state is State.RUNNING:
                return ctr
            check_verb(Verb.START, name=ctr.name, state=ctr.lc.state)
            await self._ready_supervisor()
            previous = ctr.lc
            self._apply(ctr, core.start(ctr.id, ctr.lc, automatic=False, now=time.time()))
            await self._launch(ctr, previous=previous, automatic=False)
        return ctr

    async def _restart_due(self, ctr: Container) -> None:
        ctr.restart_timer = None
        async with ctr.lock:
            if self._closing or self._containers.get(ctr.id) is not ctr:
                return
            step = core.restart_due(ctr.id, ctr.lc, now=time.time())
            if step is None:
                return
            try:
                await self._ready_supervisor()
            except SupervisorUnavailable:
                # Stay RESTARTING and try again shortly: the supervisor is coming back.
                self.executor.perform(ctr, (core.ScheduleRestart(time.time() + 1.0),))
                return
            previous = ctr.lc
            self._apply(ctr, step)
            try:
                await self._launch(ctr, previous=previous, automatic=True)
            except ShoalError as err:
                log.warning("restart %d of %s failed: %s", ctr.lc.restart_count, ctr.name, err)

    async def _launch(self, ctr: Container, *, previous: core.Lifecycle, automatic: bool) -> None:
        """Launch (state STARTING, lock held) and apply the outcome. Raises the launch's error for a
        user's start; an automatic restart's failure is an exit for the restart policy."""
        now = time.time()
        try:
            result = await self.executor.launch(
                ctr, fresh_cgroup=previous.state in (State.EXITED, State.RESTARTING))
        except ShoalError as err:
            if not automatic:
                self._apply(ctr, core.start_aborted(ctr.id, ctr.lc, previous=previous, now=time.time()))
                raise
            result = LaunchFailed(kind="setup", error=str(err), finished_at=time.time())
        except BaseException:
            self._apply(ctr, core.start_aborted(ctr.id, ctr.lc, previous=previous, now=now))
            raise
        if isinstance(result, LaunchFailed):
            self._apply(ctr, core.launch_failed(ctr.id, ctr.lc, kind=result.kind, error=result.error,
                                                finished_at=result.finished_at, automatic=automatic,
                                                policy=ctr.policy, now=time.time()))
            if not automatic:
                raise LaunchError(result.error, kind=result.kind)
            return
        self._apply(ctr, core.launched(ctr.id, ctr.lc, pid=result.pid, started_at=result.started_at,
                                       policy=ctr.policy, now=time.time()))
        pending, ctr.pending_exit = ctr.pending_exit, None
        if pending is not None:
            await self._on_exit(pending)

    # -- stop / kill / wait -----------------------------------------------------------------------

    async def _user_wants_it_down(self, ctr: Container) -> None:
        """Stop wins: cancel a pending restart, then wait out a launch already in flight."""
        self._apply(ctr, core.stop_requested(ctr.id, ctr.lc, now=time.time()))
        async with ctr.lock:
            pass

    async def kill(self, ref: str, signal: str | int = "KILL", *, fence: Fence = UNFENCED) -> Container:
        ctr = self.resolve(ref)
        sig = parse_signal(signal, default=int(signals.SIGKILL))
        await self.fences.admit(fence)
        check_verb(Verb.KILL, name=ctr.name, state=ctr.lc.state)
        if sig in _TERMINATING or sig == ctr.record.prepared.stop_signal:
            was_restarting = ctr.lc.state is State.RESTARTING
            await self._user_wants_it_down(ctr)
            if was_restarting and ctr.lc.state is not State.RUNNING:
                return ctr  # killing a container waiting to restart: the restart is cancelled
        if ctr.lc.state is not State.RUNNING:
            raise FailedPrecondition(f"container {ctr.name} is not running")
        await self._require_supervisor().kill(ctr.id, sig)
        return ctr

    async def stop(self, ref: str, *, timeout: float = 10.0, fence: Fence = UNFENCED) -> Container:
        ctr = self.resolve(ref)
        await self.fences.admit(fence)
        check_verb(Verb.STOP, name=ctr.name, state=ctr.lc.state)
        # A stop asked for is carried out even if its caller goes away (an interrupted `shoal run`):
        # from here on nothing the caller's cancellation reaches.
        return await self._shielded(self._stop(ctr, timeout), name=f"stop-{ctr.id[:12]}")

    async def _stop(self, ctr: Container, timeout: float) -> Container:
        await self._user_wants_it_down(ctr)
        if ctr.lc.state is not State.RUNNING:
            return ctr  # docker stop on a stopped container is not an error
        await self._require_supervisor().kill(ctr.id, ctr.record.prepared.stop_signal)
        try:
            async with asyncio.timeout(max(timeout, 0)):
                await ctr.exited.wait()
        except TimeoutError:
            await self._require_supervisor().kill(ctr.id, int(signals.SIGKILL))
            await self._wait_exited(ctr, timeout=_SIGKILL_WAIT)
        return ctr

    async def _wait_exited(self, ctr: Container, *, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await ctr.exited.wait()
        except TimeoutError:
            raise ShoalError(f"container {ctr.name} did not exit within {timeout:.0f}s of SIGKILL") from None

    async def wait(self, ref: str) -> core.ExitStatus:
        ctr = self.resolve(ref)
        check_verb(Verb.WAIT, name=ctr.name, state=ctr.lc.state)
        await ctr.exited.wait()
        assert ctr.lc.exit is not None
        return ctr.lc.exit

    # -- remove -----------------------------------------------------------------------------------

    async def remove(self, ref: str, *, force: bool = False, missing_ok: bool = False,
                     fence: Fence = UNFENCED) -> tuple[str, bool]:
        """Remove a container: ``(id, already_removed)``. With ``missing_ok``, an id that does not exist
        (any more) is ``(ref, True)`` rather than ``NotFound``: a retrying caller's second rm succeeds."""
        await self.fences.admit(fence)
        try:
            ctr = self.resolve(ref)
        except NotFound:
            if missing_ok:
                return ref, True
            raise
        if ctr.lc.state in (State.RUNNING, State.STARTING) and not force:
            raise FailedPrecondition(f"container {ctr.name} is running: stop it first or use rm -f")
        if ctr.lc.state in (State.REMOVING, State.REMOVED) and missing_ok:
            await self._shielded(self._removal_settled(ctr), name=f"rm-wait-{ctr.id[:12]}")
            return ctr.id, True
        check_verb(Verb.REMOVE, name=ctr.name, state=ctr.lc.state)
        return await self._shielded(self._remove(ctr, force=force), name=f"rm-{ctr.id[:12]}")

    async def _removal_settled(self, ctr: Container) -> None:
        async with ctr.lock:
            pass

    async def _remove(self, ctr: Container, *, force: bool) -> tuple[str, bool]:
        await self._user_wants_it_down(ctr)
        async with ctr.lock:
            if ctr.lc.state in (State.REMOVING, State.REMOVED):
                return ctr.id, True
            if ctr.lc.state is State.RUNNING:
                if not force:
                    raise FailedPrecondition(f"container {ctr.name} is running: stop it first or use rm -f")
                await self._require_supervisor().kill(ctr.id, int(signals.SIGKILL))
                await self._wait_exited(ctr, timeout=_SIGKILL_WAIT)
            self._apply(ctr, core.removing(ctr.id, ctr.lc, now=time.time()))
            try:
                await self.executor.delete(ctr)
            except BaseException:
                self._apply(ctr, core.remove_failed(ctr.id, ctr.lc, now=time.time()))
                raise
            self._containers.pop(ctr.id, None)
            self._apply(ctr, core.removed(ctr.id, ctr.lc, now=time.time()))
            return ctr.id, False

    async def _auto_remove(self, container_id: str) -> None:
        ctr = self._containers.get(container_id)
        if ctr is not None:
            await ctr.unheld.wait()  # an attached caller gets the end of its output and its exit first
        with contextlib.suppress(ShoalError):
            await self.remove(container_id, force=True, missing_ok=True)

    # -- health -----------------------------------------------------------------------------------

    def _health_result(self, ctr: Container, old: healthcheck.HealthState,
                       new: healthcheck.HealthState) -> None:
        if self._containers.get(ctr.id) is not ctr or ctr.lc.state is not State.RUNNING:
            return
        self._apply(ctr, core.health_result(ctr.id, ctr.lc, old=old, new=new, policy=ctr.policy))

    # -- logs and exec ----------------------------------------------------------------------------

    async def logs(self, ref: str, *, follow: bool, tail: int | None) -> AsyncIterator[ctrlogs.LogEntry]:
        ctr = self.resolve(ref)
        directory = ctr.directory
        if not follow:
            for entry in await asyncio.to_thread(lambda: list(ctrlogs.read_entries(directory, tail=tail))):
                yield entry
            return

        def finished() -> bool:
            return ctr.lc.state not in (State.CREATED, State.STARTING, State.RUNNING) \
                or self._containers.get(ctr.id) is not ctr

        # ``exited`` is set exactly when ``finished()`` turns true: the follower sees the end at once.
        async for entry in ctrlogs.follow_entries(directory, is_finished=finished, tail=tail,
                                                  wake=ctr.exited):
            yield entry

    async def attached_run(self, ctr: Container, hold: Hold
                           ) -> AsyncIterator[ctrlogs.LogEntry | core.ExitStatus]:
        """A held container's output from its start, then its exit status; the hold is released after
        the last item is taken, or when the caller goes away. An auto-remove container is removed before
        the iteration ends, so a caller that waits for the end finds it gone (``docker run --rm``
        returns only then: a script's next ``image rm`` must not find the image in use)."""
        try:
            async for entry in self.logs(ctr.id, follow=True, tail=None):
                yield entry
            await ctr.exited.wait()
            if ctr.lc.exit is None:
                raise NotFound(f"container {ctr.name} was removed before it exited")
            yield ctr.lc.exit
            if ctr.policy.auto_remove:
                hold.release()
                with contextlib.suppress(ShoalError):  # the agent's own removal reports its failures
                    await self.remove(ctr.id, force=True, missing_ok=True)
        finally:
            hold.release()

    async def exec(self, ref: str, *, argv: list[str], env: list[str], working_dir: str,
                   user: str) -> AsyncIterator[tuple[str, bytes | int]]:
        """Yields ("stdout", bytes), ("stderr", bytes) and finally ("exit", code)."""
        ctr = self.resolve(ref)
        check_verb(Verb.EXEC, name=ctr.name, state=ctr.lc.state)
        proc = await self.executor.spawn_exec(ctr, argv=argv, env=env, working_dir=working_dir, user=user,
                                              merge_stderr=False)
        async for chunk in execs.stream_output(proc):
            yield chunk

    # -- for the usage sampler and the host API ---------------------------------------------------

    def sample_targets(self) -> list[SampleTarget]:
        """The running containers, as the usage sampler needs them (cgroup, pid, limits)."""
        out = []
        for ctr in list(self._containers.values()):
            if ctr.lc.state is not State.RUNNING or not ctr.lc.pid:
                continue
            target = ctr.sample_target
            if target is None or target.pid != ctr.lc.pid:
                # Built once per run (a restart has a new pid and a fresh cgroup): this is called
                # every sampling interval for every container.
                cg = self.cgroups.open(ctr.record.prepared.cgroup_name)
                if cg is None:
                    continue
                res = ctr.spec.resources
                target = ctr.sample_target = SampleTarget(
                    id=ctr.id, name=ctr.name, image=ctr.spec.image, labels=ctr.labels, pid=ctr.lc.pid,
                    cgroup=cg, upper_dir=Path(ctr.record.prepared.upper_dir),
                    started_at=ctr.lc.started_at or 0.0, memory_limit_bytes=res.memory_bytes,
                    cpu_limit_millis=res.cpu_millis, own_network=ctr.spec.network is not NetworkMode.HOST,
                    storage_limit_bytes=None if ctr.storage_quota else res.storage_bytes,
                )
            out.append(target)
        return out

    def evict(self, target: SampleTarget, message: str) -> None:
        """The usage sampler found this run of a container over its storage limit: kill it, recording
        why (reason ``Evicted``). A container that exited or restarted meanwhile is left alone."""
        ctr = self._containers.get(target.id)
        if ctr is None or ctr.lc.state is not State.RUNNING or ctr.lc.pid != target.pid:
            return
        log.warning("evicting %s: %s", ctr.name, message)
        self._apply(ctr, core.evicted(ctr.id, ctr.lc, message=message))

    def commitments(self) -> Commitments:
        """Requests and limits of every container holding a reservation (``state.HOLDS_RESERVATION``)."""
        memory = cpu = memory_limits = cpu_limits = running = 0
        for ctr in self._containers.values():
            state = ctr.lc.state
            running += state is State.RUNNING
            if state not in HOLDS_RESERVATION:
                continue
            res = ctr.spec.resources
            memory += res.memory_reserved
            cpu += res.cpu_reserved
            memory_limits += res.memory_bytes or 0
            cpu_limits += res.cpu_millis or 0
        return Commitments(memory_requested=memory, cpu_requested=cpu, memory_limits=memory_limits,
                           cpu_limits=cpu_limits, containers=len(self._containers), running=running)

    def conditions(self) -> list[tuple[str, str, float]]:
        """Host conditions the runtime knows of: ``(type, message, since)``."""
        since = self.supervisor_down_since
        if since is None:
            return []
        return [("SupervisorDown", self._down_message(), since)]

    # -- images -----------------------------------------------------------------------------------

    def image_in_use(self, image_id: str) -> bool:
        """Thread-safe (the image store asks from its worker threads)."""
        return any(c.record.prepared.image_id == image_id for c in list(self._containers.values()))

    def layers_in_use(self) -> set[str]:
        """diff_ids of the image layers some container's rootfs is built from (never garbage)."""
        used = set()
        for ctr in list(self._containers.values()):
            for lower in ctr.record.prepared.lower_dirs[1:]:  # [0] is the container's own init layer
                used.add("sha256:" + Path(lower).name)
        return used

    def disk_usage(self, store_usage: StoreDiskUsage) -> DiskUsage:
        """Blocking (measures every container's writable layer): call it in a thread."""
        containers = list(self._containers.values())
        per_image = collections.Counter(c.record.prepared.image_id for c in containers)
        return DiskUsage(
            images=[ImageDiskUsage(id=i.id, repo_tags=tuple(i.repo_tags), size=i.size,
                                   shared_size=i.shared_size, containers=per_image[i.id])
                    for i in store_usage.images],
            layers=store_usage.layer_count, layers_bytes=store_usage.layer_bytes,
            blobs_bytes=store_usage.blob_bytes,
            containers=[ContainerDiskUsage(
                id=c.id, name=c.name, image=c.spec.image, state=c.lc.state,
                writable_bytes=overlay.upper_size_bytes(Path(c.record.prepared.upper_dir)),
            ) for c in containers],
        )


__all__ = ["Commitments", "Container", "ContainerRuntime", "ExitStatus", "Listing", "PullPolicy",
           "RuntimeSettings"]
