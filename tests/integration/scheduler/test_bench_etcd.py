"""etcd as bench/scale.py runs it: at the niceness asked for, watched by bench/sim/etcd_watch.py (whose
metric names are the ones etcd 3.4 exports: the leader is seen leading, the puts it took are counted;
its log's election is found), and renewing the lease probe's lease from a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import aetcd
import pytest

from bench.sim.etcd_watch import EtcdSampler, log_events, parse_metrics, put_rates
from tests.fixtures.etcd import EtcdCluster, require_etcd
from tests.fixtures.sim_session import until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


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


def test_the_lease_probe_runs_in_a_process_of_its_own_until_its_stdin_closes(
        etcd_private: EtcdCluster) -> None:
    member = etcd_private.members[0]
    probe = subprocess.Popen([sys.executable, "-m", "bench.sim.lease_probe", "--etcd", member.client_url,
                              "--interval", "0.05"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        asyncio.run(until(lambda: renewed(member.client_url) >= 3, every=0.1))
        out, _ = probe.communicate(timeout=60)  # closes its stdin: the probe's cue to stop
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    assert probe.returncode == 0
    reply = json.loads(out)
    assert reply["result"]["n"] >= 3 and reply["result"]["failures"] == 0
    assert isinstance(reply["slow"], list)


def renewed(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    name = "etcd_debugging_lease_renewed_total"
    return parse_metrics(text, [name]).get(name, 0.0)
