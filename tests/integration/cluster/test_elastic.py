"""Elastic hosts end to end on the netns cluster, with a test provider (issue 13, docs/elastic-hosts.md).

The provider (``tests.fixtures.elastic_provider``) serves the webhook inside the control host, where the
schedulers run, and buys machines as ``tests.integration.cluster.elastic_machines`` makes them: new
netns hosts whose agents join with the group's labels. The cluster's own three hosts belong to no group;
the services here are constrained to their group (``group==NAME``), so only bought hosts can run them.

* A service needing two hosts' room → one ``scale_out`` request for two hosts of the declared shape →
  they join and every replica runs on them. Its load gone (scaled down to one replica per host) → one
  host drained (its replica started on the other host before the old one stopped) with no failed request
  through the endpoints, released (``scale_in`` naming it), removed by the provider, and forgotten.
* The webhook down, then refusing, then losing its answer after taking the request → the same request
  retried under one id (attempts grow; ``describe hostgroup`` shows the last error), accepted once,
  and one host bought for it.

After each test the group's hosts go the same way (the services deleted: min 0) and the group is
deleted, so the next test starts on the three hosts alone. Timings are short (pending_for 1s, cooldown
5s, scale_in for 5s, delay_after_scale_out 5s); every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.elastic_provider import Mode, ProviderWebhook, Received
from tests.fixtures.etcd import _socket_in
from tests.integration.cluster.conftest import IMAGE, Cluster, wait_for
from tests.integration.cluster.elastic_machines import NetnsMachines
from tests.integration.cluster.endpoint_prober import EndpointProber

pytestmark = [pytest.mark.root, pytest.mark.integration]

PROVIDER_PORT = 9600
SHAPE_MEMORY = "1G"
SHAPE_MEMORY_BYTES = 1 << 30
# Serves, and on SIGTERM keeps serving 2 s before it exits: the time a client's endpoint list may lag.
WEB = ("mkdir -p /www; echo ok-from-$(hostname) > /www/index.html; httpd -f -p 8080 -h /www & "
       "trap 'sleep 2; exit 0' TERM; wait")


@pytest.fixture(scope="module")
def provider(cluster: Cluster, busybox_image: Any) -> Iterator[ProviderWebhook]:
    assert cluster.world is not None
    machines = NetnsMachines(world=cluster.world, base=cluster.work / "machines", pki=cluster.pki,
                             scheduler=cluster.address, tag=cluster.tag, image=busybox_image,
                             image_name=IMAGE)
    token = secrets.token_hex(16)
    (cluster.work / "provider-token").write_text(token + "\n")
    made = ProviderWebhook(cluster.ctl.name, str(cluster.ctl.address), PROVIDER_PORT, machines, token=token)
    try:
        yield made
    finally:
        cleaned = made.close() + machines.close()
        assert not cleaned, cleaned


@pytest.fixture(autouse=True)
def groups_gone(cluster: Cluster, provider: ProviderWebhook) -> Iterator[None]:
    """After a test: its services deleted, its groups' hosts scaled in (min 0) and forgotten, the groups
    deleted, the provider answering again."""
    yield
    provider.set_mode(Mode.ACCEPT)
    for service in cluster.json("get", "services"):
        cluster.cli("delete", "service", service["name"], check=False)
    try:
        wait_for(lambda: not members(cluster), timeout=120, interval=0.5)
    finally:
        for group in cluster.json("get", "hostgroups"):
            cluster.cli("delete", "hostgroup", group["name"], "--force", check=False)
    assert not provider.live_machines()
    assert not provider.problems, provider.problems


def group_yaml(cluster: Cluster, name: str, *, max_hosts: int, cpus: str) -> str:
    return f"""kind: hostgroup
name: {name}
min: 0
max: {max_hosts}
shape: {{cpus: {cpus}, memory: {SHAPE_MEMORY}, labels: {{tier: elastic}}}}
scale_out: {{pending_for: 1s, max_per_request: 3, cooldown: 5s}}
scale_in: {{utilization_below: 50%, for: 5s, delay_after_scale_out: 5s, max_concurrent_drains: 1}}
provider:
  webhook:
    url: http://{cluster.ctl.address}:{PROVIDER_PORT}/hosts
    token_file: {cluster.work / "provider-token"}
    timeout: 5s
"""


def web_yaml(name: str, group: str, *, replicas: int, cpus: float) -> str:
    return f"""name: {name}
