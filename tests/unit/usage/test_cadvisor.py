"""The cAdvisor-compatible rendering: names, types, units and labels, checked by parsing the exposition."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.usage import cadvisor
from agent.usage.sampler import Snapshot

from .builders import container, snapshot


def scrape(snap: Snapshot | None) -> dict[str, object]:
    registry = CollectorRegistry()
    registry.register(cadvisor.UsageCollector(lambda: snap))
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)} | {"__text__": text}


def samples(families: dict[str, object], name: str) -> list:  # type: ignore[type-arg]
    fam = families[name]
    return list(fam.samples)  # type: ignore[attr-defined]


def test_names_types_and_units_match_cadvisor() -> None:
    fams = scrape(snapshot(container()))
    text = fams.pop("__text__")
    expected_types = {
        "container_cpu_usage_seconds": "counter",
        "container_cpu_cfs_throttled_seconds": "counter",
        "container_cpu_cfs_periods": "counter",
        "container_cpu_cfs_throttled_periods": "counter",
        "container_memory_usage_bytes": "gauge",
        "container_memory_working_set_bytes": "gauge",
        "container_memory_rss": "gauge",
        "container_spec_memory_limit_bytes": "gauge",
        "container_spec_cpu_quota": "gauge",
        "container_spec_cpu_period": "gauge",
        "container_network_receive_bytes": "counter",
        "container_network_transmit_bytes": "counter",
        "container_network_receive_packets": "counter",
        "container_network_transmit_packets": "counter",
        "container_start_time_seconds": "gauge",
        "container_oom_events": "counter",
        "container_last_seen": "gauge",
        "container_fs_usage_bytes": "gauge",
        "container_processes": "gauge",
        "machine_cpu_cores": "gauge",
        "machine_memory_bytes": "gauge",
    }
    for name, kind in expected_types.items():
        assert fams[name].type == kind, name  # type: ignore[attr-defined]
    # The exposed sample names are cAdvisor's exactly (counters end in _total, no _created).
    exposed = {line.split("{")[0].split(" ")[0]
               for line in str(text).splitlines() if not line.startswith("#")}
    for name in ("container_cpu_usage_seconds_total", "container_cpu_cfs_throttled_seconds_total",
                 "container_memory_rss", "container_network_receive_bytes_total",
                 "container_network_transmit_bytes_total", "container_oom_events_total",
                 "container_spec_cpu_quota", "machine_cpu_cores", "machine_memory_bytes"):
        assert name in exposed, name
    assert not any(n.endswith("_created") for n in exposed)


def test_values_and_units() -> None:
    fams = scrape(snapshot(container()))
    (cpu,) = samples(fams, "container_cpu_usage_seconds")
    assert cpu.value == 12.5 and cpu.labels["cpu"] == "total"
    (quota,) = samples(fams, "container_spec_cpu_quota")
    assert quota.value == 50_000  # 500 millicpus = 50 ms per 100 ms period, in microseconds
    (period,) = samples(fams, "container_spec_cpu_period")
    assert period.value == 100_000
    (throttled,) = samples(fams, "container_cpu_cfs_throttled_seconds")
    assert throttled.value == 3.25
    (start,) = samples(fams, "container_start_time_seconds")
    assert start.value == 1_700_000_000.0
    rx = {s.labels["interface"]: s.value for s in samples(fams, "container_network_receive_bytes")}
    assert rx == {"eth0": 1000, "eth1": 10}
    (cores,) = samples(fams, "machine_cpu_cores")
    assert cores.value == 2
    (mem,) = samples(fams, "machine_memory_bytes")
    assert mem.value == 8 << 30
    (ws,) = samples(fams, "container_memory_working_set_bytes")
    assert ws.value == 80


def test_labels_id_name_image_and_sanitized_container_labels() -> None:
    fams = scrape(snapshot(container(), container(id="d00d", name="other", labels={"tier": "db"},
                                                  cpu_limit_millis=0)))
    by_id = {s.labels["id"]: s.labels for s in samples(fams, "container_memory_usage_bytes")}
    assert by_id["c0ffee"] == {
        "id": "c0ffee", "name": "busy", "image": "busybox:1.36", "container_label_app": "web",
        "container_label_team_name_x_y": "infra", "container_label_tier": ""}
    # The parser drops nothing: an empty label is how cAdvisor says "not set".
    assert by_id["d00d"]["container_label_tier"] == "db"
    assert by_id["d00d"]["container_label_app"] == ""
    # cpu-limit families only for cpu-limited containers, like cAdvisor.
    assert [s.labels["id"] for s in samples(fams, "container_spec_cpu_quota")] == ["c0ffee"]


def test_colliding_label_keys_resolve_deterministically() -> None:
    fams = scrape(snapshot(container(labels={"a.b": "dot", "a-b": "dash"})))
    (s,) = samples(fams, "container_memory_usage_bytes")
    assert s.labels["container_label_a_b"] == "dash"  # "a-b" sorts before "a.b"


def test_no_snapshot_yet_renders_nothing() -> None:
    fams = scrape(None)
    assert set(fams) == {"__text__"}


def test_only_chosen_fields_appear() -> None:
    """The exposition is built from ids, names, images and labels only — check every label name."""
    fams = scrape(snapshot(container()))
    fams.pop("__text__")
    allowed = {"id", "name", "image", "cpu", "interface", "state"}
    for fam in fams.values():
        for s in fam.samples:  # type: ignore[attr-defined]
            assert set(s.labels) <= allowed | {n for n in s.labels if n.startswith("container_label_")}
