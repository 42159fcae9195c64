"""``shoal apply`` / ``get hostgroups`` / ``describe hostgroup`` / ``delete hostgroup`` from lite messages.
The messages are what the scheduler's own conversion (scheduler/api_hostgroups.py) makes of domain
values, carried over the wire format into the CLI's lite classes, so the CLI is tested on what it will
really receive: table rows and wide columns, the JSON keys, ``-o yaml`` printing documents apply takes
back, the describe text (limits and provider in words, members with their use, requests with delivery
state and last error, drains, decisions), apply's result lines, delete (``--force`` passed through, kinds
refused), and ``-w`` refused."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from typing import Any

import pytest

from agent.cli import cluster, cluster_describe, cluster_get
from agent.cli import cluster_output as out
from agent.cli.client import CliError
from proto.scheduler.v1 import scheduler_lite as spb
from scheduler import api_hostgroups
from scheduler import spec as service_file
from scheduler.model import (
    Capacity,
    DeliveryState,
    GroupDecision,
    GroupName,
    HostGroup,
    HostGroupStatus,
    HostId,
    HostRecord,
    HostStatus,
    ProviderRequest,
    ProviderRequestKind,
)

NOW = 1_700_000_000.0
WORKERS = """\
kind: hostgroup
name: workers
min: 1
max: 10
shape: {cpus: 2, memory: 4G, labels: {zone: a}}
scale_out: {max_per_request: 3}
provider:
  webhook: {url: "https://provisioner.example/shoal", token_file: /etc/shoal/token}
