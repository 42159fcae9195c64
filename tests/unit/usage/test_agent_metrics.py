"""The agent's own shoal_agent_* metrics and the --metrics-listen address parser."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import InvalidArgument
from agent.usage.metrics import AgentMetrics, parse_listen_address


def test_agent_metrics_exposition() -> None:
    m = AgentMetrics(version="1.2.3", host_id="abc")
    m.record_start(seconds=0.02, ok=True)
    m.record_start(seconds=0.5, ok=False)
    m.record_pull()
    m.record_sample(0.004)
    m.record_rpc(method="/shoal.agent.v1.Containers/ListContainers", code="OK", seconds=0.001)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    starts = {s.labels["result"]: s.value for s in fams["shoal_agent_container_starts"].samples
              if s.name.endswith("_total")}
    assert starts == {"ok": 1.0, "failed": 1.0}
    assert fams["shoal_agent_container_start_seconds"].type == "histogram"
    count = [s for s in fams["shoal_agent_container_start_seconds"].samples if s.name.endswith("_count")]
    assert count[0].value == 1  # failures are not start latencies
    rpc = [s for s in fams["shoal_agent_rpc_seconds"].samples if s.name.endswith("_count")]
    assert rpc[0].labels == {"method": "/shoal.agent.v1.Containers/ListContainers", "code": "OK"}
    assert [s.value for s in fams["shoal_agent_images_pulled"].samples if s.name.endswith("_total")] == [1]
    assert fams["shoal_agent_sample_seconds"].type == "histogram"
    (info,) = fams["shoal_agent_info"].samples
    assert info.labels == {"version": "1.2.3", "host_id": "abc"} and info.value == 1


def test_two_agents_in_one_process_do_not_collide() -> None:
    AgentMetrics(version="1", host_id="a")
    AgentMetrics(version="1", host_id="b")


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1:9101", ("127.0.0.1", 9101)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:9101", ("::1", 9101)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_listen_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9101", ":9101", "127.0.0.1:", "127.0.0.1:x", "::1:9101",
                                     "[nope]:1", "h:70000"])
def test_parse_listen_address_rejects(address: str) -> None:
    with pytest.raises(InvalidArgument, match="--metrics-listen"):
        parse_listen_address(address)
