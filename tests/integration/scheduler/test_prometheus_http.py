"""scheduler/httpd.py on loopback (``/metrics`` in both formats and gzipped, ``/http_sd`` with 503 until
the cluster was read, ``?kind=``, errors, closing, bad addresses, IPv6) and the API interceptor of
scheduler/metrics.py on a real grpc.aio server running the scheduler's own services."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proto.scheduler.v1 import scheduler_pb2 as spb
from proto.scheduler.v1 import scheduler_pb2_grpc as spb_grpc
from scheduler import httpd
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import registry
from scheduler.server import add_services
from scheduler.store.base import Put
from scheduler.store.memory import MemoryStore
from tests.fixtures import scheduler_records as build

HANG_GUARD_S = 30.0
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD_S))


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status), dict(resp.headers), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(get, url, **headers)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


@pytest.mark.integration
def test_the_http_endpoint_serves_metrics_discovery_and_health() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        host = replace(build.host("h1"), address="10.0.0.1:7070", metrics_address="10.0.0.1:9101")
        await store.commit([Put(host), Put(build.host_status("h1"))])
        metrics = SchedulerMetrics(publish_interval=0.01)
        server = httpd.serve("127.0.0.1:0", metrics)
        base = f"http://127.0.0.1:{server.port}"
        try:
            # Before the cluster was read: discovery answers 503 (Prometheus then keeps its targets).
            code, _, body = await fetch(f"{base}/http_sd")
            assert (code, body) == (503, b"the scheduler has not read the cluster from etcd yet\n")
            code, headers, body = await fetch(f"{base}/metrics")
            assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert b"\nshoal_scheduler_leader 0.0\n" in body
            assert (await fetch(f"{base}/healthz"))[::2] == (200, b"ok\n")
            assert (await fetch(f"{base}/nope"))[0] == 404
            code, _, body = await fetch(f"{base}/http_sd?kind=pods")
            assert (code, body) == (400, b"kind must be one of agent, replica\n")
            assert (await fetch(f"{base}/http_sd?kind=agent&kind=replica"))[0] == 400

            metrics.watch(store=store, leader=lambda: None)
            await until(lambda: _ok(f"{base}/http_sd"), "discovery loaded")
            code, headers, body = await fetch(f"{base}/http_sd")
            assert headers["Content-Type"] == "application/json"
            groups = json.loads(body)
            assert groups == metrics.http_sd()
            assert [g["targets"] for g in groups] == [["10.0.0.1:9101"]]
            assert json.loads((await fetch(f"{base}/http_sd?kind=agent"))[2]) == groups
            assert json.loads((await fetch(f"{base}/http_sd?kind=replica"))[2]) == []

            # What Prometheus asks for: OpenMetrics, gzipped.
            code, headers, body = await fetch(
                f"{base}/metrics", Accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
                **{"Accept-Encoding": "gzip"})
            assert code == 200 and headers["Content-Type"].startswith(OPENMETRICS)
            assert headers["Content-Encoding"] == "gzip"
            text = gzip.decompress(body).decode()
            assert text.endswith("# EOF\n")
            names = {f.name for f in text_string_to_metric_families(text.replace("# EOF\n", ""))}
            assert {"shoal_hosts", "shoal_host_ready", "shoal_scheduler_leader"} <= names

            # ?name[]=: only those samples (a poller waiting for one counter does not pay for the page).
            code, _, body = await fetch(f"{base}/metrics?name[]=shoal_scheduler_leader"
                                        "&name[]=shoal_host_ready")
            assert code == 200
            samples = {(s.name, tuple(sorted(s.labels.items())))
                       for f in text_string_to_metric_families(body.decode()) for s in f.samples}
            assert samples == {("shoal_scheduler_leader", ()),
                               ("shoal_host_ready", (("host", "h1"), ("host_id", "h1")))}, samples
            assert (await fetch(f"{base}/metrics?name[]=no_such_metric"))[::2] == (200, b"")
        finally:
            server.close()
            await metrics.close()
        with pytest.raises(OSError):
            await fetch(f"{base}/healthz")

    run(scenario)


async def _ok(url: str) -> bool:
    return (await fetch(url))[0] == 200


@pytest.mark.integration
@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:http", "::1:9000", "127.0.0.1:70000", ":9000"])
def test_bad_listen_addresses_are_refused(address: str) -> None:
    with pytest.raises(SystemExit, match="invalid --http-listen"):
        httpd.serve(address, SchedulerMetrics())


@pytest.mark.integration
def test_the_endpoint_never_asks_dns_for_its_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """http.server names itself with socket.getfqdn(): a reverse lookup that stalls start-up by 10 s where
    a nameserver is routed to but silent."""
    def no_dns(*args: object) -> str:
        raise AssertionError(f"socket.getfqdn{args}: a DNS lookup while starting the HTTP endpoint")

    monkeypatch.setattr(socket, "getfqdn", no_dns)
    server = httpd.serve("127.0.0.1:0", SchedulerMetrics())
    server.close()


@pytest.mark.integration
def test_a_taken_port_is_refused_with_the_reason() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot serve HTTP on 127.0.0.1:{port}: Address already in"):
            httpd.serve(f"127.0.0.1:{port}", SchedulerMetrics())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.integration
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_serves_on_ipv6() -> None:
    server = httpd.serve("[::1]:0", SchedulerMetrics())
    try:
        assert get(f"http://[::1]:{server.port}/healthz")[::2] == (200, b"ok\n")
    finally:
        server.close()


# -- the API interceptor ------------------------------------------------------------------------------

@pytest.mark.integration
def test_the_interceptor_times_api_calls_by_method_and_final_code(tmp_path: Any) -> None:
    async def scenario() -> None:
        metrics = SchedulerMetrics()
        store = MemoryStore()
        server = grpc.aio.server(interceptors=[metrics.interceptor()])
        add_services(server, store=store, profile=registry.default_profile())
        address = f"unix://{tmp_path / 'api.sock'}"
        server.add_insecure_port(address)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                api = spb_grpc.SchedulerStub(channel)
                await api.ListServices(spb.ListServicesRequest())
                await api.ListServices(spb.ListServicesRequest())
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await api.GetService(spb.GetServiceRequest(name="missing"))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                # A stream: timed over its life, and its end (the client cancelling) is its code.
                watch = api.Watch(spb.WatchRequest(kinds=["service"], after_revision=store.revision))
                await store.commit([Put(build.service("web"))])
                event = await watch.read()
                assert event.name == "web"
                watch.cancel()
            await until(lambda: _counted(metrics, "Watch"), "the watch counted")
        finally:
            await server.stop(grace=None)
        counts = _counts(metrics)
        prefix = "/shoal.scheduler.v1.Scheduler/"
        assert counts == {(prefix + "ListServices", "OK"): 2, (prefix + "GetService", "NOT_FOUND"): 1,
                          (prefix + "Watch", "CANCELLED"): 1}
        with contextlib.suppress(FileNotFoundError):
            (tmp_path / "api.sock").unlink()

    run(scenario)


def _counts(metrics: SchedulerMetrics) -> dict[tuple[str, str], float]:
    for family in metrics.registry.collect():
        if family.name == "shoal_scheduler_rpc_duration_seconds":
            return {(s.labels["method"], s.labels["code"]): s.value
                    for s in family.samples if s.name.endswith("_count")}
    return {}


async def _counted(metrics: SchedulerMetrics, method: str) -> bool:
    return any(m.endswith("/" + method) for m, _ in _counts(metrics))
