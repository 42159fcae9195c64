"""Autoscaling: from a load step to the autoscaler's decision, and to the new replicas running and ready.

Issue 11's goals: the decision within 2 s of the load step, the new replicas running within 3 s
(Kubernetes' HPA takes 15 to 45 s for the decision alone: a 15 s sync period on metrics 15 to 60 s old).

One invocation sets up, in a temp dir and in network namespaces it creates (``tests.fixtures.netns``;
nothing in the root network namespace), a Shoal cluster (``bench.cluster_shoal``: a control host with
etcd and one ``shoal-scheduler serve --prometheus URL --autoscale-interval 1``, and ``--hosts`` agent
hosts joined to it, mutual TLS as in production) and, on the control host, the queue's metrics
(``tests.fixtures.promstack``: an ``Exporter`` serving ``bench_queue_depth`` from a socket inside the
namespace, and Debian's ``prometheus`` scraping it every second). Every replica runs the busybox image
imported on every host beforehand (no pulls).

Scenarios, each on a service of its own, repeated ``--reps`` times, every wait bounded by ``--timeout``:

* **queue** — a service-level Prometheus metric. ``min 1, max 8``, metric ``sum(bench_queue_depth)``
  with a target average of 2 per replica, a 5 s scale-down window (100 % per second). The queue's depth
  is 2: one replica, settled. **Step:** the exporter's depth becomes 10 at t0, which calls for
  ceil(10 / 2) = 5 replicas. The path: Prometheus' next scrape (every 1 s), the autoscaler's next tick
  (every 1 s, querying Prometheus), the write of the new count, placement and the containers' start.
* **cpu** — the agents' own usage. A service with a 50 % cpu target, each replica requesting (and
  limited to) 0.1 cpu, ``min`` = ``--cpu-replicas`` (2) replicas, each running a loop that sleeps
  (0.2 s at a time) while ``/tmp/load`` is absent and spins while it is there. **Step:** ``shoal exec
  REPLICA touch /tmp/load`` in every replica at once (whole CLI processes, through each host's agent);
  t0 is when the last exec returned (their own duration is recorded apart as ``exec_s``). Each replica
  then burns its whole request, 200 % of the target, which calls for twice the replicas (one more when
  the kernel lets the burners overrun their quota by 1 % or more, which it often does). The path: the
  agents' next 1 s usage sample (the first may cover only part of the load), the autoscaler's next
  tick, the write, placement and start. The load really starts while the execs run, before t0:
  ``onset_s`` (negative) is when the containers' cpu, read from the kernel every 0.2 s
  (``bench.cgroup_cpu``), first rose by half the step.

**Clock.** ``decision_s``: from t0 to the moment the benchmark sees the service's declared count change
(a ``Watch`` on the service, ``bench.service_watch``: the etcd commit, within a millisecond).
``running_s``: from t0 to the moment the count the step calls for (queue 5, cpu twice the base) is
running and ready, and so is every replica the service then declares. Also recorded per
rep: ``tick_s``, when the autoscaler decided (the decision's own time, from ``GetAutoscaleStatus``); for
the queue ``scrape_s``, when Prometheus first scraped the new depth (the sample's timestamp); the
decision's reason; every count declared on the way. Then the step down (depth 2 / ``rm /tmp/load``),
timed too: ``down_s`` until the service is back at its base count with no other replica left (the 5 s
scale-down window is most of it). Before each step the service must be settled at its base count, and
the previous step up must be older than HPA's default scale-up period (15 s): within it the "4 replicas
or 100 % per 15 s" policy counts the previous scale-up and allows none. Each step then waits a random
0 to 1 s more (``--seed``), so that the reps fall at every phase of the 1 s scrape, usage and tick
intervals rather than all at the one the previous decision's tick set.

Run as root, from the repository root, with the project's venv::

    .venv/bin/python bench/autoscale.py [--reps 10] [--hosts 3] [--scenarios queue,cpu] \\
        [--out bench/results/autoscale.json] [--plot docs/img/autoscale.png]

It prints a table (p50/p99/max of decision and running per scenario) and writes JSON (machine, load
average, the path's intervals, every rep, and per scenario the timeline of one rep — the one whose
``running_s`` is nearest the median: load, declared and ready replicas over time); ``--plot`` draws the
timelines (``bench.autoscale_plot``). Tear-down (also after an error or ^C) stops every process it
started and removes every container, mount, cgroup, namespace and file it created.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `proto`, `scheduler` and `tests` importable
    sys.path.insert(0, str(REPO))

from bench.cgroup_cpu import CpuMeter  # noqa: E402
from bench.cluster_daemon import dispose, run_checked, wait_for  # noqa: E402
from bench.cluster_peer import Workload  # noqa: E402
from bench.cluster_scale import COMMAND, build_image, machine, write_result  # noqa: E402
from bench.cluster_shoal import BIN, ShoalCluster  # noqa: E402
from bench.failover import stats  # noqa: E402
from bench.service_watch import Point, ServiceWatch  # noqa: E402
from proto.scheduler.v1 import scheduler_pb2 as spb  # noqa: E402
from scheduler.model import default_scale_up  # noqa: E402
from tests.fixtures.netns import NetWorld  # noqa: E402
from tests.fixtures.promstack import PROMETHEUS_PORT, Exporter, PrometheusServer  # noqa: E402

SCENARIOS = ("queue", "cpu")
QUEUE_METRIC = "bench_queue_depth"
QUEUE_TARGET = 2  # target average value per replica
QUEUE_BASE = 2  # the depth before and after the step: 1 replica
QUEUE_STEP = 10  # the depth at the step: ceil(10 / 2) = 5 replicas
CPU_REQUEST = 0.1  # request = limit, cpus
CPU_TARGET = 50  # percent of the request
# Sleeps while /tmp/load is absent, spins while it is there; exits at once on SIGTERM (it is pid 1). Each
# sleep is a fork and exec: at 0.05 s an idle replica used 20 % of its request (enough, beside two burning
# ones, to ask for 6 replicas instead of 4); at 0.2 s it uses about 2 %.
BURN = "trap 'exit 0' TERM; while :; do if [ -e /tmp/load ]; then :; else sleep 0.2; fi; done"
SCALE_DOWN = (
    "scale_down: {stabilization_window_seconds: 5, select_policy: max, "
    "policies: [{type: percent, value: 100, period_seconds: 1}]}"
)
# HPA's default scale-up policies count the scale-ups of their period (15 s): a step within it gets none.
UP_PERIOD = max(p.period_seconds for p in default_scale_up().policies)
USAGE_INTERVAL = 1.0  # the agents' usage sampler (agent/usage/sampler.py), not a flag
LEAD_IN = 2.0  # seconds of timeline kept before each step


@dataclass(frozen=True)
class Scenario:
    name: str
    service: str
    base: int  # replicas before the step (and after the step down)
    # The replicas the step calls for. The cpu step asks for 2 x base at exactly 100 % of the request,
    # one more at 101 % or above (the kernel lets a burning replica overrun its 0.1 cpu quota by a few
    # per cent, so both happen): "running" is this many, and every replica then declared, running and ready.
    target: int
    service_file: str
    load_unit: str
    load_per_replica: float  # the load one replica is sized for (the target): load / this = replicas


@dataclass
class Rep:
    scenario: str
    rep: int
    base: int
    target: int
    exec_s: float | None = None  # cpu: the execs that start the load, spawn to the last one's exit
    onset_s: float | None = None  # cpu: t0 → the containers using half the step's cpu (negative: before)
    scrape_s: float | None = None  # queue: t0 → Prometheus' first sample of the new depth
    tick_s: float | None = None  # t0 → the autoscaler's decision (its own time)
    decision_s: float | None = None  # t0 → the declared count seen changed (Watch)
    running_s: float | None = None  # t0 → `target` replicas, and all declared, running and ready
    down_s: float | None = None  # step down → back at `base`, no other replica left
    declared: list[int] = field(default_factory=list)  # every count declared from t0 to the step down
    reason: str = ""  # the autoscaler's reason for the first change
    error: str = ""


@dataclass(frozen=True)
class Options:
    reps: int
    timeout: float
    settle: float
    hold: float
    rng: random.Random  # the random part of each step's time (see ``run_rep``)


@dataclass
class Rig:
    """What the scenarios act on: the cluster, the queue's exporter and Prometheus, the cpu meter."""

    cluster: ShoalCluster
    exporter: Exporter
    prometheus: PrometheusServer
    meter: CpuMeter
    agents: dict[str, int]  # host id → agent number (its socket)
    queue_load: list[tuple[float, float]] = field(default_factory=list)  # (perf_counter, depth) set

    def set_depth(self, depth: float) -> float:
        """Set the queue's depth; returns the perf_counter time it was set."""
        self.exporter.set(QUEUE_METRIC, depth)
        now = time.perf_counter()
        self.queue_load.append((now, depth))
        return now

    def prometheus_get(self, path: str, **params: str) -> Any:
        """One GET of Prometheus' HTTP API, from inside the control host (nothing listens outside it)."""
        url = f"{self.prometheus.url}{path}?{urlencode(params)}"
        script = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).read().decode())"
        out = run_checked([*self.cluster.control.nsenter_net, sys.executable, "-c", script, url], timeout=15)
        body = json.loads(out)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        return body["data"]

    def queue_value(self) -> float | None:
        result = self.prometheus_get("/api/v1/query", query=f"sum({QUEUE_METRIC})")["result"]
        return float(result[0]["value"][1]) if result else None


