"""``shoal get schedulers`` on real etcd with two real ``shoal-scheduler serve`` instances on loopback
(plain TCP, ``--insecure-tcp``): both are listed, exactly one leads; SIGKILL the leader and, within a
bounded poll, the other is listed as leader and the dead one is gone once its instance lease expired;
SIGTERM (with the instance registration running) is still a clean exit. Read through the API and through
the CLI's ``-o json``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from proto.scheduler.v1 import scheduler_pb2 as pb
from proto.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.fixtures.etcd import EtcdCluster, free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 20.0
# Bounds of polls (hang guards, not speed goals): the TTL is 2 s, so the takeover and the expiry each
# take a few seconds; a minute means something is broken.
POLL_LIMIT_S = 60.0
POLL_EVERY_S = 0.1
CALL_TIMEOUT_S = 10.0
T = TypeVar("T")


def shoal_bin(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


@dataclass
class Instance:
    id: str
    address: str
    http: str
    proc: subprocess.Popen[bytes]
    log: Path


def poll(what: str, probe: Callable[[], T | None], logs: list[Path]) -> T:
    deadline = time.monotonic() + POLL_LIMIT_S
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(POLL_EVERY_S)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    raise AssertionError(f"{what}: not within {POLL_LIMIT_S}s\n{tails}")


@contextlib.contextmanager
def started(etcd: EtcdCluster, prefix: str, where: Path, *extra: str) -> Iterator[list[Instance]]:
    """Two ``shoal-scheduler serve`` instances, sched-a and sched-b (with ``extra`` flags), each answering
    its API; killed at the end."""
    instances: list[Instance] = []
    try:
        for name in ("sched-a", "sched-b"):
            address, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            log = where / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [shoal_bin("shoal-scheduler"), "serve", "--etcd", etcd.endpoints, "--etcd-prefix",
                     prefix, "--listen", address, "--insecure-tcp", "--http-listen", http,
                     "--instance-id", name, "--election-ttl", "2", "--log-level", "info", *extra],
                    stdout=out, stderr=subprocess.STDOUT)
            instances.append(Instance(name, address, http, proc, log))
        for instance in instances:
            with grpc.insecure_channel(instance.address) as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=STARTUP_TIMEOUT_S)
                except grpc.FutureTimeoutError:
                    raise AssertionError(f"{instance.id} did not start: {instance.log.read_text()}") from None
        yield instances
    finally:
        for instance in instances:
            if instance.proc.poll() is None:
                instance.proc.kill()
            instance.proc.wait()


@pytest.fixture
def instances(etcd: EtcdCluster, etcd_prefix: str, tmp_path: Path) -> Iterator[list[Instance]]:
    with started(etcd, etcd_prefix, tmp_path) as both:
        yield both


def list_schedulers(address: str) -> pb.ListSchedulersResponse:
    with grpc.insecure_channel(address) as channel:
        reply: pb.ListSchedulersResponse = pb_grpc.SchedulerStub(channel).ListSchedulers(
            pb.ListSchedulersRequest(), timeout=CALL_TIMEOUT_S)
        return reply


def cli_json(address: str) -> list[dict[str, object]]:
    result = subprocess.run([shoal_bin("shoal"), "--scheduler", address, "get", "schedulers", "-o", "json"],
                            capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "SHOAL_SCHEDULER"})
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, object]] = json.loads(result.stdout)
    return listed


def test_both_instances_are_listed_and_the_survivor_leads_after_the_leader_is_killed(
        instances: list[Instance]) -> None:
    logs = [i.log for i in instances]
    by_id = {i.id: i for i in instances}

    def both_and_a_leader() -> pb.ListSchedulersResponse | None:
        reply = list_schedulers(instances[0].address)
        ids = [s.id for s in reply.schedulers]
        return reply if ids == ["sched-a", "sched-b"] and reply.leader else None

    reply = poll("both instances listed, one leading", both_and_a_leader, logs)
    assert [s.id for s in reply.schedulers if s.leader] == [reply.leader]
    assert reply.leader_epoch > 0
    for listed in reply.schedulers:
        mine = by_id[listed.id]
        assert (list(listed.addresses), listed.http_address) == ([mine.address], mine.http)
        assert listed.version and listed.started_at.seconds > 0
    # The CLI sees the same, through the other instance.
    rows = cli_json(instances[1].address)
    assert sorted((r["id"], r["leader"]) for r in rows) == sorted(
        (s.id, s.leader) for s in reply.schedulers)
    assert {r["id"]: r["address"] for r in rows} == {i.id: i.address for i in instances}

    leader = by_id[reply.leader]
    survivor = next(i for i in instances if i is not leader)
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait()
    # Declared while there is no leader: the next one acts on it from its first pass, without waiting
    # for some later change to wake it (it used to wait for the next etcd event, up to a minute).
    applied = subprocess.run(
        [shoal_bin("shoal"), "--scheduler", survivor.address, "apply", "-f", "-"],
        input="name: orphaned\nreplicas: 2\ntemplate: {image: busybox}\n", capture_output=True, text=True,
        timeout=60, env={k: v for k, v in os.environ.items() if k != "SHOAL_SCHEDULER"})
    assert applied.returncode == 0, applied.stderr

    def replicas_created() -> list[str] | None:
        result = subprocess.run([shoal_bin("shoal"), "--scheduler", survivor.address, "get", "replicas",
                                 "-o", "json"], capture_output=True, text=True, timeout=60,
                                env={k: v for k, v in os.environ.items() if k != "SHOAL_SCHEDULER"})
        states = [r["state"] for r in json.loads(result.stdout or "[]")]
        return states if len(states) == 2 else None

    assert poll("the new leader creates the replicas", replicas_created, logs) == ["pending", "pending"]

    def survivor_leads_alone() -> pb.ListSchedulersResponse | None:
        now = list_schedulers(survivor.address)
        alone = [(s.id, s.leader) for s in now.schedulers] == [(survivor.id, True)]
        return now if alone and now.leader == survivor.id else None

    after = poll("the survivor listed alone, as leader", survivor_leads_alone, logs)
    assert after.leader_epoch > reply.leader_epoch

    # A clean stop (which revokes the instance's lease) still exits 0.
    survivor.proc.send_signal(signal.SIGTERM)
    assert survivor.proc.wait(timeout=30) == 0, survivor.log.read_text()
