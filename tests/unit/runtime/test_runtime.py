"""ContainerRuntime against in-memory drivers: the verbs, races and failures a scheduler will cause."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from agent.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LaunchError,
    NotFound,
    StaleEpoch,
    SupervisorUnavailable,
)
from agent.runtime.container import Hold
from agent.runtime.containers import ContainerRuntime, PullPolicy, RuntimeSettings
from agent.runtime.events import EventType, HistoryTruncated
from agent.runtime.fencing import Fence
from agent.runtime.restart import RestartMode, RestartPolicy
from agent.runtime.spec import ContainerSpec, Resources
from agent.runtime.state import State
from tests.unit.runtime.fakes import FakeCgroups, FakeImages, SupervisorWorld

T = TypeVar("T")
SPEC = ContainerSpec(image="busybox", command=("sleep", "300"))


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


class Harness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.world = SupervisorWorld()
        self.images = FakeImages(root.parent / "layer")
        self.cgroups = FakeCgroups()

    def runtime(self) -> ContainerRuntime:
        return ContainerRuntime(RuntimeSettings(root=self.root, python=sys.executable, supervisor_grace=0.05),
                                images=self.images, cgroup_manager=self.cgroups, connect=self.world.connect,
                                boot_id="boot-1")

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[ContainerRuntime]:
        rt = self.runtime()
        await rt.open()
        try:
            yield rt
        finally:
            await rt.close()


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "root")


async def next_event(rt: ContainerRuntime, after: int, kind: EventType, container_id: str) -> int:
    """The sequence of the first ``kind`` event of ``container_id`` after ``after`` (waits for it)."""
    async for event in rt.events.subscribe(after_sequence=after):
        if event.type is kind and event.container_id == container_id:
            return event.sequence
    raise AssertionError("unreachable")


# -- create ------------------------------------------------------------------------------------

def test_create_start_and_list_with_the_event_sequence_it_reflects(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            ctr = await rt.create(container_id="web-1", spec=SPEC)
            await rt.start("web-1")
            listing = rt.listing(all=True)
            assert [c.id for c in listing.containers] == ["web-1"] and ctr.state is State.RUNNING
            assert [e.type for e in rt.events.history()] == [EventType.CREATED, EventType.STARTED]
            assert listing.event_sequence == rt.events.last_sequence
            assert listing.event_epoch == rt.events.epoch
            # Watching from the listing's sequence gives exactly what happened after it.
            h.world.exit("web-1", 0)
            seq = await next_event(rt, listing.event_sequence, EventType.EXITED, "web-1")
            assert seq == listing.event_sequence + 1

    run(scenario())


def test_create_is_idempotent_per_id_and_spec(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            first = await rt.create(container_id="r1", spec=SPEC)
            assert await rt.create(container_id="r1", spec=SPEC) is first
            with pytest.raises(AlreadyExists, match="different spec"):
                await rt.create(container_id="r1", spec=ContainerSpec(image="busybox", command=("true",)))
            assert [e.type for e in rt.events.history()] == [EventType.CREATED]

    run(scenario())


def test_concurrent_creates_of_one_id_during_a_pull_never_share_or_delete_a_directory(h: Harness) -> None:
    """The first create's pull fails while a second create of the same id waits: the second makes the
    container itself, in its own directory, and nothing of the first is left."""
    import threading

    async def scenario() -> None:
        async with h.opened() as rt:
            h.images.pull_gate = threading.Event()
            h.images.pull_error = InvalidArgument("registry said no")
            first = asyncio.ensure_future(rt.create(container_id="race", spec=SPEC, pull=PullPolicy.ALWAYS))
            await asyncio.to_thread(h.images.pull_started.wait, 5)
            second = asyncio.ensure_future(rt.create(container_id="race", spec=SPEC, pull=PullPolicy.ALWAYS))
            await asyncio.sleep(0)
            assert not second.done()  # it waits for the first instead of racing it
            h.images.pull_gate.set()
            with pytest.raises(InvalidArgument):
                await first
            h.images.pull_error = None
            ctr = await second
            assert ctr.id == "race" and h.images.pulls == 2
            assert sorted(p.name for p in (h.root / "containers").iterdir()) == ["race"]
            assert (h.root / "containers" / "race" / "config.json").is_file()

    run(scenario())


def test_two_creates_of_one_name_make_one_container(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            results = await asyncio.gather(rt.create(container_id="a", name="web", spec=SPEC),
                                           rt.create(container_id="b", name="web", spec=SPEC),
                                           return_exceptions=True)
            assert sum(isinstance(r, AlreadyExists) for r in results) == 1
            assert [c.name for c in rt.list_containers(all=True)] == ["web"]

    run(scenario())


@pytest.mark.parametrize(("resources", "message"), [
    (Resources(memory_bytes=1), "memory limit 1 bytes is too small: the minimum is 6M"),
    (Resources(cpu_millis=5), "cpu limit 5m is too small"),
    (Resources(memory_bytes=64 << 20, memory_request_bytes=128 << 20), "exceeds the memory limit"),
    (Resources(cpu_millis=500, cpu_request_millis=600), "exceeds the cpu limit"),
    (Resources(pids_max=-1), "must not be negative"),
])
def test_impossible_resources_are_refused_at_create(h: Harness, resources: Resources, message: str) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            with pytest.raises(InvalidArgument, match=message):
                await rt.create(spec=ContainerSpec(image="busybox", command=("sh",), resources=resources))
            assert not list((h.root / "containers").iterdir())

    run(scenario())


# -- capacity ----------------------------------------------------------------------------------

def test_commitments_count_requests_of_every_container_holding_a_reservation(h: Harness) -> None:
    limited = ContainerSpec(image="busybox", command=("sh",),
                            resources=Resources(memory_bytes=256 << 20, cpu_millis=1000,
                                                memory_request_bytes=64 << 20))
    restarting = ContainerSpec(image="busybox", command=("sh",), restart=RestartPolicy(RestartMode.ALWAYS),
                               resources=Resources(memory_bytes=32 << 20, cpu_millis=100))

    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="created", spec=limited)       # created: holds 64M, 1000m
            await rt.create(container_id="gone", spec=limited)
            await rt.start("gone")
            h.world.exit("gone", 0)                                     # exited: holds nothing
            await rt.create(container_id="again", spec=restarting)
            await rt.start("again")
            h.world.exit("again", 1)                                    # restarting: holds 32M, 100m
            await next_event(rt, 0, EventType.RESTARTING, "again")
            await next_event(rt, 0, EventType.EXITED, "gone")
            promised = rt.commitments()
            assert promised.memory_requested == (64 + 32) << 20 and promised.cpu_requested == 1100
            assert promised.memory_limits == (256 + 32) << 20 and promised.cpu_limits == 1100
            assert (promised.containers, promised.running) == (3, 0)

    run(scenario())


# -- fencing -----------------------------------------------------------------------------------

def test_a_deposed_controllers_late_requests_are_refused_even_after_a_restart(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            ctr = await rt.create(container_id="rep", spec=SPEC, fence=Fence("scheduler", 5))
            assert ctr.fence == Fence("scheduler", 5)
            await rt.start("rep", fence=Fence("scheduler", 6))        # a new leader
            with pytest.raises(StaleEpoch, match="epoch 5 is older than epoch 6"):
                await rt.stop("rep", fence=Fence("scheduler", 5))
            with pytest.raises(StaleEpoch):
                await rt.remove("rep", force=True, fence=Fence("scheduler", 5))
            await rt.kill("rep", "HUP", fence=Fence("other", 1))     # owners are independent
            assert rt.resolve("rep").state is State.RUNNING
        async with h.opened() as rt:  # the epoch was persisted before the request acted
            with pytest.raises(StaleEpoch):
                await rt.stop("rep", fence=Fence("scheduler", 5))
            await rt.stop("rep", timeout=1)                           # an operator is never fenced
            assert rt.resolve("rep").state is State.EXITED

    run(scenario())


def test_a_bad_fence_owner_is_invalid(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            with pytest.raises(InvalidArgument, match="fence owner"):
                await rt.create(spec=SPEC, fence=Fence("no spaces allowed", 1))

    run(scenario())


# -- remove ------------------------------------------------------------------------------------

def test_remove_is_idempotent_for_a_retrying_caller(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="tmp", spec=SPEC)
            assert await rt.remove("tmp") == ("tmp", False)
            assert await rt.remove("tmp", missing_ok=True) == ("tmp", True)
            with pytest.raises(NotFound):
                await rt.remove("tmp")
            assert not (h.root / "containers" / "tmp").exists()
            assert [e.type for e in rt.events.history()] == [EventType.CREATED, EventType.REMOVED]

    run(scenario())


def test_rm_of_a_running_container_needs_force(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="up", spec=SPEC)
            await rt.start("up")
            with pytest.raises(FailedPrecondition, match="stop it first or use rm -f"):
                await rt.remove("up")
            assert await rt.remove("up", force=True) == ("up", False)
            assert ("up", signal.SIGKILL) in h.world.signals

    run(scenario())


# -- stop, kill, restart -------------------------------------------------------------------------

def test_stop_sends_the_stop_signal_then_kill_after_the_grace(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="stubborn", spec=SPEC)
            h.world.signal_behaviour["stubborn"] = lambda sig: 137 if sig == signal.SIGKILL else None
            await rt.start("stubborn")
            ctr = await rt.stop("stubborn", timeout=0)
            assert [s for _, s in h.world.signals] == [signal.SIGTERM, signal.SIGKILL]
            assert ctr.exit is not None and ctr.exit.exit_code == 137

    run(scenario())


def test_a_stop_whose_caller_goes_away_is_still_carried_out(h: Harness) -> None:
    """An interrupted ``shoal run`` asks for a stop and exits: the SIGKILL after the grace still comes."""
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="left", spec=SPEC)
            h.world.signal_behaviour["left"] = lambda sig: 137 if sig == signal.SIGKILL else None
            await rt.start("left")
            caller = asyncio.ensure_future(rt.stop("left", timeout=0.05))
            while not h.world.signals:  # the SIGTERM is out; the caller hangs up during the grace
                await asyncio.sleep(0.01)
            caller.cancel()
            await next_event(rt, 0, EventType.EXITED, "left")
            assert [s for _, s in h.world.signals] == [signal.SIGTERM, signal.SIGKILL]

    run(scenario())


def test_a_restart_happens_after_the_backoff_and_stop_cancels_the_next(h: Harness) -> None:
    spec = ContainerSpec(image="busybox", command=("sh",), restart=RestartPolicy(RestartMode.ALWAYS))

    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="phoenix", spec=spec)
            await rt.start("phoenix")
            h.world.exit("phoenix", 1)
            first = await next_event(rt, 0, EventType.STARTED, "phoenix")
            await next_event(rt, first, EventType.STARTED, "phoenix")  # restarted by the policy
            ctr = rt.resolve("phoenix")
            assert ctr.lc.restart_count == 1 and ctr.state is State.RUNNING
            h.world.exit("phoenix", 1)
            await next_event(rt, first, EventType.RESTARTING, "phoenix")
            await rt.stop("phoenix")
            assert ctr.state is State.EXITED and ctr.restart_timer is None and ctr.lc.stopped_by_user

    run(scenario())


def test_a_users_failed_start_raises_and_is_recorded(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="typo", spec=SPEC)
            h.world.fail_next_launch["typo"] = "not-found"
            with pytest.raises(LaunchError) as info:
                await rt.start("typo")
            assert info.value.kind == "not-found"
            ctr = rt.resolve("typo")
            assert ctr.state is State.EXITED and ctr.exit is not None and ctr.exit.exit_code == 127

    run(scenario())


def test_an_exit_reported_while_its_launch_is_applied_is_not_lost(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="blink", spec=SPEC)
            gate = h.world.launch_gate = asyncio.Event()
            start = asyncio.ensure_future(rt.start("blink"))
            await h.world.launch_waiting.wait()
            h.world.launch_gate = None
            gate.set()
            await start
            h.world.exit("blink", 3)
            await next_event(rt, 0, EventType.EXITED, "blink")
            assert rt.resolve("blink").exit is not None

    run(scenario())


def test_a_caller_that_hangs_up_does_not_abandon_a_launch(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="held", spec=SPEC)
            gate = h.world.launch_gate = asyncio.Event()
            caller = asyncio.ensure_future(rt.start("held"))
            await h.world.launch_waiting.wait()
            caller.cancel()
            gate.set()
            await next_event(rt, 0, EventType.STARTED, "held")
            ctr = rt.resolve("held")
            assert ctr.state is State.RUNNING and "held" in h.world.alive and not ctr.lock.locked()

    run(scenario())


AUTO_REMOVED = ContainerSpec(image="busybox", command=("sleep", "300"), auto_remove=True)


def test_a_caller_gone_during_create_and_start_leaves_no_created_container(h: Harness) -> None:
    """``run --rm`` killed while its create still pulls: the container is started anyway (never left
    Created), and removed when it exits."""
    import threading

    async def scenario() -> None:
        async with h.opened() as rt:
            h.images.pull_gate = threading.Event()
            caller = asyncio.ensure_future(rt.create_and_start(container_id="orphan", spec=AUTO_REMOVED,
                                                               pull=PullPolicy.ALWAYS))
            await asyncio.to_thread(h.images.pull_started.wait, 5)
            caller.cancel()
            h.images.pull_gate.set()
            await next_event(rt, 0, EventType.STARTED, "orphan")
            assert rt.resolve("orphan").state is State.RUNNING
            h.world.exit("orphan", 0)
            await next_event(rt, 0, EventType.REMOVED, "orphan")
            with pytest.raises(NotFound):
                rt.resolve("orphan")

    run(scenario())


def test_auto_removal_waits_for_an_attached_caller_to_get_the_exit(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            hold = Hold()
            ctr = await rt.create_and_start(container_id="fg", spec=AUTO_REMOVED, hold=hold)
            h.world.exit("fg", 7)
            exited = await next_event(rt, 0, EventType.EXITED, "fg")
            assert rt.resolve("fg") is ctr and ctr.state is State.EXITED and not ctr.unheld.is_set()
            items = [item async for item in rt.attached_run(ctr, hold)]
            assert items[-1] == ctr.exit and ctr.exit is not None and ctr.exit.exit_code == 7
            with pytest.raises(NotFound):  # gone by the time the run's output ends, as `docker run --rm`
                rt.resolve("fg")
            await next_event(rt, exited, EventType.REMOVED, "fg")

    run(scenario())


def test_a_hold_released_before_the_create_finishes_holds_nothing(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            hold = Hold()
            hold.release()  # its caller went away first
            ctr = await rt.create_and_start(container_id="gone", spec=AUTO_REMOVED, hold=hold)
            assert not ctr.holds and ctr.unheld.is_set()
            h.world.exit("gone", 0)
            await next_event(rt, 0, EventType.REMOVED, "gone")

    run(scenario())


def test_verbs_in_the_wrong_state_say_why(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="idle", spec=SPEC)
            with pytest.raises(FailedPrecondition, match="has not been started"):
                await rt.wait("idle")
            with pytest.raises(FailedPrecondition, match="is not running"):
                await rt.kill("idle")
            with pytest.raises(FailedPrecondition, match="is not running"):
                await anext(rt.exec("idle", argv=["true"], env=[], working_dir="", user=""))

    run(scenario())


# -- the supervisor going away -------------------------------------------------------------------

def test_while_the_supervisor_is_down_starts_are_unavailable_and_the_host_says_so(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="later", spec=SPEC)
            h.world.connect_gate = asyncio.Event()
            h.world.current.lose()
            while not rt.conditions():
                await asyncio.sleep(0.01)  # the runtime notices on its own task; nothing to await
            assert rt.conditions()[0][0] == "SupervisorDown"
            with pytest.raises(SupervisorUnavailable, match="retry"):
                await rt.start("later")
            assert rt.resolve("later").state is State.CREATED  # nothing happened
            h.world.connect_gate.set()
            await rt.start("later")
            assert rt.resolve("later").state is State.RUNNING and rt.conditions() == []

    run(scenario())


def test_after_a_reconnect_an_exit_missed_meanwhile_is_applied(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="quiet", spec=SPEC)
            await rt.start("quiet")
            h.world.connect_gate = asyncio.Event()
            h.world.current.lose()
            h.world.exit("quiet", 9)  # nobody is listening: only run.json knows
            h.world.connect_gate.set()
            await next_event(rt, 0, EventType.EXITED, "quiet")
            ctr = rt.resolve("quiet")
            assert ctr.exit is not None and ctr.exit.exit_code == 9

    run(scenario())


# -- restart of the agent ------------------------------------------------------------------------

def test_recovery_keeps_running_containers_and_acts_once_on_exits_while_down(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            for cid in ("stays", "dies"):
                await rt.create(container_id=cid, spec=SPEC)
                await rt.start(cid)
            epoch = rt.events.epoch
        h.world.exit("dies", 2)
        async with h.opened() as rt:
            assert rt.events.epoch == epoch  # the same history continues
            assert rt.resolve("stays").state is State.RUNNING
            assert rt.resolve("stays").lc.pid == h.world.alive["stays"].pid
            dies = rt.resolve("dies")
            assert dies.state is State.EXITED and dies.exit is not None and dies.exit.exit_code == 2
            exits = [e for e in rt.events.history() if e.type is EventType.EXITED]
            assert [e.container_id for e in exits] == ["dies"]
        async with h.opened() as rt:  # and not again on the next start
            assert len([e for e in rt.events.history() if e.type is EventType.EXITED]) == 1

    run(scenario())


def test_an_unreadable_record_is_quarantined_and_the_agent_starts(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(container_id="good", spec=SPEC)
        bad = h.root / "containers" / "bad"
        bad.mkdir()
        (bad / "config.json").write_text("{torn")
        (h.root / "containers" / ".creating-half-1234").mkdir()  # a create that died mid-way
        async with h.opened() as rt:
            assert [c.id for c in rt.list_containers(all=True)] == ["good"]
        assert sorted(p.name for p in (h.root / "containers").iterdir()) == ["good"]
        assert [p.name.split(".")[0] for p in (h.root / "quarantine").iterdir()] == ["bad"]

    run(scenario())


def test_resuming_under_another_epoch_is_history_truncated(h: Harness) -> None:
    async def scenario() -> None:
        async with h.opened() as rt:
            await rt.create(spec=SPEC)
            stream = rt.events.subscribe(after_sequence=0, epoch="not-this-one")
            with pytest.raises(HistoryTruncated) as info:
                await anext(stream)
            assert info.value.epoch == rt.events.epoch
        (h.root / "events.jsonl").unlink()  # the history is lost: a new epoch, sequences start again
        async with h.opened() as rt2:
            assert rt2.events.epoch != info.value.epoch and rt2.events.last_sequence == 0

    run(scenario())


