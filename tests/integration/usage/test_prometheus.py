"""/metrics scraped by a real Prometheus (the Debian package), queried with PromQL; the deploy/ files
checked by promtool; the HTTP server and the RPC timing interceptor against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.usage.cadvisor import UsageCollector
from agent.usage.metrics import AgentMetrics, RpcMetricsInterceptor, serve_metrics
from agent.usage.sampler import UsageSampler

from .conftest import BUSY, Containers, SamplerThread, identity

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None,
                                      reason="apt-get install -y --no-install-recommends prometheus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


class Prometheus:
    def __init__(self, tmp: Path, *, target: str) -> None:
        self.port = _free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: shoal-agent\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log)

    def query(self, promql: str) -> list[dict]:  # type: ignore[type-arg]
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            body = json.loads(_get(url))
        except OSError:
            return []  # not listening yet
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def poll(self, promql: str, *, until: object, timeout: float = 60.0) -> list[dict]:  # type: ignore[type-arg]
        """Query (bounded) until ``until(result)`` holds; the first scrape lands ~5 s after start."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "prometheus exited"
            result = self.query(promql)
            if until(result):  # type: ignore[operator]
                return result
            assert time.monotonic() < deadline, f"{promql} never satisfied: {result}"
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def metrics_registry() -> Iterator[CollectorRegistry]:
    yield CollectorRegistry()


@needs_prometheus
@pytest.mark.root
@pytest.mark.integration
def test_prometheus_rate_of_a_busy_container_is_its_cpu_limit(containers: Containers, tmp_path: Path) -> None:
    busy = containers.start("busy", ["sh", "-c", BUSY], cpu_millis=500, labels={"app.kind": "spin"})
    agent_metrics = AgentMetrics(version="test", host_id="h")
    sampler = UsageSampler(targets=lambda: [busy], identity=identity(tmp_path), interval=1.0,
                           observe_duration=agent_metrics.record_sample)
    agent_metrics.registry.register(UsageCollector(sampler.latest))
    server = serve_metrics("127.0.0.1:0", agent_metrics.registry)
    prom = Prometheus(tmp_path, target=f"127.0.0.1:{server.port}")
    try:
        with SamplerThread(sampler):
            prom.poll('count_over_time(container_cpu_usage_seconds_total{name="busy"}[10s])',
                      until=lambda r: bool(r) and float(r[0]["value"][1]) >= 9)
            (rate,) = prom.query('rate(container_cpu_usage_seconds_total{name="busy"}[10s])')
            assert 0.3 <= float(rate["value"][1]) <= 0.7, rate
            assert rate["metric"]["id"] == busy.id and rate["metric"]["image"] == "busybox:test"
            assert rate["metric"]["container_label_app_kind"] == "spin"
            (cores,) = prom.query("machine_cpu_cores")
            assert int(float(cores["value"][1])) == len(os.sched_getaffinity(0))
            (quota,) = prom.query('container_spec_cpu_quota{name="busy"}')
            assert float(quota["value"][1]) == 50_000
            samples = prom.query("shoal_agent_sample_seconds_count")
            assert samples and float(samples[0]["value"][1]) >= 1
    finally:
        prom.stop()
        server.close()


@needs_prometheus
@pytest.mark.integration
def test_promtool_accepts_the_deploy_config_and_rules() -> None:
    for args in (["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "prometheus" / "rules.yml")]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_metrics_server_serves_the_registry_and_closes(metrics_registry: CollectorRegistry) -> None:
    agent_metrics = AgentMetrics(version="9.9", host_id="abc", registry=metrics_registry)
    agent_metrics.record_pull()
    server = serve_metrics("127.0.0.1:0", metrics_registry)
    try:
        text = _get(server.url)
    finally:
        server.close()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["shoal_agent_info"].samples[0].labels == {"version": "9.9", "host_id": "abc"}
    with pytest.raises(OSError):
        _get(server.url)


@pytest.mark.integration
def test_metrics_server_never_asks_dns_for_its_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """http.server names itself with socket.getfqdn(): a reverse lookup that stalled the agent's start by
    10 s on a host whose nameserver is routed to but silent (the demo's network namespaces)."""
    def no_dns(*args: object) -> str:
        raise AssertionError(f"socket.getfqdn{args}: a DNS lookup while starting /metrics")

    monkeypatch.setattr(socket, "getfqdn", no_dns)
    server = serve_metrics("127.0.0.1:0", CollectorRegistry())
    try:
        assert _get(server.url) == ""  # an empty registry, served
    finally:
        server.close()


@pytest.mark.integration
def test_metrics_server_reports_a_taken_port() -> None:
    from agent.errors import ShoalError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ShoalError, match="cannot serve metrics"):
            serve_metrics(f"127.0.0.1:{s.getsockname()[1]}", CollectorRegistry())


# -- the RPC interceptor on a real grpc.aio server ------------------------------------------------------

def _identity(x: bytes) -> bytes:
    return x


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
    if request == b"missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return request


async def _count(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def,type-arg]
    for i in range(int(request)):
        yield str(i).encode()


@pytest.mark.integration
def test_interceptor_times_unary_and_streaming_rpcs_with_status(tmp_path: Path) -> None:
    agent_metrics = AgentMetrics(version="t", host_id="h")

    async def go() -> None:
        server = grpc.aio.server(interceptors=[RpcMetricsInterceptor(agent_metrics)])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Svc", {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo, request_deserializer=_identity,
                                                        response_serializer=_identity),
            "Count": grpc.unary_stream_rpc_method_handler(_count, request_deserializer=_identity,
                                                          response_serializer=_identity),
        })])
        address = f"unix://{tmp_path / 'grpc.sock'}"
        server.add_insecure_port(address)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                echo = channel.unary_unary("/test.Svc/Echo", request_serializer=_identity,
                                           response_deserializer=_identity)
                count = channel.unary_stream("/test.Svc/Count", request_serializer=_identity,
                                             response_deserializer=_identity)
                assert await echo(b"hi") == b"hi"
                assert await echo(b"hi") == b"hi"
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await echo(b"missing")
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                assert [m async for m in count(b"3")] == [b"0", b"1", b"2"]
        finally:
            await server.stop(grace=None)

    asyncio.run(go())
    counts = {}
    for metric in agent_metrics.registry.collect():
        if metric.name == "shoal_agent_rpc_seconds":
            counts = {(s.labels["method"], s.labels["code"]): s.value
                      for s in metric.samples if s.name.endswith("_count")}
    assert counts == {("/test.Svc/Echo", "OK"): 2, ("/test.Svc/Echo", "NOT_FOUND"): 1,
                      ("/test.Svc/Count", "OK"): 1}
    with contextlib.suppress(FileNotFoundError):
        (tmp_path / "grpc.sock").unlink()
