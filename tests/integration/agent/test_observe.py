"""Watching an agent: GetHost/WatchUsage, shoal host/stats, and /metrics of a real agent."""

from __future__ import annotations

import secrets
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proto.agent.v1 import agent_pb2 as pb
from proto.agent.v1 import agent_pb2_grpc as pb_grpc
from tests.integration.agent.conftest import AgentProcess, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"
SECRET = "hunter2-" + secrets.token_hex(4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory, busybox_image: Path) -> Iterator[AgentProcess]:
    base = tmp_path_factory.mktemp("observed")
    port = _free_port()
    agent = AgentProcess(root=base / "root", socket=base / "a.sock",
                         cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=base / "agent.log",
                         extra_args=["--label", "zone=a", "--label", "tier=test", "--metrics-listen",
                                     f"127.0.0.1:{port}", "--sample-interval", "200ms"])
    agent.start()
    agent.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    try:
        agent.run("image", "import", str(busybox_image), "--name", IMAGE)
        agent.run("run", "-d", "--name", "busy", "--cpus", "0.5", "--memory", "32M", "-l", "app=web",
                  "-e", f"PASSWORD={SECRET}", IMAGE, "sh", "-c", f"while :; do :; done # {SECRET}")
        yield agent
    finally:
        agent.run("rm", "-f", "busy", check=False)
        agent.stop()


def test_get_host_reports_identity_capacity_and_commitments(watched: AgentProcess) -> None:
    with grpc.insecure_channel(watched.address) as channel:
        stub = pb_grpc.HostStub(channel)
        # Usage is sampled: wait for a sample taken after the container started.
        host = wait_for(lambda: (h := stub.GetHost(pb.GetHostRequest())).containers_running == 1 and h)
    assert len(host.host_id) >= 16 and dict(host.labels) == {"zone": "a", "tier": "test"}
    assert host.cpu_cores >= 1 and host.memory_total_bytes > host.memory_allocatable_bytes > 0
    assert host.memory_committed_bytes == 32 << 20 and host.cpu_committed_millis == 500
    assert host.containers_running == 1
    assert (watched.root / "host-id").read_text().strip() == host.host_id


def test_watch_usage_streams_snapshots_with_container_stats(watched: AgentProcess) -> None:
    with grpc.insecure_channel(watched.address) as channel:
        stream = pb_grpc.HostStub(channel).WatchUsage(pb.WatchUsageRequest(labels={"app": "web"}))
        snapshots = []
        for snapshot in stream:  # bounded: cancelled after a few snapshots
            if snapshot.containers and snapshot.containers[0].cpu_cores > 0:
                snapshots.append(snapshot)
            if len(snapshots) == 3:
                stream.cancel()
                break
    stats = snapshots[-1].containers[0]
    assert stats.name == "busy" and dict(stats.labels) == {"app": "web"}
    assert 0.2 < stats.cpu_cores < 0.8  # the 0.5-cpu quota bounds it
    assert stats.memory_limit_bytes == 32 << 20 and stats.memory_working_set_bytes > 0 and stats.pids == 1
    assert snapshots[-1].time.ToNanoseconds() > snapshots[0].time.ToNanoseconds()


def test_cli_host_and_stats(watched: AgentProcess) -> None:
    host = watched.run("host").stdout
    assert "zone=a" in host and "cpu committed" in host
    stats = watched.run("stats", "--no-stream").stdout
    row = next(line for line in stats.splitlines() if " busy " in f" {line} ")
    assert "/ 33.6MB" in row


def test_metrics_endpoint_has_cadvisor_names_and_no_secrets(watched: AgentProcess) -> None:
    url = watched.metrics_url  # type: ignore[attr-defined]

    def page() -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    text = wait_for(lambda: "container_cpu_usage_seconds_total{" in (t := page()) and t)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("container_cpu_usage_seconds", "container_memory_working_set_bytes", "container_memory_rss",
                 "container_spec_memory_limit_bytes", "container_spec_cpu_quota", "machine_cpu_cores",
                 "shoal_agent_container_starts", "shoal_agent_rpc_seconds"):
        assert name in families, name
    busy = [s for s in families["container_cpu_usage_seconds"].samples if s.labels.get("name") == "busy"]
    assert busy and busy[0].labels["container_label_app"] == "web"
    assert SECRET not in text and "PASSWORD" not in text and "while :" not in text