# -- the services -----------------------------------------------------------------------------------------


def service_yaml(*, name: str, image: str, command: str, cpus_request: float, replicas: int,
                 autoscale: str) -> str:
    return f"""name: {name}
replicas: {replicas}
template:
  image: {image}
  command: ["sh", "-c", {json.dumps(command)}]
  restart: always
  resources: {{cpus: {CPU_REQUEST}, cpus_request: {cpus_request}, memory: 16M}}
placement: {{strategy: spread}}
autoscale:
{autoscale}"""


def queue_scenario(image: str) -> Scenario:
    autoscale = f"""  min: 1
  max: 8
  metrics:
    - prometheus: {{query: 'sum({QUEUE_METRIC})', target_average_value: {QUEUE_TARGET}}}
  behavior:
    {SCALE_DOWN}
"""
    base = math.ceil(QUEUE_BASE / QUEUE_TARGET)
    return Scenario(
        name="queue",
        service="queue",
        base=base,
        target=math.ceil(QUEUE_STEP / QUEUE_TARGET),
        service_file=service_yaml(name="queue", image=image, command=COMMAND[2],
                                  cpus_request=0.01, replicas=base, autoscale=autoscale),
        load_unit="queue depth",
        load_per_replica=QUEUE_TARGET,
    )


def cpu_scenario(image: str, replicas: int) -> Scenario:
    autoscale = f"""  min: {replicas}
  max: 8
  metrics:
    - cpu: {{target_utilization_percent: {CPU_TARGET}}}
  behavior:
    {SCALE_DOWN}
"""
    return Scenario(
        name="cpu",
        service="burner",
        base=replicas,
        target=math.ceil(replicas * 100 / CPU_TARGET),  # each burns its whole request: 100 % of it
        service_file=service_yaml(name="burner", image=image, command=BURN, cpus_request=CPU_REQUEST,
                                  replicas=replicas, autoscale=autoscale),
        load_unit="cpu cores used",
        load_per_replica=CPU_REQUEST * CPU_TARGET / 100,
    )


