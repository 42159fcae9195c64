"""Autoscaling end to end on the netns cluster, with a real Prometheus scraping an exporter the test runs.

* cpu: replicas that burn their whole cpu request for their first 20 s make a service with a 50 % cpu
  target grow (each new replica is busy too), then shrink back to ``min`` once they all idle (a short
  scale-down window set in the test);
* a service-level PromQL metric (``target_average_value``) scales a service with ``min: 0`` from the
  queue's depth, down to zero replicas when the queue is empty, and back up when work arrives;
* a per-replica PromQL metric (``per_replica_label``) scales on each replica's own series.

Every decision is visible: ``describe service`` shows the reasons, and a recorded input replays to the
same count through ``shoal autoscale replay``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.promstack import PROMETHEUS_PORT, Exporter, PrometheusServer
from tests.integration.cluster.conftest import IDLE, IMAGE, Cluster, exits_on_sigterm, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

FAST_DOWN = """    scale_down: {stabilization_window_seconds: 3, select_policy: max,
                 policies: [{type: percent, value: 100, period_seconds: 1}]}"""


@pytest.fixture(scope="module")
def scheduler_args() -> list[str]:
    return ["--prometheus", f"http://{{ctl}}:{PROMETHEUS_PORT}"]


@pytest.fixture(scope="module")
def exporter(cluster: Cluster) -> Iterator[Exporter]:
    made = Exporter(cluster.ctl.name, str(cluster.ctl.address))
    prometheus = PrometheusServer(cluster.work / "prometheus", netns=cluster.ctl.name,
                                  address=str(cluster.ctl.address), scrape=made.address)
    try:
        yield made
    finally:
        prometheus.close()
        made.close()


def autoscaled(name: str, *, command: str, autoscale: str, replicas: int | None = None) -> str:
    count = f"replicas: {replicas}\n" if replicas is not None else ""
    return f"""
name: {name}
{count}template:
  image: {IMAGE}
  command: ["sh", "-c", {json.dumps(command)}]
  resources: {{cpus: 0.1, memory: 16M}}
autoscale:
{autoscale}
"""


def declared(cluster: Cluster, name: str) -> int:
    count: int = cluster.json("get", "services", name)[0]["replicas"]
    return count


def test_cpu_load_scales_up_and_back_down(cluster: Cluster) -> None:
    busy_then_idle = exits_on_sigterm("end=$(( $(date +%s) + 20 )); "
                                      "while [ $(date +%s) -lt $end ]; do :; done; sleep 3600")
    cluster.apply(autoscaled("burner", command=busy_then_idle, replicas=1, autoscale=f"""  min: 1
  max: 4
  metrics:
    - cpu: {{target_utilization_percent: 50}}
  behavior:
{FAST_DOWN}"""))
    grown = wait_for(lambda: declared(cluster, "burner") >= 2 and declared(cluster, "burner"), timeout=60)
    assert grown <= 4
    described = cluster.cli("describe", "service", "burner").stdout
    assert "cpu" in described and "of target 50%" in described, described
    # The load ends (each replica idles 20 s after its start): back to min.
    wait_for(lambda: declared(cluster, "burner") == 1, timeout=120)
    cluster.wait_running("burner", 1, timeout=60)


def test_a_queue_metric_scales_to_zero_and_wakes_up(cluster: Cluster, exporter: Exporter) -> None:
    exporter.set("test_queue_depth", 5)
    cluster.apply(autoscaled("worker", command=IDLE, replicas=1, autoscale=f"""  min: 0
  max: 3
  metrics:
    - prometheus: {{query: 'sum(test_queue_depth)', target_average_value: 2}}
  behavior:
{FAST_DOWN}"""))
    cluster.wait_running("worker", 3, timeout=60)  # ceil(5 / 2)
    exporter.set("test_queue_depth", 0)
    wait_for(lambda: declared(cluster, "worker") == 0, timeout=60)
    wait_for(lambda: not cluster.replicas("worker"), timeout=60)
    exporter.set("test_queue_depth", 3)
    cluster.wait_running("worker", 2, timeout=60)  # ceil(3 / 2), from zero
    history = autoscale_history(cluster, "worker")
    assert any(d["desired_replicas"] == 0 for d in history) and history[-1]["desired_replicas"] == 2
    replayed = replay(cluster, history[-1]["input"])
    assert replayed["desired_replicas"] == 2


def test_a_per_replica_metric_scales_on_each_replicas_series(cluster: Cluster, exporter: Exporter) -> None:
    cluster.apply(autoscaled("jobs", command=IDLE, replicas=1, autoscale="""  min: 1
  max: 5
  metrics:
    - prometheus: {query: 'test_jobs', per_replica_label: replica, target_average_value: 10}"""))
    (first,) = cluster.wait_running("jobs", 1)
    exporter.set(f'test_jobs{{replica="{first["id"]}"}}', 30)
    try:
        wait_for(lambda: declared(cluster, "jobs") == 3, timeout=60)  # 30 / 10 per replica
    finally:
        exporter.drop(f'test_jobs{{replica="{first["id"]}"}}')


def autoscale_history(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cluster.json("autoscale", "history", name)
    return rows


def replay(cluster: Cluster, document: dict[str, Any]) -> dict[str, Any]:
    path = cluster.work / "replay.json"
    path.write_text(json.dumps(document))
    result: dict[str, Any] = json.loads(cluster.cli("autoscale", "replay", str(path)).stdout)
    return result

