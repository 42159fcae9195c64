"""The simulator's control protocol on a small fleet: ``fail`` and ``recover`` on a comma list act on all
its hosts, ``containers`` lists what the reachable hosts run (a silent host's containers are on a dead
machine), ``started`` when the containers started since a wall time were created and started, and a
reboot comes back empty. No scheduler answers here: the hosts' registrations just retry.
A usage snapshot, built once per container change, still carries each change and a new sequence."""

from __future__ import annotations

import asyncio
import time

from bench.sim.fleet import Fleet
from bench.sim.host import HostSpec, SimHost, host_id_of
from proto.agent.v1 import agent_pb2 as pb
from tests.fixtures.etcd import free_port

BOUND_S = 30.0


def _create(cid: str) -> pb.CreateContainerRequest:
    return pb.CreateContainerRequest(id=cid, name=cid, start=True, spec=pb.ContainerSpec(image="busybox"))


def test_fail_containers_and_reboot_on_a_list_of_hosts() -> None:
    specs = [HostSpec(name=f"sim-{i:05d}", port=free_port()) for i in range(3)]

    async def scenario() -> tuple[dict[str, object], ...]:
        fleet = Fleet(specs, schedulers=(f"127.0.0.1:{free_port()}",), join_rate=100.0)
        try:
            await fleet.start()
            for i, host in enumerate(fleet.hosts.values()):
                await host.create(_create(f"r{i}"))
            failed = await fleet.command("fail sim-00000,sim-00001 silent")
            listed = await fleet.command("containers")
            rebooted = await fleet.command("recover sim-00000,sim-00001 reboot")
            after = await fleet.command("containers")
            unknown = await fleet.command("fail sim-00000,nope silent")
            return failed, listed, rebooted, after, unknown
        finally:
            await fleet.close()

    failed, listed, rebooted, after, unknown = asyncio.run(asyncio.wait_for(scenario(), BOUND_S))
    assert failed == {"ok": True, "hosts": ["sim-00000", "sim-00001"]}
    assert listed["running"] == {host_id_of("sim-00002"): ["r2"]}
    assert listed["unreachable"] == ["sim-00000", "sim-00001"]
    assert rebooted["ok"] is True
    assert after["running"] == {host_id_of("sim-00000"): [], host_id_of("sim-00001"): [],
                                host_id_of("sim-00002"): ["r2"]}
    assert unknown["ok"] is False and "nope" in str(unknown["error"])


def test_started_lists_what_started_since_a_wall_time_with_its_times() -> None:
    specs = [HostSpec(name=f"sim-{i:05d}", port=free_port()) for i in range(2)]

    async def scenario() -> tuple[float, float, dict[str, object], dict[str, object], dict[str, object]]:
        fleet = Fleet(specs, schedulers=(f"127.0.0.1:{free_port()}",), join_rate=100.0)
        try:
            await fleet.start()
            first, second = fleet.hosts.values()
            await first.create(_create("old"))
            since = time.time()
            await second.create(_create("new"))
            after = time.time()
            return since, after, await fleet.command(f"started {since!r}"), \
                await fleet.command("started soon"), await fleet.command(f"started {after + 60!r}")
        finally:
            await fleet.close()

    since, after, found, bad, later = asyncio.run(asyncio.wait_for(scenario(), BOUND_S))
    assert found["ok"] is True and isinstance(found["started"], dict)
    assert list(found["started"]) == ["new"]
    created, started = found["started"]["new"]
    assert since <= created <= started <= after
    assert bad["ok"] is False and "soon" in str(bad["error"])
    assert later == {"ok": True, "started": {}}


def test_usage_snapshots_follow_container_changes_with_a_new_sequence_each() -> None:
    host = SimHost(HostSpec(name="h", port=free_port()))

    async def scenario() -> list[tuple[int, list[str], int]]:
        seen = []

        def look() -> None:
            snap = host.snapshot()
            seen.append((snap.sequence, [c.id for c in snap.containers], snap.host.cpu_committed_millis))

        look()
        await host.create(pb.CreateContainerRequest(id="r1", name="r1", start=True, spec=pb.ContainerSpec(
            image="busybox", resources=pb.Resources(cpu_millis=100, memory_bytes=1 << 20))))
        look()
        look()
        host.remove(pb.RemoveContainerRequest(id="r1", force=True))
        look()
        return seen

    assert asyncio.run(scenario()) == [(1, [], 0), (2, ["r1"], 100), (3, ["r1"], 100), (4, [], 0)]


def test_a_cut_outside_a_network_namespace_of_its_own_is_refused_and_fails_nothing() -> None:
    """``fail … cut`` drops packets with nftables, which only a benchmark's own namespace may change: in the
    machine's namespace (as the tests run) it is refused, and the host is not failed either."""
    spec = HostSpec(name="sim-00000", port=free_port())

    async def scenario() -> tuple[dict[str, object], bool, dict[str, object]]:
        fleet = Fleet([spec], schedulers=(f"127.0.0.1:{free_port()}",), join_rate=100.0)
        try:
            await fleet.start()
            cut = await fleet.command("fail sim-00000 cut")
            return cut, fleet.hosts["sim-00000"].silent, await fleet.command("fail sim-00000 sideways")
        finally:
            await fleet.close()

    cut, silent, sideways = asyncio.run(asyncio.wait_for(scenario(), BOUND_S))
    assert cut["ok"] is False and "namespace of its own" in str(cut["error"])
    assert silent is False
    assert sideways["ok"] is False and "refuse or cut" in str(sideways["error"])