# -- the steps --------------------------------------------------------------------------------------------


def running_replicas(rig: Rig, service: str) -> list[spb.Replica]:
    replicas = rig.cluster.stub().ListReplicas(spb.ListReplicasRequest(service=service), timeout=10).replicas
    return [r for r in replicas if r.state == spb.REPLICA_STATE_RUNNING]


def exec_in_replicas(rig: Rig, replicas: list[spb.Replica], argv: list[str]) -> tuple[float, float]:
    """Run ``argv`` in these replicas at once, each through its host's agent (a ``shoal exec`` process);
    returns (perf_counter when the last one returned, seconds they took)."""
    if not replicas:
        raise RuntimeError("no running replica to exec in")
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [str(BIN / "shoal"), "--agent", f"unix://{rig.cluster.agent_socket(rig.agents[r.host])}",
             "exec", r.id, *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for r in replicas
    ]
    failed = []
    for r, proc in zip(replicas, procs, strict=True):
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            failed.append(f"{r.id}: exit {proc.returncode}: {err.decode(errors='replace').strip()[-200:]}")
    done = time.perf_counter()
    if failed:
        raise RuntimeError(f"exec {' '.join(argv)}: " + "; ".join(failed))
    return done, done - started


def step_up(rig: Rig, scenario: Scenario, rep: Rep) -> tuple[float, list[spb.Replica]]:
    """Apply the load step; returns t0 (perf_counter) and the replicas made to burn."""
    if scenario.name == "queue":
        return rig.set_depth(QUEUE_STEP), []
    burning = running_replicas(rig, scenario.service)
    t0, rep.exec_s = exec_in_replicas(rig, burning, ["touch", "/tmp/load"])
    return t0, burning