"""


def lite(group: HostGroup, status: HostGroupStatus | None = None) -> spb.HostGroup:
    hosts = {HostId("h1"): HostRecord(id=HostId("h1"), name="worker-1", address="10.0.0.1:7070",
                                      labels=(("group", "workers"),),
                                      capacity=Capacity(cpu_allocatable_millis=2000,
                                                        memory_allocatable_bytes=4 << 30,
                                                        cpu_committed_millis=1500,
                                                        memory_committed_bytes=1 << 30))}
    ready = {HostId("h1"): HostStatus(HostId("h1"), ready=True)}
    message = api_hostgroups.hostgroup_to_pb(group, status, hosts=hosts, host_statuses=ready, replicas=[],
                                             services=[])
    return spb.HostGroup.FromString(message.SerializeToString())


def declared(text: str = WORKERS) -> HostGroup:
    [spec] = service_file.parse_file(text).hostgroups
    return HostGroup(spec=spec, generation=2, created_at=NOW - 300, updated_at=NOW - 60, revision=11)


STATUS = HostGroupStatus(
    group=GroupName("workers"), desired_hosts=3, pending_replicas=7, expected_hosts=2,
    expected_until=NOW + 500,
    requests=(ProviderRequest("workers-1", ProviderRequestKind.SCALE_OUT, NOW - 120, count=2,
                              reason="7 replicas of web pending", state=DeliveryState.DELIVERED, attempts=1,
                              delivered_at=NOW - 119),
              ProviderRequest("workers-2", ProviderRequestKind.SCALE_IN, NOW - 30, hosts=(HostId("h1"),),
                              reason="worker-1 drained", attempts=4, last_error="HTTP 503")),
    draining=((HostId("h1"), NOW - 90),),
    decisions=(GroupDecision(NOW - 120, "scale_out", "2 hosts of workers would fit 7 pending replicas"),),
    revision=12)


@pytest.fixture(autouse=True)
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(out.time, "time", lambda: NOW)


def test_rows_wide_columns_and_json() -> None:
    group = lite(declared(), STATUS)
    assert out.hostgroup_row(group) == ["workers", "1", "10", "1", "3", "7", "1", "5m"]
    assert out.hostgroup_row(group, wide=True)[8:] == [
        "2 cpus, 4Gi, zone=a", "webhook https://provisioner.example/shoal"]
    # Before the leader has judged the group, DESIRED and PENDING say so instead of a misleading 0.
    fresh = lite(declared("kind: hostgroup\nname: spare\nmax: 2\n"))
    assert out.hostgroup_row(fresh, wide=True) == ["spare", "0", "2", "0", "-", "-", "0", "5m",
                                                   "from its hosts", "none"]
    as_json = out.hostgroup_json(group)
    assert {k: as_json[k] for k in ("name", "min", "max", "hosts", "desired_hosts", "pending_replicas",
                                    "expected_hosts", "undelivered_requests", "generation")} == {
        "name": "workers", "min": 1, "max": 10, "hosts": 1, "desired_hosts": 3, "pending_replicas": 7,
        "expected_hosts": 2, "undelivered_requests": 1, "generation": 2}
    assert as_json["shape"] == {"cpu_millis": 2000, "memory_bytes": 4 << 30,
                                "labels": {"group": "workers", "zone": "a"}}
    assert as_json["provider"] == {"webhook": "https://provisioner.example/shoal", "command": None}
    assert as_json["members"] == [{"id": "h1", "name": "worker-1", "state": "ready", "replicas": 0}]
    assert out.hostgroup_json(fresh)["shape"] is None


def test_a_listing_as_a_table_and_as_yaml_documents_that_apply_back() -> None:
    groups = [lite(declared(), STATUS), lite(declared("kind: hostgroup\nname: spare\nmax: 2\n"))]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cluster_get.Printer(cluster_get.HOSTGROUPS, None, watching=False).listing(groups)
    lines = buffer.getvalue().splitlines()
    assert lines[0].split() == ["NAME", "MIN", "MAX", "HOSTS", "DESIRED", "PENDING", "REQUESTS", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["workers", "spare"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cluster_get.Printer(cluster_get.HOSTGROUPS, "yaml", watching=False).listing(groups)
    parsed = service_file.parse_file(buffer.getvalue()).hostgroups
    assert parsed == (declared().spec, declared("kind: hostgroup\nname: spare\nmax: 2\n").spec)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cluster_get.Printer(cluster_get.HOSTGROUPS, "yaml", watching=False).listing(groups[:1])
    assert buffer.getvalue() == groups[0].spec_yaml  # one group: a plain document, no separator


def flat(text: str) -> str:
    """The text with its alignment (runs of spaces) collapsed to one space."""
    return re.sub(r" {2,}", " ", text)


def test_describe_says_it_in_words() -> None:
    text = flat(cluster_describe.hostgroup_text(lite(declared(), STATUS)))
    assert "Hosts: 1 joined, min 1, max 10, desired 3, 2 asked for and expected until 2023-11-14T22:21:40Z" \
        in text
    assert "7 replicas pending for lack of room that this group would take" in text
    assert "Shape: 2 cpus, 4Gi, zone=a" in text
    assert "at most 3 hosts per request, one request per 1m" in text
    assert "a host below 50% cpu and memory requests for 10m is drained and released" in text
    assert ("webhook POST https://provisioner.example/shoal (timeout 10s, bearer token from /etc/shoal/token)"
            in text)
    members = text.split("Members:\n", 1)[1].split("Requests:", 1)[0]
    assert "worker-1" in members and "1.5/2 (75%)" in members and "1Gi/4Gi (25%)" in members
    assert "draining for 90s" in members
    requests = text.split("Requests:\n", 1)[1].split("Drains:", 1)[0].splitlines()
    assert requests[1].split()[:5] == ["workers-1", "scale_out", "delivered", "1", "2m"]
    assert requests[2].split()[:4] == ["workers-2", "scale_in", "pending", "4"]
    assert requests[2].rstrip().endswith("remove h1 HTTP 503")
    assert "Drains:\n" in text and "worker-1" in text.split("Drains:\n", 1)[1]
    assert "scale_out 2 hosts of workers would fit 7 pending replicas" in text.split("Decisions:\n", 1)[1]


def test_describe_of_a_fresh_group_without_shape_or_provider() -> None:
    text = flat(cluster_describe.hostgroup_text(lite(declared("kind: hostgroup\nname: spare\nmax: 2\n"
                                                              "scale_in: {enabled: false}\n"))))
    assert "Pending: not judged yet" in text
    assert "not declared: learned from the group's hosts" in text
    assert "Scale in: disabled" in text
    assert "Provider: none: the scheduler decides and records, but asks nobody" in text
    assert "Members: none (hosts join with shoal-agent serve --label group=spare)" in text
    assert "Requests: none" in text and "Decisions: none yet" in text


class _Api:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def ApplyService(self, request: spb.ApplyServiceRequest) -> spb.ApplyServiceResponse:
        self.calls.append(("ApplyService", request))
        return spb.ApplyServiceResponse(results=[
            spb.ApplyResult(kind="service", action="created",
                            service=spb.Service(spec=spb.ServiceSpec(name="web"))),
            spb.ApplyResult(kind="hostgroup", action="configured", hostgroup=lite(declared()))])

    def DeleteHost(self, request: spb.HostRequest) -> spb.Host:
        self.calls.append(("DeleteHost", request))
        return spb.Host(id="4f1c" + "0" * 28, name="m3")

    def DeleteHostGroup(self, request: spb.DeleteHostGroupRequest) -> spb.DeleteHostGroupResponse:
        self.calls.append(("DeleteHostGroup", request))
        return spb.DeleteHostGroupResponse(hostgroup=lite(declared(), STATUS))


class _Scheduler:
    def __init__(self) -> None:
        self.api = _Api()
        self.conn = None


def test_apply_prints_each_result_with_its_kind(tmp_path: Any) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(WORKERS)
    scheduler: Any = _Scheduler()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cluster.cmd_apply(scheduler, argparse.Namespace(files=[str(path)])) == 0
    assert buffer.getvalue().splitlines() == ["service/web created", "hostgroup/workers configured"]


def test_delete_hostgroup_passes_force_and_says_the_hosts_stay() -> None:
    scheduler: Any = _Scheduler()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cluster.cmd_delete(scheduler, argparse.Namespace(kind="hostgroup", name="workers",
                                                                force=True)) == 0
    [(method, request)] = scheduler.api.calls
    assert (method, request.name, request.force) == ("DeleteHostGroup", "workers", True)
    assert buffer.getvalue() == "hostgroup/workers deleted (its host stays)\n"
    with pytest.raises(CliError, match="--force is for host groups"):
        cluster.cmd_delete(scheduler, argparse.Namespace(kind="service", name="web", force=True))
    with pytest.raises(CliError, match="only services, host groups and hosts can be deleted"):
        cluster.cmd_delete(scheduler, argparse.Namespace(kind="replica", name="web-1", force=False))
    with pytest.raises(CliError, match="--force is for host groups"):
        cluster.cmd_delete(scheduler, argparse.Namespace(kind="host", name="h1", force=True))


def test_delete_host_names_the_host_forgotten() -> None:
    scheduler: Any = _Scheduler()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cluster.cmd_delete(scheduler, argparse.Namespace(kind="node", name="4f1c", force=False)) == 0
    [(method, request)] = scheduler.api.calls
    assert (method, request.host) == ("DeleteHost", "4f1c")
    assert buffer.getvalue() == "host/m3 deleted\n"


def test_host_groups_cannot_be_watched_and_the_kind_words() -> None:
    args = argparse.Namespace(kind="hg", name=None, service="", host="", state=[], watch=True, output=None)
    with pytest.raises(CliError, match="host groups cannot be watched"):
        cluster_get.cmd_get(Any, args)  # type: ignore[arg-type]  # refused before any call
    assert {cluster_get.KIND_WORDS[w] for w in ("hostgroups", "hostgroup", "hg")} == {"hostgroups"}
    assert json.loads(json.dumps(out.hostgroup_json(lite(declared()))))["name"] == "workers"
