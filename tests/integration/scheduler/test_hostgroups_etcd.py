"""Host groups end to end through the real ``shoal`` CLI, a real ``shoal-scheduler serve`` and real etcd
(plain TCP on loopback, ``--insecure-tcp``): ``apply -f`` of a file mixing a service and a host group
prints both results; the same file again is ``unchanged`` and writes nothing (the etcd revision stays); a
change is ``configured`` at generation 2; an agent registering with ``group=workers`` is listed as a
member; ``get hostgroups -o json``, ``get hostgroup NAME -o yaml`` (which applies back unchanged) and
``describe hostgroup`` show it; ``delete hostgroup`` removes the declaration and keeps the host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from proto.agent.v1 import agent_pb2 as apb
from proto.scheduler.v1 import scheduler_pb2 as pb
from proto.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.fixtures.etcd import EtcdCluster, free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 10.0
FILE = """\
kind: hostgroup
name: workers
min: 1
max: 4
shape: {cpus: 2, memory: 4G, labels: {zone: a}}
scale_out: {cooldown: 30s}
---
name: web
replicas: 0
template: {image: 'busybox:1'}
"""


def shoal_bin(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


@dataclass
class Running:
    address: str
    log: Path


@pytest.fixture
def scheduler(etcd: EtcdCluster, etcd_prefix: str, tmp_path: Path) -> Iterator[Running]:
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [shoal_bin("shoal-scheduler"), "serve", "--etcd", etcd.endpoints, "--etcd-prefix", etcd_prefix,
             "--listen", address, "--insecure-tcp", "--instance-id", "sched-hg", "--election-ttl", "2"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=STARTUP_TIMEOUT_S)
            except grpc.FutureTimeoutError:
                raise AssertionError(f"the scheduler did not start: {log.read_text()}") from None
        yield Running(address, log)
    finally:
        proc.kill()
        proc.wait()


def shoal(scheduler: Running, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([shoal_bin("shoal"), "--scheduler", scheduler.address, *args], input=stdin,
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "SHOAL_SCHEDULER"})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def revision(scheduler: Running) -> int:
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        reply = stub.ListHostGroups(pb.ListHostGroupsRequest(), timeout=CALL_TIMEOUT_S)
        return reply.revision


def test_apply_get_describe_and_delete_a_host_group(scheduler: Running, tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(FILE)
    assert ok(shoal(scheduler, "apply", "-f", str(path))).splitlines() == [
        "service/web created", "hostgroup/workers created"]
    before = revision(scheduler)
    assert ok(shoal(scheduler, "apply", "-f", str(path))).splitlines() == [
        "service/web unchanged", "hostgroup/workers unchanged"]
    assert revision(scheduler) == before  # nothing written
    path.write_text(FILE.replace("max: 4", "max: 6"))
    assert "hostgroup/workers configured" in ok(shoal(scheduler, "apply", "-f", str(path)))

    with grpc.insecure_channel(scheduler.address) as channel:
        pb_grpc.RegistrationStub(channel).RegisterHost(pb.RegisterHostRequest(
            info=apb.HostInfo(host_id="ab" * 16, hostname="worker-1", labels={"group": "workers"},
                              cpu_allocatable_millis=2000, memory_allocatable_bytes=4 << 30),
            address="127.0.0.1:7070"), timeout=CALL_TIMEOUT_S)

    [listed] = json.loads(ok(shoal(scheduler, "get", "hostgroups", "-o", "json")))
    assert (listed["name"], listed["min"], listed["max"], listed["generation"], listed["hosts"]) == \
        ("workers", 1, 6, 2, 1)
    assert [m["name"] for m in listed["members"]] == ["worker-1"]
    assert listed["shape"]["labels"] == {"group": "workers", "zone": "a"}

    table = ok(shoal(scheduler, "get", "hostgroups", "-o", "wide")).splitlines()
    assert table[0].split()[:8] == ["NAME", "MIN", "MAX", "HOSTS", "DESIRED", "PENDING", "REQUESTS", "AGE"]
    assert table[1].split()[:4] == ["workers", "1", "6", "1"]

    document = ok(shoal(scheduler, "get", "hostgroup", "workers", "-o", "yaml"))
    assert document.startswith("kind: hostgroup\nname: workers\nmin: 1\nmax: 6\n")
    assert ok(shoal(scheduler, "apply", "-f", "-", stdin=document)) == "hostgroup/workers unchanged\n"

    described = ok(shoal(scheduler, "describe", "hostgroup", "workers"))
    assert "worker-1" in described and "Provider:" in described and "none: the scheduler decides" in described

    assert ok(shoal(scheduler, "delete", "hostgroup", "workers")) == \
        "hostgroup/workers deleted (its host stays)\n"
    gone = shoal(scheduler, "get", "hostgroup", "workers")
    assert gone.returncode == 1 and "no such host group: workers" in gone.stderr
    assert "worker-1" in ok(shoal(scheduler, "get", "hosts"))