def step_down(rig: Rig, scenario: Scenario, burning: list[spb.Replica]) -> float:
    """Remove the load; returns the perf_counter time it was gone."""
    if scenario.name == "queue":
        return rig.set_depth(QUEUE_BASE)
    # Only in the burning replicas: an exec's helper runs in the container's cgroup, and in an idle replica
    # its cpu (a Python process starting) is enough for one more replica (seen: 4 -> 5 after the step down).
    return exec_in_replicas(rig, burning, ["rm", "-f", "/tmp/load"])[0]


# -- one rep ----------------------------------------------------------------------------------------------


def settled(scenario: Scenario) -> Callable[[Point], bool]:
    base = scenario.base
    return lambda p: p.declared == base and p.replicas == base and p.ready == base


def run_rep(rig: Rig, watch: ServiceWatch, scenario: Scenario, r: int, options: Options,
            not_before: float) -> tuple[Rep, dict[str, Any] | None]:
    """One step up and down; returns the rep and its timeline (None when it failed before the step)."""
    rep = Rep(scenario.name, r, scenario.base, scenario.target)
    if watch.wait_until(settled(scenario), since=time.perf_counter(), timeout=options.timeout) is None:
        rep.error = f"not settled at {scenario.base} replicas after {options.timeout:.0f} s: {watch.last}"
        return rep, None
    # Each rep's wait is timed from the previous decision, which the autoscaler's tick grid places; without
    # a random delay every step would land at the same phase of the 1 s scrape, sample and tick intervals,
    # and ten reps would measure one phase ten times. One interval's worth of jitter samples them all.
    time.sleep(max(options.settle, not_before - time.perf_counter()) + options.rng.uniform(0.0, 1.0))
    t0, burning = step_up(rig, scenario, rep)
    wall0 = time.time() - (time.perf_counter() - t0)  # t0 on the wall clock the scheduler stamps with
    spawned = t0 - (rep.exec_s or 0.0)  # cpu: the load starts while the execs run, before t0
    changed = watch.wait_until(lambda p: p.declared != scenario.base, since=spawned, timeout=options.timeout)
    if changed is not None:
        rep.decision_s = changed.t - t0
    running = watch.wait_until(lambda p: p.ready >= max(scenario.target, p.declared), since=spawned,
                               timeout=options.timeout)
    if running is not None:
        rep.running_s = running.t - t0
    elif changed is None:
        rep.error = f"no decision within {options.timeout:.0f} s"
    else:
        rep.error = f"{scenario.target} not running and ready within {options.timeout:.0f} s: {watch.last}"
    time.sleep(options.hold)
    t_down = step_down(rig, scenario, burning)
    rep.declared = _declared_counts(watch.between(t0, t_down))
    back = watch.wait_until(settled(scenario), since=t_down, timeout=options.timeout)
    if back is not None:
        rep.down_s = back.t - t_down
    else:
        rep.error = rep.error or f"not back at {scenario.base} within {options.timeout:.0f} s: {watch.last}"
    _explain(rig, scenario, rep, wall0)
    if scenario.name == "cpu":
        rep.onset_s = _onset(rig.meter, scenario, spawned=spawned, t0=t0)
    end = (back.t if back is not None else time.perf_counter()) + 1.0
    time.sleep(max(0.0, end - time.perf_counter()))
    return rep, _timeline(rig, watch, scenario, t0, start=t0 - LEAD_IN, end=end, t_down=t_down)


def _declared_counts(points: list[Point]) -> list[int]:
    counts: list[int] = []
    for point in points:
        if not counts or counts[-1] != point.declared:
            counts.append(point.declared)
    return counts


