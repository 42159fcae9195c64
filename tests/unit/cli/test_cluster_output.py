"""What the cluster verbs print (agent/cli/cluster_output.py, cluster_get.py, cluster_describe.py,
cluster.py), from lite messages: JSON keys and values, table rows, ages, watch output (changes, deletions,
what counts as a change), endpoint sets, describe and explain texts."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import pytest

from agent.cli import cluster, cluster_describe, cluster_get
from agent.cli import cluster_output as out
from agent.protolite import Timestamp
from proto.agent.v1 import agent_lite as apb
from proto.scheduler.v1 import scheduler_lite as spb

NOW = 1_700_000_000.0


def ts(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds))


def service(**status: int) -> spb.Service:
    template = apb.ContainerSpec(image="busybox:1.36", command=["httpd", "-f"],
                                 resources=apb.Resources(cpu_millis=500, memory_bytes=64 << 20,
                                                         cpu_request_millis=250),
                                 ports=[apb.PortMapping(container_port=8080, protocol="tcp"),
                                        apb.PortMapping(container_port=53, host_port=5353, protocol="udp")],
                                 health=apb.HealthCheck(http=apb.HttpProbe(port=8080, path="/healthz"),
                                                        interval_seconds=2, timeout_seconds=30, retries=3),
                                 restart=apb.RestartPolicy(mode=apb.RESTART_MODE_ON_FAILURE, max_retries=3))
    spec = spb.ServiceSpec(name="web", replicas=3, template=template,
                           placement=spb.Placement(
                               strategy="binpack", constraints=["zone!=c"],
                               topology_spread=spb.TopologySpread(label="zone", max_skew=1)),
                           update=spb.UpdatePolicy(max_surge=0, max_surge_percent=25, max_unavailable=1),
                           labels={"team": "growth"})
    return spb.Service(spec=spec, generation=4, template_generation=3, created_at=ts(NOW - 300),
                       status=spb.ServiceStatus(**status))


def replica(id: str = "web-1", **fields: Any) -> spb.Replica:
    base: dict[str, Any] = {"service": "web", "host": "h-1", "host_name": "node-1",
                            "state": spb.REPLICA_STATE_RUNNING, "ready": True, "generation": 3,
                            "created_at": ts(NOW - 42)}
    return spb.Replica(id=id, **{**base, **fields})


def host(**fields: Any) -> spb.Host:
    info = apb.HostInfo(cpu_allocatable_millis=1900, cpu_committed_millis=500, agent_version="0.1",
                        memory_allocatable_bytes=3 << 30, memory_committed_bytes=128 << 20)
    base: dict[str, Any] = {"id": "h-1", "name": "node-1", "address": "10.0.0.1:7070",
                            "state": spb.HOST_STATE_READY, "labels": {"zone": "a", "gpu": "1"}, "info": info,
                            "replicas": 2, "registered_at": ts(NOW - 7200)}
    return spb.Host(**{**base, **fields})


# -- JSON ------------------------------------------------------------------------------------------------

def test_service_json() -> None:
    obj = out.service_json(service(replicas=3, ready=2, pending=1, updated=3, message="1 pending"))
    assert {k: obj[k] for k in ("name", "replicas", "ready", "generation", "template_generation", "current",
                                "updated", "pending", "failed", "message", "deleting", "image")} == {
        "name": "web", "replicas": 3, "ready": 2, "generation": 4, "template_generation": 3, "current": 3,
        "updated": 3, "pending": 1, "failed": 0, "message": "1 pending", "deleting": False,
        "image": "busybox:1.36"}
    assert obj["created_at"] == "2023-11-14T22:08:20Z" and obj["updated_at"] is None
    assert obj["spec"]["update"] == {"max_unavailable": 1, "max_surge_percent": 25}
    json.dumps(obj)  # serialisable as is


def test_replica_json_states_and_hosts() -> None:
    pending = out.replica_json(spb.Replica(id="r", service="web", state=spb.REPLICA_STATE_PENDING,
                                           reason="0/3 hosts: 3 insufficient memory"))
    assert pending == {"id": "r", "service": "web", "host": "", "host_name": "", "state": "pending",
                       "ready": False, "generation": 0, "reason": "0/3 hosts: 3 insufficient memory",
                       "restarts": 0, "endpoints": [], "created_at": None, "updated_at": None}
    states = [out.replica_json(spb.Replica(state=s))["state"] for s in range(6)]
    assert states == ["unspecified", "pending", "starting", "running", "failed", "stopping"]


def test_host_json_states() -> None:
    obj = out.host_json(host())
    assert {k: obj[k] for k in ("id", "name", "address", "state", "labels", "replicas")} == {
        "id": "h-1", "name": "node-1", "address": "10.0.0.1:7070", "state": "ready",
        "labels": {"gpu": "1", "zone": "a"}, "replicas": 2}
    assert [out.host_json(spb.Host(state=s))["state"] for s in range(1, 6)] == [
        "ready", "not_ready", "cordoned", "draining", "drained"]


def test_host_conditions_are_the_schedulers_list_or_else_the_agents() -> None:
    pressured = apb.HostInfo(conditions=[apb.HostCondition(type="MemoryPressure")])
    failing = host(info=pressured, conditions=["MemoryPressure", "StartFailing"], start_failures=4)
    assert {k: out.host_json(failing)[k] for k in ("state", "conditions", "start_failures")} == {
        "state": "ready", "conditions": ["MemoryPressure", "StartFailing"], "start_failures": 4}
    assert out.host_row(failing)[4] == "MemoryPressure,StartFailing"
    older = host(info=pressured)  # a scheduler that does not send its own list
    assert out.host_json(older)["conditions"] == ["MemoryPressure"]
    assert out.host_row(older)[4] == "MemoryPressure"


def test_endpoint_json_defaults_the_protocol() -> None:
    assert out.endpoint_json(spb.Endpoint(service="web", replica="r", host="h", address="10.0.0.1:31000",
                                          container_port=80)) == {
        "service": "web", "replica": "r", "host": "h", "address": "10.0.0.1:31000", "container_port": 80,
        "protocol": "tcp"}


# -- rows ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (119, "119s"), (120, "2m"), (150, "2m30s"), (600, "10m"),
    (3 * 3600 + 600, "3h10m"),
    (8 * 3600, "8h"), (47 * 3600, "47h"), (5 * 86400, "5d"), (-5, "0s"),
])
def test_age_like_kubectl(seconds: float, text: str) -> None:
    assert out.age(ts(NOW - seconds), now=NOW) == text


def test_age_of_an_unset_time() -> None:
    assert out.age(Timestamp(), now=NOW) == "<unknown>"


def test_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(out.time, "time", lambda: NOW)
    assert out.service_row(service(ready=2, updated=3, pending=1)) == ["web", "2/3", "3", "1", "4", "5m"]
    assert out.service_row(service(message="m"), wide=True)[6:] == ["busybox:1.36", "binpack", "-", "-", "-",
                                                                    "m"]
    assert out.replica_row(replica()) == ["web-1", "web", "running", "yes", "node-1", "0", "42s", ""]
    assert out.replica_row(spb.Replica(id="r", service="web", state=spb.REPLICA_STATE_PENDING,
                                       reason="no room"), wide=True) == [
        "r", "web", "pending", "no", "<none>", "0", "<unknown>", "no room", "0", "<none>"]
    assert out.host_row(host()) == ["node-1", "ready", "10.0.0.1:7070", "2", "-", "gpu=1,zone=a", "120m"]
    assert out.host_row(host(), wide=True)[7:] == ["h-1", "0.5/1.9", "128Mi/3Gi", "0.1", ""]
    assert out.endpoint_row(spb.Endpoint(service="web", replica="r", host="h", address="a:1",
                                         container_port=80, protocol="udp"), wide=True) == [
        "web", "a:1", "r", "h", "80/udp"]


# -- get and watch output --------------------------------------------------------------------------------

def printed(call: Any, *args: Any) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        call(*args)
    return buffer.getvalue()


def test_a_watch_table_keeps_its_columns_and_marks_deletions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(out.time, "time", lambda: NOW)
    printer = cluster_get.Printer(cluster_get.REPLICAS, None, watching=True)
    listing = printed(printer.listing, [replica("web-1"),
                                        replica("web-22", state=spb.REPLICA_STATE_STARTING)])
    changed = printed(printer.changed, replica("web-1", ready=False))
    deleted = printed(printer.deleted, "web-22", replica("web-22"))
    header = listing.splitlines()[0]
    assert changed.index("no") == header.index("READY")
    assert deleted.rstrip("\n").endswith("(deleted)") and deleted.startswith("web-22")


def test_a_watch_with_an_empty_listing_prints_the_header() -> None:
    printer = cluster_get.Printer(cluster_get.HOSTS, None, watching=True)
    assert printed(printer.listing, []).split() == out.HOST_HEADERS


def test_json_lines_and_yaml_documents_in_a_watch() -> None:
    lines = cluster_get.Printer(cluster_get.REPLICAS, "json", watching=True)
    text = printed(lines.listing, [replica("a"), replica("b")]) + printed(lines.deleted, "a", None)
    objects = [json.loads(line) for line in text.splitlines()]
    assert [o.get("id", o.get("name")) for o in objects] == ["a", "b", "a"]
    docs = cluster_get.Printer(cluster_get.HOSTS, "yaml", watching=True)
    text = printed(docs.listing, [host()]) + printed(docs.deleted, "h-1", host())
    import yaml

    assert [(d["id"], d.get("deleted", False)) for d in yaml.safe_load_all(text)] == [("h-1", False),
                                                                                      ("h-1", True)]


def test_what_counts_as_a_change_in_a_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    query = cluster_get.Query(cluster_get.HOSTS, None)
    printer = cluster_get.Printer(cluster_get.HOSTS, None, watching=True)
    known: dict[Any, Any] = {"h-1": host()}
    shown = {"h-1": printer.signature(host())}

    def apply(event: spb.WatchEvent) -> str:
        return printed(lambda: [cluster_get._apply(printer, known, shown, k, o)
                                for k, o in query.changes(event, known)])

    assert apply(spb.WatchEvent(type="put", host=host(last_seen=ts(NOW)))) == ""  # a heartbeat
    monkeypatch.setattr(out.time, "time", lambda: NOW + 86400)
    assert apply(spb.WatchEvent(type="put", host=host())) == ""  # only its age changed
    assert "cordoned" in apply(spb.WatchEvent(type="put", host=host(state=spb.HOST_STATE_CORDONED)))
    assert "(deleted)" in apply(spb.WatchEvent(type="delete", name="h-1"))
    assert apply(spb.WatchEvent(type="delete", name="h-1")) == ""  # already gone
    assert known == {}


def test_objects_that_stop_matching_a_query_leave_it() -> None:
    query = cluster_get.Query(cluster_get.REPLICAS, None, service="web", states=(spb.REPLICA_STATE_RUNNING,))
    event = spb.WatchEvent(type="put", replica=replica("web-1", state=spb.REPLICA_STATE_STOPPING))
    assert query.changes(event, {}) == [("web-1", None)]
    other = spb.WatchEvent(type="put", host=host())
    assert query.changes(other, {}) == []


def test_endpoint_events_replace_the_whole_set_of_their_service() -> None:
    query = cluster_get.Query(cluster_get.ENDPOINTS, None)
    old = spb.Endpoint(service="web", replica="r1", address="a:1")
    other = spb.Endpoint(service="api", replica="r9", address="c:3")
    new = spb.Endpoint(service="web", replica="r2", address="b:2")
    known = {cluster_get.ENDPOINTS.key(e): e for e in (old, other)}
    event = spb.WatchEvent(type="put", name="web", endpoints=spb.ListEndpointsResponse(endpoints=[new]))
    assert query.changes(event, known) == [(("web", "r1", "a:1"), None), (("web", "r2", "b:2"), new)]
    gone = spb.WatchEvent(type="delete", name="web")
    assert query.changes(gone, known) == [(("web", "r1", "a:1"), None)]


def test_get_refuses_unknown_kinds_and_misplaced_filters() -> None:
    import argparse

    from agent.cli.client import CliError

    def query(**fields: Any) -> cluster_get.Query:
        base = {"kind": "services", "name": None, "service": "", "host": "", "state": []}
        return cluster_get._query(argparse.Namespace(**{**base, **fields}))

    assert query(kind="svc").kind is cluster_get.SERVICES and query(kind="ep").kind is cluster_get.ENDPOINTS
    assert query(kind="replicas", state=["running,failed"]).states == (spb.REPLICA_STATE_RUNNING,
                                                                        spb.REPLICA_STATE_FAILED)
    with pytest.raises(CliError, match="unknown kind 'pods'"):
        query(kind="pods")
    with pytest.raises(CliError, match="unknown replica state 'up'"):
        query(kind="replicas", state=["up"])
    with pytest.raises(CliError, match="filter replicas only"):
        query(kind="hosts", service="web")


# -- describe, explain, rollout ----------------------------------------------------------------------------

def test_describe_service_text() -> None:
    rollout = spb.Rollout(service="web", desired=3, updated=1, updated_ready=1, old=2, message="surging")
    text = cluster_describe.service_text(service(replicas=3, ready=3), [replica()], rollout)
    lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith(" "))
    assert {k: v.strip() for k, v in lines.items() if k in (
        "Name", "Generation", "Image", "Command", "Resources", "Ports", "Health check", "Restart", "Strategy",
        "Constraints", "Topology spread", "Update", "Labels", "Rollout")} == {
        "Name": "web", "Generation": "4 (template generation 3)", "Image": "busybox:1.36",
        "Command": "httpd -f", "Resources": "cpus 0.5 (request 0.25), memory 64Mi",
        "Ports": "8080/tcp, 5353->53/udp",
        "Health check": "http GET :8080/healthz, every 2s, timeout 30s, unhealthy after 3 failures",
        "Restart": "on-failure:3", "Strategy": "binpack", "Constraints": "zone!=c",
        "Topology spread": "over zone (max skew 1)", "Update": "max surge 25%, max unavailable 1",
        "Labels": "team=growth", "Rollout": "1 of 3 updated, 1 ready, 2 old: surging"}
    assert "Replicas:\n  ID" in text and "web-1" in text


def test_explanation_text_sorts_hosts_that_fit_first_by_score() -> None:
    explanation = spb.Explanation(summary="on node-2: most room", hosts=[
        spb.HostVerdict(host="h-1", host_name="node-1", feasible=False, reasons=["cordoned"]),
        spb.HostVerdict(host="h-3", host_name="node-3", feasible=True, score=10, scores={"spread": 10}),
        spb.HostVerdict(host="h-2", host_name="node-2", feasible=True, score=55.5,
                        scores={"spread": 50, "image": 5.5})],
        decisions=[spb.Decision(time=ts(NOW), action="placed", reason="on node-2: most room")])
    lines = cluster_describe.explanation_text(explanation).splitlines()
    assert lines[0] == "Placement:  on node-2: most room"
    hosts = [line.split()[0] for line in lines[3:6]]
    assert hosts == ["node-2", "node-3", "node-1"]
    assert "image 5.5, spread 50.0" in lines[3] and "cordoned" in lines[5]
    assert lines[-1].split(None, 2) == ["2023-11-14T22:13:20Z", "placed", "on node-2: most room"]


@pytest.mark.parametrize(("check", "text"), [
    (apb.HealthCheck(tcp=apb.TcpProbe(port=80)),
     "tcp :80, every 30s, timeout 30s, unhealthy after 3 failures"),
    (apb.HealthCheck(exec=apb.ExecProbe(command=["/bin/sh", "-c", "curl -f x"]), interval_seconds=90,
                     timeout_seconds=1.5, retries=2, start_period_seconds=120, restart_on_unhealthy=True),
     "exec /bin/sh -c 'curl -f x', every 90s, timeout 1.5s, unhealthy after 2 failures, start period 2m, "
     "restart when unhealthy"),
])
def test_health_text(check: apb.HealthCheck, text: str) -> None:
    assert cluster_describe.health_text(check) == text


def test_rollout_lines() -> None:
    assert cluster.rollout_line(spb.Rollout(service="web", template_generation=3, desired=4, updated=2,
                                            updated_ready=1, old=2)) == (
        "service/web: 2 of 4 replicas updated, 1 ready, 2 old (template generation 3)")
    assert cluster.rollout_line(spb.Rollout(service="web", template_generation=3, complete=True)) == (
        "service/web rolled out (template generation 3)")
