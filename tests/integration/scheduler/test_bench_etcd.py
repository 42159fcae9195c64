"""etcd as bench/scale.py runs it: at the niceness deploy/systemd gives it, and watched by
bench/sim/etcd_watch.py, whose metric names are the ones etcd 3.4 exports (the leader is seen leading,
the puts it took are counted) and which finds its log's election."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import aetcd
import pytest

from bench.sim.etcd_watch import EtcdSampler, log_events, put_rates
from tests.fixtures.etcd import EtcdCluster, require_etcd
from tests.fixtures.sim_session import until

pytestmark = pytest.mark.integration


def niceness(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ..." -- the 19th field is the nice value; comm may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[16])


@pytest.mark.root
def test_members_run_at_the_niceness_asked_for(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a negative niceness needs root")
    require_etcd()
    with EtcdCluster(tmp_path / "etcd", nice=-5) as cluster:
        pid = cluster.members[0].pid
        assert pid is not None
        assert niceness(pid) == -5
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "etcd"


def test_the_sampler_reads_a_real_members_metrics_and_the_log_reader_its_election(
        etcd_private: EtcdCluster) -> None:
    member = etcd_private.members[0]
    sampler = asyncio.run(sample_while_putting(member.name, member.client_url, member.client_port))
    last = sampler.samples[-1].values
    assert last["etcd_server_is_leader"] == 1.0
    assert last["etcd_server_has_leader"] == 1.0
    assert "etcd_server_proposals_applied_total" in last
    assert any(rate > 0 for _, _, rate in put_rates(sampler.samples))
    assert sampler.result()["members"][member.name]["samples"] == len(sampler.samples)
    events = log_events({member.name: member.log_path})
    assert [e.kind for e in events].count("election") == 1


async def sample_while_putting(name: str, url: str, port: int) -> EtcdSampler:
    """Samples until the sampler has seen 20 puts made after its first sample."""
    sampler = EtcdSampler({name: url}, interval=0.05)
    task = asyncio.create_task(sampler.run())
    try:
        await until(lambda: len(sampler.samples) >= 1)
        before = sampler.samples[-1].values["etcd_mvcc_put_total"]
        async with aetcd.Client(host="127.0.0.1", port=port) as client:
            for i in range(20):
                await client.put(f"/etcd-watch-test/{i}".encode(), b"x")
        await until(lambda: sampler.samples[-1].values["etcd_mvcc_put_total"] >= before + 20)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return sampler
