"""Batch placement speed: ``place`` of N replicas of one service on H hosts, and many services in a row.

* ``batch``: for N in ``--replicas`` (100, 1,000, 10,000) and H in ``--hosts`` (10, 100, 1,000, 5,000),
  one ``place`` call of N replicas of one service on a freshly built view, for three services:
  ``spread`` (least allocated), ``binpack`` (most allocated) and ``zones`` (spread with topology spread
  over 3 zones, max skew 1). Hosts are sized so every replica fits with room to spare (4 cpus and
  16 GiB at least, more when N replicas of 0.25 cpu / 128 MiB need it), so every replica is placed and
  the figure is the cost of placing, not of finding nothing. ``view`` is the time to build the view
  from host records and statuses (once per reconcile pass in the scheduler, not per batch);
  ``explain`` is the time to rebuild every host's verdict for the last replica.
* ``services``: issue 15's shape: 100,000 replicas on 5,000 hosts, as S services of N replicas each
  (100 x 1,000 and 1,000 x 100), one ``place`` call per service on one view (the reconcile loop keeps a
  view for a pass), zones and images varying by service, spread; and the shape of a mass failure's
  replacements (100 hosts of 20 replicas lost: 400 services x 5 on 2,000 hosts, 1,000 x 2 on 5,000).
  Each shape twice, side by side: every host looked at, and a sample (``scheduler.placement.sampling``,
  the scheduler's default). Reported: the whole time including the view, replicas per second, and how
  evenly they went: the fewest and most replicas on a host, and the most of one service on one host.
* ``memory``: peak Python allocation (tracemalloc) of one 10,000-on-5,000 batch, history included.

Timings are the median of ``--rounds`` runs (best in parentheses); each run builds its view afresh.
``cpu`` is the process's cpu time for the same call (``time.process_time``): placement is one thread of
pure Python, so on a shared machine that is its cost without the time other processes took the core.
``batch`` cells use the scheduler's default profile (a run of 100 on 1,000 or 5,000 hosts is sampled).
``python bench/placement.py [--rounds 5] [--out FILE]``; prints a table and writes JSON (machine, load
average, source revision, every sample) to ``bench/results/placement-<time>.json``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scheduler import model  # noqa: E402
from scheduler.model import HostId, ReplicaId, ServiceName, Strategy  # noqa: E402
from scheduler.placement import batch, registry, sampling, view  # noqa: E402
from scheduler.placement.framework import PlacementRequest  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
REPLICA_CPU = 250
REPLICA_MEMORY = 128 * MiB
ZONES = ("a", "b", "c")
# (services, replicas each, hosts): issue 15's 100,000 replicas two ways, then a mass failure's
# replacements (100 hosts of 20 replicas each lost) at 2,000 and 5,000 hosts.
SERVICE_SHAPES = ((100, 1000, 5000), (1000, 100, 5000), (400, 5, 2000), (1000, 2, 5000))


def hosts_for(n_hosts: int, n_replicas: int) -> list[model.HostRecord]:
    per_host = -(-n_replicas // n_hosts) * 2  # twice the even share: room to spare for any strategy
    cpu = max(4000, per_host * REPLICA_CPU)
    memory = max(16 * GiB, per_host * REPLICA_MEMORY)
    return [model.HostRecord(
        id=HostId(f"host-{i:05d}"), name=f"node-{i:05d}", address=f"10.0.{i // 250}.{i % 250}:7443",
        labels=(("zone", ZONES[i % len(ZONES)]),),
        capacity=model.Capacity(cpu_allocatable_millis=cpu, memory_allocatable_bytes=memory))
        for i in range(n_hosts)]


def service(name: str, *, strategy: Strategy = Strategy.SPREAD, zones: bool = False,
            image: str = "registry.example:5000/team/web:1.4") -> model.Service:
    facts = model.TemplateFacts(image=image, cpu_millis=REPLICA_CPU, memory_bytes=REPLICA_MEMORY)
    placement = model.Placement(strategy=strategy,
                                topology_spread=model.TopologySpread("zone", 1) if zones else None)
    return model.Service(spec=model.ServiceSpec(name=ServiceName(name), replicas=0, template_json="{}",
                                                facts=facts, placement=placement))


def requests(svc: model.Service, n: int) -> list[PlacementRequest]:
    return [PlacementRequest(replica=ReplicaId(f"{svc.name}-{i:06d}"), service=svc.name,
                             facts=svc.spec.facts, placement=svc.spec.placement) for i in range(n)]


def build(records: list[model.HostRecord], services: list[model.Service]) -> view.ClusterView:
    return view.build_view(hosts=records, statuses=[model.HostStatus(r.id, ready=True) for r in records],
                           replicas=[], services=services)


SCENARIOS: dict[str, Callable[[], model.Service]] = {
    "spread": lambda: service("web"),
    "binpack": lambda: service("web", strategy=Strategy.BINPACK),
    "zones": lambda: service("web", zones=True),
}


def bench_batch(n_replicas: int, n_hosts: int, scenario: str, rounds: int) -> dict[str, Any]:
    profile = registry.default_profile()
    records = hosts_for(n_hosts, n_replicas)
    samples: dict[str, list[float]] = {"view": [], "place": [], "place_cpu": [], "explain": []}
    placed = 0
    for _ in range(rounds):
        svc = SCENARIOS[scenario]()
        reqs = requests(svc, n_replicas)
        start = time.perf_counter()
        cluster = build(records, [svc])
        built = time.perf_counter()
        cpu = time.process_time()
        result = batch.place(reqs, cluster, profile)
        samples["place_cpu"].append(time.process_time() - cpu)
        placed_at = time.perf_counter()
        result.verdicts(reqs[-1].replica)
        explained = time.perf_counter()
        samples["view"].append(built - start)
        samples["place"].append(placed_at - built)
        samples["explain"].append(explained - placed_at)
        placed = len(result.placed)
    assert placed == n_replicas, f"{scenario} {n_replicas} on {n_hosts}: only {placed} placed"
    return {"replicas": n_replicas, "hosts": n_hosts, "scenario": scenario, "placed": placed,
            "samples": samples}


def bench_services(n_services: int, per_service: int, n_hosts: int, *, sampled: bool) -> dict[str, Any]:
    profile = registry.default_profile()
    if not sampled:
        profile = dataclasses.replace(profile, sampling=sampling.EVERY_HOST)
    records = hosts_for(n_hosts, n_services * per_service)
    services = [service(f"svc-{k:04d}", zones=k % 2 == 0, image=f"registry.example:5000/team/app-{k}:1")
                for k in range(n_services)]
    start, cpu = time.perf_counter(), time.process_time()
    cluster = build(records, services)
    view_seconds = time.perf_counter() - start
    placed = 0
    per_host: collections.Counter[str] = collections.Counter()
    most_of_one = 0  # the most replicas of one service on one host
    for svc in services:
        hosts = list(batch.place(requests(svc, per_service), cluster, profile).placed.values())
        placed += len(hosts)
        per_host.update(hosts)
        most_of_one = max(most_of_one, *collections.Counter(hosts).values())
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    assert placed == n_services * per_service
    loads = [per_host.get(r.id, 0) for r in records]
    return {"services": n_services, "per_service": per_service, "hosts": n_hosts, "placed": placed,
            "sampled": sampled, "view_seconds": view_seconds, "total_seconds": total,
            "total_cpu_seconds": total_cpu, "replicas_per_host_min": min(loads),
            "replicas_per_host_max": max(loads), "most_of_one_service_on_a_host": most_of_one}


def bench_memory() -> dict[str, Any]:
    records = hosts_for(5000, 10_000)
    svc = service("web", zones=True)
    cluster = build(records, [svc])
    tracemalloc.start()
    result = batch.place(requests(svc, 10_000), cluster, registry.default_profile())
    current, peak = tracemalloc.get_traced_memory()  # current: what the result and the view keep
    tracemalloc.stop()
    assert len(result.placed) == 10_000
    return {"peak_bytes": peak, "retained_bytes": current}


def machine() -> dict[str, str]:
    model_name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        revision = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    return {"cpu": model_name, "cpus": str(os.cpu_count()), "python": platform.python_version(),
            "kernel": platform.release(), "source": revision}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="runs per cell (default %(default)s)")
    parser.add_argument("--replicas", default="100,1000,10000", help="batch sizes (default %(default)s)")
    parser.add_argument("--hosts", default="10,100,1000,5000", help="cluster sizes (default %(default)s)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="default %(default)s")
    parser.add_argument("--no-services", action="store_true", help="skip the 100,000-replica runs")
    parser.add_argument("--out", type=Path, help="JSON result file")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    cells = []
    print(f"{'scenario':8} {'replicas':>8} {'hosts':>6} {'view ms':>8} {'place ms':>16} {'cpu ms':>7} "
          f"{'replicas/s':>10} {'(cpu)':>7} {'explain ms':>10}")
    for scenario in args.scenarios.split(","):
        for n_replicas in (int(x) for x in args.replicas.split(",")):
            for n_hosts in (int(x) for x in args.hosts.split(",")):
                cell = bench_batch(n_replicas, n_hosts, scenario, args.rounds)
                cells.append(cell)
                s = cell["samples"]
                place = statistics.median(s["place"])
                place_cpu = statistics.median(s["place_cpu"])
                print(f"{scenario:8} {n_replicas:8d} {n_hosts:6d} {ms(statistics.median(s['view'])):>8} "
                      f"{ms(place):>8} ({ms(min(s['place']))}) {ms(place_cpu):>7} {n_replicas / place:10.0f} "
                      f"{n_replicas / place_cpu:7.0f} {ms(statistics.median(s['explain'])):>10}", flush=True)
    services = []
    if not args.no_services:
        for (n_services, per_service, n_hosts), sampled in itertools.product(SERVICE_SHAPES, (False, True)):
            run = bench_services(n_services, per_service, n_hosts, sampled=sampled)
            services.append(run)
            looked = "a sample" if sampled else "every host"
            print(f"{n_services} services x {per_service} replicas on {n_hosts} hosts, {looked}: view "
                  f"{ms(run['view_seconds'])} ms, all {run['total_seconds']:.2f} s "
                  f"(cpu {run['total_cpu_seconds']:.2f} s), {run['placed'] / run['total_seconds']:.0f} "
                  f"replicas/s ({run['placed'] / run['total_cpu_seconds']:.0f} by cpu time); "
                  f"replicas per host {run['replicas_per_host_min']}-{run['replicas_per_host_max']}, at most "
                  f"{run['most_of_one_service_on_a_host']} of a service on a host", flush=True)
    memory = bench_memory()
    print(f"memory, 10,000 replicas on 5,000 hosts (zones): peak {memory['peak_bytes'] / MiB:.1f} MiB, "
          f"kept with the result {memory['retained_bytes'] / MiB:.1f} MiB")
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")

    out = args.out or REPO / "bench" / "results" / f"placement-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "load_before": load_before, "load_after": load_after,
                               "rounds": args.rounds, "batches": cells, "services": services,
                               "memory": memory}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