def _explain(rig: Rig, scenario: Scenario, rep: Rep, wall0: float) -> None:
    """Where the time went, from the scheduler's record and Prometheus' samples (never fails the rep)."""
    try:
        request = spb.GetServiceRequest(name=scenario.service)
        status = rig.cluster.stub().GetAutoscaleStatus(request, timeout=10)
        for decision in status.decisions:
            at = decision.time.seconds + decision.time.nanos / 1e9
            # From the start of the cpu step's execs: the load begins while they run.
            if at >= wall0 - (rep.exec_s or 0.0) and decision.desired_replicas != decision.current_replicas:
                rep.tick_s = at - wall0
                rep.reason = decision.reason
                break
    except Exception as err:
        rep.error = rep.error or f"GetAutoscaleStatus: {str(err)[:200]}"
    if scenario.name != "queue":
        return
    try:
        data = rig.prometheus_get("/api/v1/query", query=f"{QUEUE_METRIC}[60s]", time=f"{time.time():.3f}")
        samples = [(float(ts), float(v)) for series in data["result"] for ts, v in series["values"]]
        # A scrape stamped just before t0 may already have read the new depth (stamped at its start).
        first = min((ts for ts, v in samples if v == QUEUE_STEP and ts >= wall0 - 0.1), default=None)
        if first is not None:
            rep.scrape_s = max(0.0, first - wall0)
    except Exception as err:
        rep.error = rep.error or f"prometheus samples: {str(err)[:200]}"


def _onset(meter: CpuMeter, scenario: Scenario, *, spawned: float, t0: float) -> float | None:
    """When the containers' cpu rose by half the step (``base`` replicas burning their whole request),
    from the kernel's counters: the end of the first meter interval that shows it, in seconds from t0."""
    before = [cores for _, cores in meter.between(spawned - LEAD_IN, spawned)]
    if not before:
        return None
    threshold = sum(before) / len(before) + 0.5 * scenario.base * CPU_REQUEST
    return next((t - t0 for t, cores in meter.between(spawned, t0 + 10) if cores >= threshold), None)


def _timeline(rig: Rig, watch: ServiceWatch, scenario: Scenario, t0: float, *, start: float, end: float,
              t_down: float) -> dict[str, Any]:
    """The rep's load, declared and ready replicas over [start, end], in seconds from t0."""

    def rel(t: float) -> float:
        return round(t - t0, 4)

    if scenario.name == "queue":
        before = [v for t, v in rig.queue_load if t < start]
        load = ([(rel(start), before[-1])] if before else []) + [
            (rel(t), v) for t, v in rig.queue_load if start <= t <= end
        ]
    else:
        load = [(rel(t), round(cores, 4)) for t, cores in rig.meter.between(start, end)]
    return {
        "step_down_s": rel(t_down),
        "load": load,
        "replicas": [
            {"t": rel(p.t), "declared": p.declared, "replicas": p.replicas, "running": p.running,
             "ready": p.ready}
            for p in watch.between(start, end)
        ],
    }


def run_scenario(rig: Rig, scenario: Scenario, options: Options) -> tuple[list[Rep], dict[str, Any]]:
    """Create the service, run the reps, delete it; returns the reps and the timeline of the median rep."""
    cluster = rig.cluster
    path = cluster.work / f"{scenario.service}.yaml"
    path.write_text(scenario.service_file)
    run_checked(cluster.cli("apply", "-f", str(path)))
    watch = ServiceWatch(cluster.stub(), scenario.service)
    reps: list[Rep] = []
    timelines: dict[int, dict[str, Any]] = {}
    try:
        not_before = 0.0
        for r in range(1, options.reps + 1):
            rep, timeline = run_rep(rig, watch, scenario, r, options, not_before)
            reps.append(rep)
            if timeline is not None:
                timelines[r] = timeline
            report(rep)
            if rep.decision_s is not None:  # the step-up's scale event must leave HPA's rate period
                not_before = time.perf_counter() + UP_PERIOD + 1.0
            if timeline is None:
                break  # never settled: the next rep would not either
        if watch.error:
            print(f"{scenario.name}: the watch broke and was reopened ({watch.error})", file=sys.stderr)
    finally:
        watch.close()
        cluster.remove(scenario.service)
        wait_for(f"{scenario.service} gone", lambda: cluster.gone(scenario.service), timeout=options.timeout,
                 interval=0.3)
    shown = median_rep(reps)
    chosen = (
        {"rep": shown.rep, **timelines[shown.rep]} if shown is not None and shown.rep in timelines else {}
    )
    return reps, {
        **chosen,
        "load_unit": scenario.load_unit,
        "load_per_replica": scenario.load_per_replica,
        "base": scenario.base,
        "target": scenario.target,
    }


