"""bench/scale.py reads an instance's counters with ``/metrics?name[]=``: only what it asks for comes
back, and the figures are the instance's (scheduler/httpd.py on loopback)."""

from __future__ import annotations

import urllib.parse
import urllib.request

import pytest

from bench import scale
from scheduler import httpd
from scheduler.metrics import SchedulerMetrics


@pytest.mark.integration
def test_the_benchmark_reads_one_counter_without_the_whole_page() -> None:
    metrics = SchedulerMetrics()
    server = httpd.serve("127.0.0.1:0", metrics)
    address = f"127.0.0.1:{server.port}"
    try:
        for seconds in (0.5, 1.5):
            metrics.reconcile.observe(seconds)
        name = scale.WATCHED_METRICS[0]
        assert scale.scrape_counter(address, name) == {"": 2.0}
        url = scale.metrics_url(address, [name, "shoal_scheduler_leader"])
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query) == {
            "name[]": [name, "shoal_scheduler_leader"]}
        with urllib.request.urlopen(scale.metrics_url(address, [name]), timeout=5) as reply:
            page = reply.read().decode()
        assert [line for line in page.splitlines() if not line.startswith("#")] == [f"{name} 2.0"]
        watched = scale.scrape(address)
        assert (watched[scale.WATCHED_METRICS[0]], watched[scale.WATCHED_METRICS[1]]) == (2.0, 2.0)
    finally:
        server.close()
