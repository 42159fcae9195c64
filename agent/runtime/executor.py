"""Carrying out what the core decided, and the I/O of launching and removing containers.

``agent.runtime.core`` returns actions; ``Executor.perform`` carries them out for one container. It
runs on the event loop and never blocks it: events go to the event log (an in-memory append plus one
small page-cache write, so a listing and the event stream never disagree), status files are written by
``StatusWriter`` in a worker thread, timers and health monitors are tasks, signals go to the supervisor
from tasks of their own. The heavier I/O the verbs await — building a cgroup, attaching the network,
asking the supervisor to launch, killing and removing a cgroup, deleting a directory — is here too, each
blocking part in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.cgroups import manager as cgroups
from agent.errors import FailedPrecondition, LaunchError, ResourceExhausted, ShoalError
from agent.network import netns
from agent.network.manager import Attachment
from agent.rootfs import initlayer, overlay
from agent.rootfs.storage_limit import ProjectQuotas
from agent.runtime import core, execs, probes, runfile
from agent.runtime import health as healthcheck
from agent.runtime import plan as plans
from agent.runtime.container import Container
from agent.runtime.drivers import Network, Supervisor
from agent.runtime.events import EventLog
from agent.runtime.health import HealthCheck, HealthStatus, ProbeKind
from agent.runtime.records import ContainerStatus, write_status
from agent.runtime.spec import NetworkMode
from agent.runtime.state import State

log = logging.getLogger(__name__)
T = TypeVar("T")


class StatusWriter:
    """status.json writes, off the event loop: one writer task, in order, the latest status per container
    (a burst of changes to one container costs one write).

    A full disk (``ResourceExhausted``) does not lose a status: it stays in memory, superseded by any
    newer one, and is tried again every ``retry_after`` seconds until it is written; the failure is
    logged once per episode, and its end too. Other failures are logged and the status dropped, as a
    retry would not help (the container's directory is gone)."""

    def __init__(self, *, retry_after: float = 1.0) -> None:
        self._pending: dict[Path, ContainerStatus] = {}
        self._failed: dict[Path, ContainerStatus] = {}  # refused by a full disk, waiting for the retry
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._retry_after = retry_after
        self._failing = False

    @property
    def unwritten(self) -> int:
        """How many containers' statuses a full disk is holding back."""
        return len(self._failed)

    def save(self, directory: Path, status: ContainerStatus) -> None:
        self._failed.pop(directory, None)
        self._pending[directory] = status
        self._kick()

    def forget(self, directory: Path) -> None:
        self._pending.pop(directory, None)
        self._failed.pop(directory, None)

    async def flush(self) -> None:
        """Return once every status saved so far is written, failed and logged, or held for a retry."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _kick(self) -> None:
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="status-writer")

    async def _drain(self) -> None:
        while self._pending:
            directory = next(iter(self._pending))
            status = self._pending.pop(directory)
            try:
                await asyncio.to_thread(write_status, directory, status)
            except ResourceExhausted as err:
                if directory not in self._pending:  # else a newer status replaces it anyway
                    self._failed[directory] = status
                # The disk is full: the others would fail the same way. All wait for the retry.
                self._failed.update(self._pending)
                self._pending.clear()
                if not self._failing:
                    log.error("%s; keeping container statuses in memory and retrying every %gs",
                              err, self._retry_after)
                    self._failing = True
                if self._retry is None:
                    self._retry = asyncio.get_running_loop().call_later(self._retry_after, self._requeue)
            except ShoalError as err:
                # Bookkeeping only (restart counts, health): the containers keep running.
                log.error("%s", err)
            else:
                if self._failing and not self._failed:
                    log.info("container statuses are written again")
                    self._failing = False

    def _requeue(self) -> None:
        self._retry = None
        for directory, status in self._failed.items():
            self._pending.setdefault(directory, status)
        self._failed.clear()
        self._kick()


@dataclass(frozen=True)
class Launched:
    pid: int
    started_at: float


@dataclass(frozen=True)
class LaunchFailed:
    kind: str
    error: str
    finished_at: float


class Executor:
    """Performs actions for a runtime; see the module docstring.

    ``supervisor`` returns the current supervisor connection (``SupervisorUnavailable`` while there is
    none); the three callbacks hand results back to the runtime, which feeds them to the core.
    """

    def __init__(self, *, events: EventLog, cgroup_manager: cgroups.CgroupManager, network: Network | None,
                 python: str, log_max_bytes: int, log_max_files: int,
                 supervisor: Callable[[], Supervisor],
                 restart_due: Callable[[Container], Coroutine[Any, Any, None]],
                 health_result: Callable[[Container, healthcheck.HealthState, healthcheck.HealthState], None],
                 auto_remove: Callable[[str], Coroutine[Any, Any, None]],
                 quotas: ProjectQuotas | None = None) -> None:
        self.events = events
        self.quotas = quotas  # set when this host enforces --storage-size with project quotas
        self.cgroups = cgroup_manager
        self.network = network
        self.statuses = StatusWriter()
        self._python = python
        self._log_max_bytes = log_max_bytes
        self._log_max_files = log_max_files
        self._supervisor = supervisor
        self._restart_due = restart_due
        self._health_result = health_result
        self._auto_remove = auto_remove
        self._background: set[asyncio.Task[Any]] = set()
        self.closing = False

    # -- actions ------------------------------------------------------------------------------------

    def perform(self, ctr: Container, actions: tuple[core.Action, ...]) -> None:
        for action in actions:
            if isinstance(action, core.Emit):
                self.emit(ctr, action)
            elif isinstance(action, core.SaveStatus):
                if ctr.lc.state not in (State.REMOVING, State.REMOVED):
                    self.statuses.save(ctr.directory, ctr.lc.status())
            elif isinstance(action, core.ScheduleRestart):
                self._schedule_restart(ctr, action.at)
            elif isinstance(action, core.CancelRestart):
                self.cancel_restart(ctr)
            elif isinstance(action, core.StartHealth):
                self._start_health(ctr)
            elif isinstance(action, core.StopHealth):
                self.stop_health(ctr)
            elif isinstance(action, core.Signal):
                self.spawn(self._signal(ctr, action.signal), name=f"signal-{ctr.id[:12]}")
            elif isinstance(action, core.AutoRemove) and not self.closing:
                self.spawn(self._auto_remove(ctr.id), name=f"auto-remove-{ctr.id[:12]}")

    def emit(self, ctr: Container, action: core.Emit) -> None:
        lc = ctr.lc
        self.events.append(
            action.kind, container_id=ctr.id, container_name=ctr.name, labels=ctr.labels,
            exit_code=action.exit_code, reason=action.reason, message=action.message, health=lc.health,
            restart_count=lc.restart_count if action.restart_count is None else action.restart_count,
        )

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        """Stop timers, monitors and background work; persist pending statuses."""
        self.closing = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.statuses.flush()
        self.statuses.close()

    def _schedule_restart(self, ctr: Container, at: float) -> None:
        self.cancel_restart(ctr)
        if self.closing:
            return  # next_restart_at is in status.json: the next agent schedules it
        delay = max(0.0, at - time.time())
        loop = asyncio.get_running_loop()
        ctr.restart_timer = loop.call_later(
            delay, lambda: self.spawn(self._restart_due(ctr), name=f"restart-{ctr.id[:12]}"))

    def cancel_restart(self, ctr: Container) -> None:
        if ctr.restart_timer is not None:
            ctr.restart_timer.cancel()
            ctr.restart_timer = None

    async def _signal(self, ctr: Container, signal: int) -> None:
        try:
            await self._supervisor().kill(ctr.id, signal)
        except ShoalError as err:
            log.warning("cannot signal container %s: %s", ctr.name, err)

    # -- health -------------------------------------------------------------------------------------

    def _start_health(self, ctr: Container) -> None:
        check = ctr.spec.health
        if check is None or ctr.health_task is not None or self.closing:
            return
        lc = ctr.lc
        monitor = healthcheck.HealthMonitor(
            check, started_at=lc.started_at or time.time(),
            state=healthcheck.HealthState(
                status=lc.health if lc.health is not HealthStatus.NONE else HealthStatus.STARTING,
                failing_streak=lc.health_failing_streak, log=lc.health_log),
            probe=functools.partial(self._probe, ctr, check),
            on_result=functools.partial(self._health_result, ctr),
        )
        ctr.health_task = self.spawn(monitor.run(), name=f"health-{ctr.id[:12]}")

    def stop_health(self, ctr: Container) -> None:
        if ctr.health_task is not None:
            ctr.health_task.cancel()
            ctr.health_task = None

    async def _probe(self, ctr: Container, check: HealthCheck) -> healthcheck.ProbeOutcome:
        if ctr.lc.state is not State.RUNNING:
            return False, "container is not running"
        if check.kind is ProbeKind.EXEC:
            try:
                proc = await self.spawn_exec(ctr, argv=list(check.command), env=[], working_dir="", user="",
                                             merge_stderr=True)
            except ShoalError as err:
                return False, str(err)
            return await probes.exec_probe(proc, timeout=check.timeout)
        # On the host's network the container's loopback is ours: no namespace to enter.
        pid = None if ctr.spec.network is NetworkMode.HOST else ctr.lc.pid
        if check.kind is ProbeKind.TCP:
            return await probes.tcp_probe(pid=pid, port=check.port, timeout=check.timeout)
        return await probes.http_probe(pid=pid, port=check.port, path=check.path, timeout=check.timeout)

    # -- exec ---------------------------------------------------------------------------------------

    async def spawn_exec(self, ctr: Container, *, argv: list[str], env: list[str], working_dir: str,
                         user: str, merge_stderr: bool) -> asyncio.subprocess.Process:
        if ctr.lc.state is not State.RUNNING:
            raise FailedPrecondition(f"container {ctr.name} is not running")
        prepared, pid = ctr.record.prepared, ctr.lc.pid

        def build() -> plans.ExecPlan:
            cg = self.cgroups.open(prepared.cgroup_name)
            return execs.build_plan(prepared, pid=pid, argv=argv, env=env, working_dir=working_dir, user=user,
                                    cgroup_procs=cg.join_files() if cg else (),
                                    capabilities=self.capabilities(ctr.spec.network))

        exec_plan = await asyncio.to_thread(build)
        return await execs.spawn(exec_plan, python=self._python, merge_stderr=merge_stderr)

    # -- launch -------------------------------------------------------------------------------------

    async def launch(self, ctr: Container, *, fresh_cgroup: bool) -> Launched | LaunchFailed:
        """Build its cgroup (a fresh one for every run: the kernel's OOM counter is per group, and a
        restart must not inherit "OOMKilled"), attach the network (before the process exists, so a taken
        port is refused first), and have the supervisor start it. Errors before the supervisor is asked
        raise (nothing ran); a launch the supervisor refused is ``LaunchFailed``."""
        supervisor = self._supervisor()
        cg = await asyncio.to_thread(self._ensure_cgroup, ctr, fresh=fresh_cgroup)
        ctr.cgroup_paths = cg.paths()
        ctr.storage_quota = await asyncio.to_thread(self._apply_storage_quota, ctr)
        launch_plan = self._launch_plan(ctr, cgroup_procs=cg.join_files())
        if ctr.spec.network is NetworkMode.BRIDGE:
            attachment = await self._attach(ctr)
            launch_plan = dataclasses.replace(launch_plan, netns_path=attachment.netns_path)
        began = time.time()
        try:
            result = await supervisor.start(
                ctr.id, directory=ctr.directory, plan=launch_plan, log_max_bytes=self._log_max_bytes,
                log_max_files=self._log_max_files,
            )
        except LaunchError as err:
            await self.detach(ctr)
            run = await asyncio.to_thread(runfile.read_run_file, ctr.directory)
            finished = run.finished_at if run is not None and run.error and run.finished_at else time.time()
            return LaunchFailed(kind=err.kind, error=str(err), finished_at=finished)
        except ShoalError:
            # The connection broke mid-request: the supervisor may or may not have started it. Its run
            # record says which (it is written before the supervisor replies).
            run = await asyncio.to_thread(runfile.read_run_file, ctr.directory)
            if run is not None and run.pid and run.started_at is not None and run.started_at >= began:
                return Launched(pid=run.pid, started_at=run.started_at)
            await self.detach(ctr)
            raise
        return Launched(pid=result.pid, started_at=result.started_at)

    def _ensure_cgroup(self, ctr: Container, *, fresh: bool) -> cgroups.Cgroup:
        """Blocking."""
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
        return cg

    def _apply_storage_quota(self, ctr: Container) -> bool:
        """Blocking. Whether the kernel enforces this container's storage limit now; if its quota
        cannot be set, the sampler measures it instead (the limit holds either way)."""
        limit = ctr.spec.resources.storage_bytes
        if self.quotas is None or limit is None:
            return False
        dirs = overlay.ContainerDirs(ctr.directory)
        try:
            self.quotas.apply(upper=Path(ctr.record.prepared.upper_dir), work=dirs.work, limit_bytes=limit)
        except OSError as err:
            log.warning("storage limit of %s: no project quota (%s); measuring it instead", ctr.name, err)
            return False
        return True

    async def _attach(self, ctr: Container) -> Attachment:
        if self.network is None:
            raise FailedPrecondition(
                "bridge networking needs an agent started with --subnet (e.g. --subnet 10.88.0.0/24)"
            )
        attachment = self.network.attachment(ctr.id)
        # A recorded namespace whose bind mount is gone (the host rebooted) is just an empty file.
        if attachment is None or not await asyncio.to_thread(netns.is_pinned, Path(attachment.netns_path)):
            if attachment is not None:
                await self.network.detach(ctr.id)
            attachment = await self.network.attach(ctr.id, publish=ctr.spec.ports)
        p = ctr.record.prepared
        await asyncio.to_thread(initlayer.write_hosts, Path(p.lower_dirs[0]), hostname=p.hostname,
                                address=str(attachment.address.ip))
        return attachment

    async def detach(self, ctr: Container) -> None:
        if self.network is not None and ctr.spec.network is NetworkMode.BRIDGE:
            await self.network.detach(ctr.id)

    def capabilities(self, network: NetworkMode) -> tuple[str, ...]:
        caps = plans.DEFAULT_CAPABILITIES
        if not self.cgroups.supports_device_rules:
            # Without a device cgroup (v1 devices hierarchy or v2 BPF device program), mknod is the only
            # guard against host disks.
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
            rootfs=overlay.OverlayRootfs(lower=p.lower_dirs, upper=p.upper_dir, work=p.work_dir,
                                       target=p.rootfs_dir),
            argv=p.argv, env=p.env, cwd=p.working_dir, uid=p.uid, gid=p.gid,
            additional_gids=p.additional_gids, hostname=p.hostname, read_only=spec.read_only,
            namespaces=namespaces, cgroup_procs=cgroup_procs, capabilities=self.capabilities(spec.network),
        )

    # -- exits and removal --------------------------------------------------------------------------

    async def oom_killed(self, ctr: Container) -> bool:
        def read() -> bool:
            cg = self.cgroups.open(ctr.record.prepared.cgroup_name)
            return bool(cg and cg.oom_killed())

        try:
            return await asyncio.to_thread(read)
        except (ShoalError, OSError) as err:
            log.warning("cannot read the OOM counter of %s: %s", ctr.name, err)
            return False

    async def kill_group(self, ctr: Container, *, remove: bool) -> None:
        """Kill every process left in its cgroup (and remove the group): freeze/kill/poll, in a thread."""
        def work() -> None:
            cg = self.cgroups.open(ctr.record.prepared.cgroup_name)
            if cg is None:
                return
            cg.kill_all()
            if remove:
                cg.remove()

        await asyncio.to_thread(work)

    async def record_lost(self, ctr: Container) -> None:
        """Kill what is left of a container nobody supervises, and say so in its run record."""
        try:
            await self.kill_group(ctr, remove=False)
        except (ShoalError, OSError) as err:
            log.error("cannot kill the processes of lost container %s: %s", ctr.name, err)
        lc = ctr.lc

        def write() -> None:
            previous = runfile.read_run_file(ctr.directory)
            runfile.write_run_file(ctr.directory, runfile.RunRecord(
                pid=previous.pid if previous else None, started_at=lc.started_at, exit_code=137, signal=None,
                finished_at=lc.finished_at or time.time(), error=None, error_kind=None,
            ))

        with contextlib.suppress(ShoalError):
            await asyncio.to_thread(write)

    async def delete(self, ctr: Container) -> None:
        """Its cgroup, network and directory (each idempotent, so a retried rm finishes the job)."""
        self.stop_health(ctr)
        self.cancel_restart(ctr)
        self.statuses.forget(ctr.directory)
        await self.statuses.flush()
        await self.kill_group(ctr, remove=True)
        await self.detach(ctr)
        if self.quotas is not None and ctr.spec.resources.storage_bytes is not None:
            await asyncio.to_thread(self.quotas.release, Path(ctr.record.prepared.upper_dir))
        await asyncio.to_thread(shutil.rmtree, ctr.directory, True)


__all__ = ["Executor", "LaunchFailed", "Launched", "StatusWriter"]