def median_rep(reps: list[Rep]) -> Rep | None:
    done = sorted((r for r in reps if r.running_s is not None), key=lambda r: r.running_s or 0.0)
    return done[(len(done) - 1) // 2] if done else None


# -- results ----------------------------------------------------------------------------------------------


def report(rep: Rep) -> None:
    def s(value: float | None) -> str:
        return f"{value:.2f} s" if value is not None else "-"

    extra = (
        f", exec {s(rep.exec_s)}, load from {s(rep.onset_s)}" if rep.exec_s is not None
        else f", scrape {s(rep.scrape_s)}"
    )
    print(
        f"{rep.scenario:5} rep {rep.rep:2}: decision {s(rep.decision_s)} (tick {s(rep.tick_s)}{extra}), "
        f"running {s(rep.running_s)}, declared {'→'.join(map(str, rep.declared))}, down {s(rep.down_s)}"
        + (f" [{rep.error}]" if rep.error else ""),
        file=sys.stderr,
        flush=True,
    )


def summarize(reps: list[Rep]) -> list[dict[str, Any]]:
    rows = []
    for scenario in SCENARIOS:
        mine = [r for r in reps if r.scenario == scenario]
        if not mine:
            continue

        def of(name: str, reps: list[Rep] = mine) -> dict[str, float | None]:
            return stats([v for r in reps if (v := getattr(r, name)) is not None])

        rows.append(
            {
                "scenario": scenario,
                "reps": len(mine),
                "timed_out": sum(r.running_s is None for r in mine),
                "base": mine[0].base,
                "target": mine[0].target,
                "decision": of("decision_s"),
                "running": of("running_s"),
                "tick": of("tick_s"),
                "scrape": of("scrape_s"),
                "exec": of("exec_s"),
                "onset": of("onset_s"),
                # The phase between Prometheus' scrapes and the autoscaler's ticks: fixed for a run.
                "scrape_to_tick": stats(
                    [r.tick_s - r.scrape_s for r in mine if r.tick_s is not None and r.scrape_s is not None]
                ),
                "down": of("down_s"),
                "paths": sorted({"→".join(map(str, r.declared)) for r in mine}),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], path: dict[str, float]) -> None:
    def cell(value: float | None) -> str:
        return f"{value:6.2f}" if value is not None else f"{'-':>6}"

    print(
        f"{'scenario':8} {'step':>6} {'reps':>4} {'t/o':>3}  {'decision p50':>12} {'p99':>6} {'max':>6}"
        f"  {'running p50':>11} {'p99':>6} {'max':>6}  {'tick p50':>8}  {'down p50':>8}"
    )
    for row in rows:
        d, n = row["decision"], row["running"]
        print(
            f"{row['scenario']:8} {str(row['base']) + '→' + str(row['target']):>6} {row['reps']:>4} "
            f"{row['timed_out']:>3}  {cell(d['p50_s']):>12} {cell(d['p99_s'])} {cell(d['max_s'])}  "
            f"{cell(n['p50_s']):>11} {cell(n['p99_s'])} {cell(n['max_s'])}  {cell(row['tick']['p50_s']):>8}"
            f"  {cell(row['down']['p50_s']):>8}",
            flush=True,
        )
    print(
        "path: Prometheus scrapes every {scrape_interval_s:g} s, the agents sample usage every "
        "{usage_interval_s:g} s, the autoscaler decides every {autoscale_interval_s:g} s".format(**path),
        flush=True,
    )


# -- main -------------------------------------------------------------------------------------------------


def scrape_interval(prometheus: PrometheusServer) -> float:
    """The scrape interval the fixture configured (its prometheus.yml, beside its log)."""
    config = (prometheus.log.parent / "prometheus.yml").read_text()
    match = re.search(r"scrape_interval:\s*(\d+(?:\.\d+)?)(ms|s)", config)
    if match is None:
        raise RuntimeError(f"no scrape_interval in {prometheus.log.parent / 'prometheus.yml'}")
    return float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10, help="repetitions per scenario (default %(default)s)")
    parser.add_argument("--hosts", type=int, default=3, help="agent hosts (default %(default)s)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="default %(default)s")
    parser.add_argument("--cpu-replicas", type=int, default=2,
                        help="the cpu service's replicas before the step, and its min (default %(default)s)")
    parser.add_argument("--autoscale-interval", type=float, default=1.0,
                        help="the scheduler's --autoscale-interval, s (default %(default)s)")
    parser.add_argument("--scheduler-arg", action="append", default=[], metavar="ARG",
                        help="an extra flag for shoal-scheduler serve")
    parser.add_argument("--timeout", type=float, default=60.0, help="every wait, s (default %(default)s)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="quiet at the base count before each step, s (default %(default)s)")
    parser.add_argument("--hold", type=float, default=1.0,
                        help="time at the full count before the step down, s (default %(default)s)")
    parser.add_argument("--seed", type=int, default=11, help="of each step's random 0-1 s delay")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "autoscale.json")
    parser.add_argument("--plot", type=Path, help="also draw the timelines into this PNG")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dir (logs) at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (network namespaces, cgroups)")
    scenarios = args.scenarios.split(",")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    if args.reps < 1 or args.hosts < 1 or args.timeout <= 0:
        parser.error("--reps and --hosts must be at least 1, --timeout positive")
    if not 1 <= args.cpu_replicas <= 4:
        parser.error("--cpu-replicas must be 1 to 4 (the step doubles it; the service's max is 8)")
    options = Options(reps=args.reps, timeout=args.timeout, settle=args.settle, hold=args.hold,
                      rng=random.Random(args.seed))
    tag = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix=f"shoal-as-{tag}-", dir="/tmp"))
    load_before = os.getloadavg()
    print(f"working in {work} (tag {tag})", file=sys.stderr, flush=True)
    problems: list[str] = []
    reps: list[Rep] = []
    timelines: dict[str, dict[str, Any]] = {}
    setup: dict[str, float] = {}
    path: dict[str, float] = {
        "usage_interval_s": USAGE_INTERVAL,
        "autoscale_interval_s": args.autoscale_interval,
        "scale_up_period_s": UP_PERIOD,
    }
    interrupted = False
    with NetWorld() as world:
        cluster: ShoalCluster | None = None
        exporter: Exporter | None = None
        prometheus: PrometheusServer | None = None
        meter: CpuMeter | None = None
        try:
            image = build_image(work)
            control = world.add_host()
            cluster = ShoalCluster(
                work=work / "shoal",
                control=control,
                hosts=[world.add_host() for _ in range(args.hosts)],
                tag=tag,
                workload=Workload(command=COMMAND, cpus=CPU_REQUEST, cpus_request=CPU_REQUEST, memory_mib=16),
                scheduler_args=(
                    "--prometheus", f"http://{control.address}:{PROMETHEUS_PORT}",
                    "--autoscale-interval", str(args.autoscale_interval), *args.scheduler_arg,
                ),
            )
            setup = cluster.start(image)
            exporter = Exporter(control.name, str(control.address))
            prometheus = PrometheusServer(
                work / "prometheus", netns=control.name, address=str(control.address), scrape=exporter.address
            )
            path["scrape_interval_s"] = scrape_interval(prometheus)
            meter = CpuMeter([cluster.cgroup_parent(i) for i in range(1, args.hosts + 1)], interval=0.2)
            meter.start()
            rig = Rig(cluster, exporter, prometheus, meter,
                      agents={cluster.host_id(i): i for i in range(1, args.hosts + 1)})
            rig.set_depth(QUEUE_BASE)
            started = time.monotonic()
            wait_for("Prometheus to answer with the queue's depth",
                     lambda: rig.queue_value() == QUEUE_BASE, timeout=60, interval=0.5)
            setup["prometheus"] = time.monotonic() - started
            print("up: " + ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()), file=sys.stderr, flush=True)
            for name in scenarios:
                scenario = queue_scenario(cluster.image) if name == "queue" else cpu_scenario(
                    cluster.image, args.cpu_replicas)
                mine, timelines[name] = run_scenario(rig, scenario, options)
                reps += mine
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: tearing down", file=sys.stderr)
        except Exception as err:
            problems.append(f"run stopped: {str(err)[:2000]}")
        finally:
            if meter is not None:
                meter.close()
            if prometheus is not None:
                prometheus.close()
            if exporter is not None:
                exporter.close()
            if cluster is not None:
                problems += [f"shoal: {p}" for p in cluster.stop()]
    dispose(work, keep=args.keep_temp, problems=problems)
    if interrupted or not reps:
        return 1

    rows = summarize(reps)
    print_table(rows, path)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "hosts": args.hosts,
        "path": path,
        "setup_s": setup,
        "summary": rows,
        "reps": [asdict(r) for r in reps],
        "timelines": timelines,
        "problems": problems,
    }
    from bench.autoscale_plot import plot

    write_result(result, args.out, plot_to=args.plot, draw=plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