replicas: {replicas}
template:
  image: {IMAGE}
  command: ["sh", "-c", {json.dumps(WEB)}]
  resources: {{cpus: {cpus:g}, memory: 16M}}
  ports: [{{container: 8080}}]
  health: {{http: {{port: 8080, path: /}}, interval: 500ms}}
placement: {{constraints: ["group=={group}", "tier==elastic"], strategy: spread}}
update: {{max_surge: 1, max_unavailable: 0}}
"""


def host_cpu(cluster: Cluster) -> int:
    """What one of the cluster's hosts offers (a bought host is the same machine): the shape's cpus."""
    millis = {int(h["cpu_allocatable_millis"]) for h in cluster.json("get", "hosts")}
    assert len(millis) == 1, millis
    return millis.pop()


def members(cluster: Cluster, group: str | None = None) -> list[dict[str, Any]]:
    """Hosts the scheduler knows that carry a group label (of ``group``, or of any)."""
    return [h for h in cluster.json("get", "hosts")
            if "group" in h["labels"] and (group is None or h["labels"]["group"] == group)]


def status_of(cluster: Cluster, group: str) -> dict[str, Any]:
    (shown,) = cluster.json("get", "hostgroups", group)
    status: dict[str, Any] = shown["status"]
    return status


def requests_of(cluster: Cluster, group: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in status_of(cluster, group).get("requests", []) if r.get("kind") == kind]


def decisions(cluster: Cluster, group: str) -> list[str]:
    return [d.get("action", "") for d in status_of(cluster, group).get("decisions", [])]


def leader_metrics(cluster: Cluster) -> str:
    """The leading scheduler's /metrics (from inside the control host)."""
    address = cluster.schedulers[cluster.leader()].http
    host, _, port = address.rpartition(":")
    sock = _socket_in(cluster.ctl.name)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.sock = sock
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def metric(text: str, name: str, group: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and f'group="{group}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_pending_replicas_buy_hosts_and_an_idle_host_is_drained_released_and_forgotten(
        cluster: Cluster, provider: ProviderWebhook) -> None:
    cpu = host_cpu(cluster)
    per_replica = cpu * 0.3 / 1000  # three fit on a host, a fourth does not: five replicas need two hosts
    applied = cluster.apply(group_yaml(cluster, "workers", max_hosts=4, cpus=f"{cpu / 1000:g}") + "---\n"
                            + web_yaml("web", "workers", replicas=5, cpus=per_replica))
    assert "workers" in applied and "web" in applied, applied

    # Scale out: one request, for two hosts of the declared shape.
    (bought,) = provider.wait(lambda: [f for f in provider.scale_outs("workers") if f.done], timeout=90,
                              what="a scale_out for workers fulfilled")
    first: Received = provider.of(bought.request_id)[0]
    assert first.body["count"] == 2, first.body
    assert first.body["shape"] == {"cpu_millis": cpu, "memory_bytes": SHAPE_MEMORY_BYTES,
                                   "labels": {"group": "workers", "tier": "elastic"}}, first.body
    assert "web" in first.body["reason"], first.body
    assert first.headers["authorization"] == f"Bearer {(cluster.work / 'provider-token').read_text().strip()}"
    assert len(bought.machines) == 2 and not bought.errors, bought
    placed = cluster.wait_running("web", 5, timeout=120)
    joined = {h["id"]: h for h in members(cluster, "workers")}
    assert len(joined) == 2 and {r["host"] for r in placed} == set(joined), (placed, joined)
    assert {h["address"] for h in joined.values()} == {m.address for m in bought.machines}
    assert len(provider.scale_outs("workers")) == 1
    assert len(requests_of(cluster, "workers", "scale_out")) == 1
    wait_for(lambda: (s := status_of(cluster, "workers")).get("desired_hosts") == 2
             and not s.get("pending_replicas"), timeout=30)
    shown = leader_metrics(cluster)
    assert metric(shown, "shoal_hostgroup_hosts", "workers") == 2, shown
    assert metric(shown, "shoal_hostgroup_desired_hosts", "workers") == 2, shown

    # Load gone: one replica per host, each host at 30 % → one drained (its replica moves to the other),
    # released, removed by the provider and forgotten; the client never sees a failure.
    with EndpointProber(cluster.ctl.name, lambda: cluster.json("get", "endpoints", "web")) as prober:
        wait_for(lambda: set(prober.served_by()) == set(joined), timeout=30)
        cluster.cli("scale", "web", "--replicas", "2")
        cluster.wait_running("web", 2, timeout=60)
        ready_seen: list[int] = []  # from here on: never fewer than two ready (max_unavailable 0)

        def one_host_left() -> bool:
            ready_seen.append(len(cluster.running("web")))
            return len(members(cluster, "workers")) == 1

        wait_for(one_host_left, timeout=120, interval=0.3)
        (removed,) = provider.wait(lambda: [f for f in provider.scale_ins("workers") if f.done], timeout=30,
                                   what="a scale_in for workers fulfilled")
        (kept,) = members(cluster, "workers")
        settled = cluster.wait_running("web", 2, timeout=60)
        after_drain = prober.served_by()
    assert not prober.failures(), prober.failures()[:5]
    assert after_drain[kept["id"]] > 0
    (gone,) = set(joined) - {kept["id"]}
    assert prober.served_by()[gone] > 0  # it served until it was drained
    assert all(r["host"] == kept["id"] for r in settled)
    assert min(ready_seen) >= 2, ready_seen
    asked = provider.of(removed.request_id)[0].body
    assert [h["id"] for h in asked["hosts"]] == [gone] and removed.removed == [joined[gone]["address"]]
    assert not removed.errors, removed
    made = decisions(cluster, "workers")
    for action in ("scale_out", "drain", "release", "forget"):
        assert action in made, made
    (drained,) = [d["reason"] for d in status_of(cluster, "workers")["decisions"] if d["action"] == "drain"]
    assert "its 1 replica fit on the other hosts" in drained, drained  # it had one to move first
    described = cluster.cli("describe", "hostgroup", "workers").stdout
    assert removed.request_id in described and bought.request_id in described, described


