"""UsageSampler over a fake /proc and fake cgroups: rates, network, limits, host figures, fan-out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.usage.sampler import Mailbox, RuntimeTotals, Snapshot, UsageSampler

from .builders import NET_DEV_HEADER, FakeCgroup, FakeProc, identity, net_dev_line, stats, target

GiB = 1 << 30


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    root = tmp_path / "proc"
    root.mkdir()
    return FakeProc(root)


def _sampler(proc: FakeProc, targets: list, clock: Clock, **kw: object) -> UsageSampler:  # type: ignore[type-arg]
    return UsageSampler(targets=lambda: targets, identity=identity(), proc=proc.root, clock=clock,
                        wall=lambda: 10_000.0 + clock.now, **kw)  # type: ignore[arg-type]


def test_cpu_rate_limit_fraction_memory_and_network(proc: FakeProc, tmp_path: Path) -> None:
    cg = FakeCgroup(stats(cpu_usage_ns=2_000_000_000, memory_usage_bytes=100 << 20,
                          memory_working_set_bytes=60 << 20, memory_rss_bytes=50 << 20,
                          memory_limit_bytes=256 << 20, oom_kill_count=2, pids_current=3,
                          cpu_throttled_ns=1_500_000_000, cpu_periods=40, cpu_throttled_periods=7))
    t = target(cg, upper=tmp_path, cpu_limit_millis=500, memory_limit_bytes=256 << 20,
               started_at=10_000.0 + 500.0 - 4.0)
    proc.set_net_dev(t.pid, NET_DEV_HEADER
                     + net_dev_line("lo", rx_bytes=5, rx_packets=5, tx_bytes=5, tx_packets=5)
                     + net_dev_line("eth0", rx_bytes=1000, rx_packets=10, tx_bytes=300, tx_packets=3))
    clock = Clock()
    sampler = _sampler(proc, [t], clock)

    async def two_samples() -> tuple[Snapshot, Snapshot]:
        first = await sampler.sample_once()
        clock.now += 2.0
        cg.current = stats(cpu_usage_ns=3_000_000_000)  # +1 s of cpu over 2 s
        return first, await sampler.sample_once()

    first, second = asyncio.run(two_samples())
    c = first.containers[0]
    # First sample: lifetime average, 2 cpu-seconds over 4 s.
    assert c.cpu_cores == pytest.approx(0.5)
    assert c.cpu_fraction_of_limit == pytest.approx(1.0)
    assert (c.memory_usage_bytes, c.memory_working_set_bytes, c.memory_rss_bytes) == (
        100 << 20, 60 << 20, 50 << 20)
    assert c.memory_limit_bytes == 256 << 20 and c.oom_events == 2 and c.pids == 3
    assert c.cpu_throttled_seconds == pytest.approx(1.5)
    assert (c.network_rx_bytes, c.network_rx_packets, c.network_tx_bytes, c.network_tx_packets) == (
        1000, 10, 300, 3)
    assert [i.name for i in c.interfaces] == ["eth0"]
    assert c.labels == {"app": "web"}
    c2 = second.containers[0]
    assert c2.cpu_seconds == pytest.approx(3.0)
    assert c2.cpu_cores == pytest.approx(0.5)
    assert c2.cpu_fraction_of_limit == pytest.approx(1.0)
    assert second.sequence == first.sequence + 1
    assert sampler.latest() is second


def test_host_network_containers_report_no_network(proc: FakeProc, tmp_path: Path) -> None:
    t = target(FakeCgroup(stats()), upper=tmp_path, own_network=False)
    proc.set_net_dev(t.pid, NET_DEV_HEADER + net_dev_line("eth0", rx_bytes=9, rx_packets=9, tx_bytes=9,
                                                          tx_packets=9))
    snap = asyncio.run(_sampler(proc, [t], Clock()).sample_once())
    c = snap.containers[0]
    assert (c.network_rx_bytes, c.network_tx_bytes, c.interfaces) == (0, 0, ())


def test_a_vanished_cgroup_is_left_out_and_others_still_sampled(proc: FakeProc, tmp_path: Path) -> None:
    gone = target(FakeCgroup(stats(), gone=True), upper=tmp_path, id="gone")
    alive = target(FakeCgroup(stats(pids_current=4)), upper=tmp_path, id="alive")
    snap = asyncio.run(_sampler(proc, [gone, alive], Clock()).sample_once())
    assert [c.id for c in snap.containers] == ["alive"]
    assert snap.host.containers_running == 1


def test_restarted_container_does_not_report_a_negative_rate(proc: FakeProc, tmp_path: Path) -> None:
    cg = FakeCgroup(stats(cpu_usage_ns=50_000_000_000))
    targets = [target(cg, upper=tmp_path, started_at=0.0)]
    clock = Clock()
    sampler = _sampler(proc, targets, clock)

    async def go() -> Snapshot:
        await sampler.sample_once()
        clock.now += 1
        cg.current = stats(cpu_usage_ns=100_000_000)  # new cgroup, counter restarted
        return await sampler.sample_once()

    assert asyncio.run(go()).containers[0].cpu_cores == 0.0


def test_host_sample(proc: FakeProc, tmp_path: Path) -> None:
    import os
    tck = os.sysconf("SC_CLK_TCK")
    proc.set_meminfo(total_kib=8 * 1024 * 1024, available_kib=6 * 1024 * 1024)
    clock = Clock()
    targets = [target(FakeCgroup(stats()), upper=tmp_path, memory_limit_bytes=GiB, cpu_limit_millis=1500)]
    sampler = _sampler(proc, targets, clock, memory_reserve_bytes=GiB)
    before = sampler.host()
    assert before.containers_running == 0 and before.memory_total_bytes == 8 * GiB

    async def go() -> Snapshot:
        proc.set_stat(busy=1000, idle=5000)
        await sampler.sample_once()
        clock.now += 2
        proc.set_stat(busy=1000 + 3 * tck, idle=5000 + tck)  # 3 cpu-seconds busy in 2 s
        return await sampler.sample_once()

    h = asyncio.run(go()).host
    assert h.memory_total_bytes == 8 * GiB
    assert h.memory_allocatable_bytes == 7 * GiB
    assert h.memory_used_bytes == 2 * GiB
    assert h.memory_committed_bytes == GiB and h.cpu_committed_millis == 1500
    assert h.containers == h.containers_running == 1
    assert h.cpu_used_cores == pytest.approx(1.5)
    assert (h.host_id, h.labels) == ("0" * 32, {"zone": "a"})
    assert sampler.host() == h


def test_runtime_totals_override_the_running_ones(proc: FakeProc, tmp_path: Path) -> None:
    targets = [target(FakeCgroup(stats()), upper=tmp_path, memory_limit_bytes=GiB)]
    sampler = _sampler(proc, targets, Clock(), totals=lambda: RuntimeTotals(
        containers=5, memory_committed_bytes=3 * GiB, cpu_committed_millis=2000))
    h = asyncio.run(sampler.sample_once()).host
    assert (h.containers, h.containers_running, h.memory_committed_bytes, h.cpu_committed_millis) == (
        5, 1, 3 * GiB, 2000)


def test_duration_is_reported_to_the_observer(proc: FakeProc) -> None:
    seen: list[float] = []
    snap = asyncio.run(_sampler(proc, [], Clock(), observe_duration=seen.append).sample_once())
    assert seen == [snap.sample_seconds]


def test_mailbox_keeps_only_the_newest(proc: FakeProc) -> None:
    sampler = _sampler(proc, [], Clock())

    async def go() -> None:
        box = Mailbox()
        snaps = [await sampler.sample_once() for _ in range(3)]
        for s in snaps:
            box.put(s)
        assert box.dropped == 2
        assert await box.get() is snaps[-1]
        waiter = asyncio.create_task(box.get())
        await asyncio.sleep(0)
        assert not waiter.done()
        box.put(snaps[0])
        assert await waiter is snaps[0]

    asyncio.run(go())


def test_a_slow_subscriber_never_holds_back_sampling_or_a_fast_one(proc: FakeProc, tmp_path: Path) -> None:
    targets = [target(FakeCgroup(stats()), upper=tmp_path, id="web", labels={"app": "web"}),
               target(FakeCgroup(stats()), upper=tmp_path, id="db", labels={"app": "db"})]
    sampler = _sampler(proc, targets, Clock())
    rounds = 50

    async def go() -> None:
        slow = sampler.subscribe()
        fast = sampler.subscribe({"app": "web"})
        # Start both generators (they register their mailbox on first step).
        first_slow = asyncio.create_task(anext(slow))
        first_fast = asyncio.create_task(anext(fast))
        await asyncio.sleep(0)
        assert sampler.subscriber_count == 2
        fast_seen: list[Snapshot] = []
        for _ in range(rounds):
            await sampler.sample_once()
            if not first_fast.done():
                fast_seen.append(await first_fast)
            else:
                fast_seen.append(await anext(fast))
        # The slow one took only its first snapshot; all later ones collapsed into the newest.
        assert (await first_slow).sequence == 1
        newest = await anext(slow)
        assert newest.sequence == rounds
        assert [s.sequence for s in fast_seen] == list(range(1, rounds + 1))
        assert all([c.id for c in s.containers] == ["web"] for s in fast_seen)
        assert [c.id for c in newest.containers] == ["web", "db"]
        await slow.aclose()
        await fast.aclose()
        assert sampler.subscriber_count == 0

    asyncio.run(go())


def test_run_samples_repeatedly_until_cancelled(proc: FakeProc) -> None:
    sampler = UsageSampler(targets=list, identity=identity(), proc=proc.root, interval=0.01)

    async def go() -> None:
        task = asyncio.create_task(sampler.run())
        watch = sampler.subscribe()
        seqs = [(await anext(watch)).sequence for _ in range(3)]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.aclose()
        assert seqs == sorted(seqs) and len(set(seqs)) == 3

    asyncio.run(go())


def test_a_failing_targets_call_does_not_kill_the_loop(proc: FakeProc) -> None:
    calls = 0

    def flaky() -> list:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("runtime hiccup")
        return []

    sampler = UsageSampler(targets=flaky, identity=identity(), proc=proc.root, interval=0.01)

    async def go() -> None:
        task = asyncio.create_task(sampler.run())
        watch = sampler.subscribe()
        snap = await anext(watch)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.aclose()
        assert snap.sequence == 1 and calls >= 2

    asyncio.run(go())


def test_interval_must_be_positive(proc: FakeProc) -> None:
    with pytest.raises(ValueError):
        UsageSampler(targets=list, identity=identity(), proc=proc.root, interval=0)


def _layer(tmp_path: Path, name: str, size: int) -> Path:
    upper = tmp_path / name
    upper.mkdir()
    (upper / "data").write_bytes(b"x" * size)
    return upper


def test_a_container_over_its_measured_storage_limit_is_handed_to_evict_once(proc: FakeProc,
                                                                           tmp_path: Path) -> None:
    over = target(FakeCgroup(stats()), upper=_layer(tmp_path, "over", 3 << 20), id="over",
                  storage_limit_bytes=1 << 20)
    under = target(FakeCgroup(stats()), upper=_layer(tmp_path, "under", 1 << 16), id="under",
                   storage_limit_bytes=1 << 20)
    unlimited = target(FakeCgroup(stats()), upper=_layer(tmp_path, "free", 3 << 20), id="free")
    evicted: list[tuple[str, str]] = []
    sampler = _sampler(proc, [over, under, unlimited], Clock(),
                       evict=lambda t, message: evicted.append((t.id, message)))

    async def go() -> None:
        await sampler.sample_once()
        await sampler.sample_once()  # still over: not handed over twice for the same run

    asyncio.run(go())
    assert evicted == [("over", "writable layer 3M over its 1M storage limit")]


def test_a_new_run_is_judged_only_on_its_own_measurement(proc: FakeProc, tmp_path: Path) -> None:
    upper = _layer(tmp_path, "upper", 3 << 20)
    targets = [target(FakeCgroup(stats()), upper=upper, pid=10, storage_limit_bytes=1 << 20)]
    evicted: list[int] = []
    sampler = _sampler(proc, targets, Clock(), evict=lambda t, _: evicted.append(t.pid))

    async def go() -> None:
        await sampler.sample_once()
        (upper / "data").unlink()  # the next run cleaned up at start
        targets[0] = target(FakeCgroup(stats()), upper=upper, pid=11, storage_limit_bytes=1 << 20)
        await sampler.sample_once()

    asyncio.run(go())
    assert evicted == [10]


def test_a_subscriber_with_an_interval_gets_one_snapshot_per_interval_despite_jitter(proc: FakeProc) -> None:
    # Samples about a second apart, 0.9-1.05 s: a subscriber asking for one every 2 s gets every other
    # one. Counted strictly, 1.95 s after the last one sent would be "too early" and skip to 3 s.
    clock = Clock()
    sampler = _sampler(proc, [], clock)

    async def collect(stream: object, into: list[int]) -> None:
        async for snap in stream:  # type: ignore[attr-defined]
            into.append(snap.sequence)

    async def go() -> tuple[list[int], list[int]]:
        every_other: list[int] = []
        each: list[int] = []
        tasks = [asyncio.create_task(collect(sampler.subscribe(every=2.0), every_other)),
                 asyncio.create_task(collect(sampler.subscribe(), each))]
        for _ in range(3):
            await asyncio.sleep(0)
        for step in [1.05, 0.9] * 5:
            clock.now += step
            await sampler.sample_once()
            for _ in range(3):
                await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return every_other, each

    every_other, each = asyncio.run(go())
    assert each == list(range(1, 11))
    assert every_other == [1, 3, 5, 7, 9]


def test_a_negative_subscription_interval_is_refused(proc: FakeProc) -> None:
    sampler = _sampler(proc, [], Clock())

    async def go() -> None:
        with pytest.raises(ValueError, match="cannot be negative"):
            await anext(sampler.subscribe(every=-1.0))

    asyncio.run(go())