def test_a_provider_that_is_down_refuses_or_loses_its_answer_is_retried_under_one_id_and_buys_once(
        cluster: Cluster, provider: ProviderWebhook) -> None:
    cpu = host_cpu(cluster)
    provider.set_mode(Mode.DOWN)
    cluster.apply(group_yaml(cluster, "spares", max_hosts=3, cpus=f"{cpu / 1000:g}") + "---\n"
                  + web_yaml("batch", "spares", replicas=2, cpus=cpu * 0.3 / 1000))

    def retried(attempts: int) -> dict[str, Any] | None:
        found = requests_of(cluster, "spares", "scale_out")
        return found[0] if found and found[0].get("attempts", 0) >= attempts and found[0].get("last_error") \
            else None

    down = wait_for(lambda: retried(2), timeout=60, interval=0.2)
    request_id = down["id"]
    assert down["state"] == "pending" and not provider.of(request_id)
    described = cluster.cli("describe", "hostgroup", "spares").stdout
    assert request_id in described and down["last_error"][:40] in described, described

    provider.set_mode(Mode.REFUSE)
    provider.wait(lambda: provider.of(request_id), timeout=30, what="an attempt while refusing")
    refused = wait_for(lambda: (r := retried(down["attempts"] + 1)) and "500" in r["last_error"] and r,
                       timeout=30, interval=0.2)
    assert refused["id"] == request_id and refused["state"] == "pending"
    assert "500" in cluster.cli("describe", "hostgroup", "spares").stdout

    provider.set_mode(Mode.LOSE_ANSWER)  # takes the request (buys a host), but the 500 is what arrives
    provider.wait(lambda: request_id in provider.fulfilments, timeout=30, what="the request taken")
    provider.set_mode(Mode.ACCEPT)
    delivered = wait_for(lambda: (r := requests_of(cluster, "spares", "scale_out"))
                         and r[0]["state"] == "delivered" and r[0], timeout=60, interval=0.3)
    placed = cluster.wait_running("batch", 2, timeout=120)

    seen = provider.of(request_id)
    assert [r.status for r in seen].count(200) == 1 and seen[-1].status == 200, [r.status for r in seen]
    assert {r.headers["idempotency-key"] for r in seen} == {request_id}
    assert len({json.dumps(r.body, sort_keys=True) for r in seen}) == 1  # the same document every time
    assert delivered["id"] == request_id and delivered["attempts"] >= len(seen) + 2  # + the refused connects
    (bought,) = provider.scale_outs("spares")
    assert bought.request_id == request_id and len(bought.machines) == 1
    (host,) = members(cluster, "spares")
    assert {r["host"] for r in placed} == {host["id"]}
    assert len(requests_of(cluster, "spares", "scale_out")) == 1
