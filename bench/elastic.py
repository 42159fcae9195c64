"""Elastic hosts: from the first unschedulable replica to the provider's webhook call, and to every replica
running once the provider has started the hosts (issue 13; docs/elastic-hosts.md).

One invocation sets up, in a temp dir and in network namespaces it creates (``tests.fixtures.netns``;
nothing in the root network namespace), a Shoal cluster (``bench.cluster_shoal``: a control host with
etcd and one ``shoal-scheduler serve`` — ``--elastic-interval`` 1 s by default — and ``--hosts`` agent
hosts of its own, which belong to no group) and, on the control host, the test provider
(``tests.fixtures.elastic_provider``: a webhook served from a socket inside the control host's namespace)
whose machines are new netns hosts with an agent each (``tests.integration.cluster.elastic_machines``: an
agent certificate issued for the new address, the busybox image imported before the agent joins — a
prepared machine image — then the agent started joined with the group's labels). A host group ``bench``
(min 0, max ``--new-hosts``, shape: one cluster host's cpus and 1 GiB, ``pending_for`` ``--pending-for``)
is applied with ``shoal apply -f``.

Each rep, repeated ``--reps`` times, every wait bounded by ``--timeout``: a service constrained to the
group (``group==bench``) is created with three replicas per wanted host (each requests 30 % of a host's
cpus, so three fit on one and ``--new-hosts`` hosts are needed); none can run on the cluster's own
hosts, so every replica is pending. Then, untimed, the service is deleted and the group scales back in
(its hosts underused, drained, released, removed by the provider, forgotten), before the next rep.

**Clock** (wall time on this one machine, so the scheduler's timestamps and the provider's compare):
t0 is the first replica's creation (``created_at``, when it became pending and unschedulable).
``decided_s``: t0 → the scale-out request's ``created_at`` (the leader's step wrote it, at least
``pending_for`` after t0). ``webhook_s``: t0 → the webhook received the request (the provider's clock).
``provider_s`` (reported apart; the provider's own time, a platform's would be minutes): the webhook call
→ every machine's agent started and answering (run in parallel). ``joined_s``: t0 → the last new host's
registration with the scheduler (its ``registered_at``). ``after_join_s``: that registration → every
replica running and ready (the leader reaching the new hosts, placement, container starts; polled through
the scheduler's API every 50 ms). ``running_s``: t0 → every replica running and ready.
``return_s`` (untimed part): the service deleted → the group's hosts forgotten.

Run as root, from the repository root, with the project's venv::

    .venv/bin/python bench/elastic.py [--reps 5] [--hosts 1] [--new-hosts 2] [--pending-for 1] \\
        [--out bench/results/elastic.json]

It prints a table (p50/p99/max per measure) and writes JSON (machine, load average, every rep). Tear-down
(also after an error or ^C) stops every process it started and removes every container, mount, cgroup,
namespace and file it created.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `proto` and `tests` importable
    sys.path.insert(0, str(REPO))

from bench.cluster_daemon import dispose, run_checked, wait_for  # noqa: E402
from bench.cluster_peer import Workload  # noqa: E402
from bench.cluster_scale import COMMAND, build_image, machine  # noqa: E402
from bench.cluster_shoal import ShoalCluster  # noqa: E402
from bench.failover import stats  # noqa: E402
from proto.scheduler.v1 import scheduler_pb2 as spb  # noqa: E402
from tests.fixtures.elastic_provider import Fulfilment, ProviderWebhook  # noqa: E402
from tests.fixtures.netns import NetWorld  # noqa: E402
from tests.integration.cluster.elastic_machines import NetnsMachines  # noqa: E402

GROUP = "bench"
SERVICE = "elastic"
PROVIDER_PORT = 9600
PER_HOST = 3  # replicas per wanted host: each requests 30 % of a host's cpus
POLL = 0.05
MEASURES = ("decided_s", "webhook_s", "provider_s", "joined_s", "after_join_s", "running_s", "return_s")


@dataclass
class Rep:
    rep: int
    replicas: int
    hosts_asked: int = 0
    request: str = ""
    attempts: int = 0
    decided_s: float | None = None     # t0 → the request written by the leader's step
    webhook_s: float | None = None     # t0 → the webhook received it
    provider_s: float | None = None    # the webhook call → every machine's agent started and answering
    joined_s: float | None = None      # t0 → the last new host registered with the scheduler
    after_join_s: float | None = None  # that registration → every replica running and ready
    running_s: float | None = None     # t0 → every replica running and ready
    return_s: float | None = None      # untimed: the service deleted → the group's hosts forgotten
    reason: str = ""                   # the request's reason, as the provider received it
    error: str = ""


def seconds(stamp: Any) -> float:
    """A protobuf Timestamp as Unix seconds."""
    return float(stamp.seconds) + float(stamp.nanos) / 1e9


def group_yaml(*, cpus: float, max_hosts: int, pending_for: float, url: str) -> str:
    return f"""kind: hostgroup
name: {GROUP}
min: 0
max: {max_hosts}
shape: {{cpus: {cpus:g}, memory: 1G}}
scale_out: {{pending_for: {pending_for:g}s, max_per_request: {max_hosts}, cooldown: 1s}}
scale_in: {{utilization_below: 50%, for: 2s, delay_after_scale_out: 2s, max_concurrent_drains: {max_hosts}}}
provider:
  webhook: {{url: "{url}", timeout: 5s}}
"""


def service_yaml(*, image: str, replicas: int, cpus: float) -> str:
    return json.dumps({  # JSON is YAML: no quoting surprises in the command
        "name": SERVICE, "replicas": replicas,
        "template": {"image": image, "command": list(COMMAND), "resources": {"cpus": cpus, "memory": "16M"}},
        "placement": {"constraints": [f"group=={GROUP}"]},
    })


def members(cluster: ShoalCluster) -> list[spb.Host]:
    hosts = cluster.stub().ListHosts(spb.ListHostsRequest(), timeout=5).hosts
    return [h for h in hosts if h.labels.get("group") == GROUP]


def run_rep(cluster: ShoalCluster, provider: ProviderWebhook, r: int, *, replicas: int, cpus: float,
            timeout: float) -> Rep:
    rep = Rep(rep=r, replicas=replicas)
    stub = cluster.stub()
    known = {f.request_id for f in provider.scale_outs(GROUP)}
    path = cluster.work / f"{SERVICE}.yaml"
    path.write_text(service_yaml(image=cluster.image, replicas=replicas, cpus=cpus))
    run_checked(cluster.cli("apply", "-f", str(path)))
    deadline = time.monotonic() + timeout
    running_at = None
    while time.monotonic() < deadline:
        listed = stub.ListReplicas(spb.ListReplicasRequest(service=SERVICE), timeout=5).replicas
        ready = [x for x in listed if x.state == spb.REPLICA_STATE_RUNNING and x.ready]
        if len(ready) == replicas == len(listed):
            running_at = time.time()
            break
        time.sleep(POLL)
    t0 = min(seconds(x.created_at) for x in
             stub.ListReplicas(spb.ListReplicasRequest(service=SERVICE), timeout=5).replicas)
    joined = [seconds(h.registered_at) for h in members(cluster)]
    if joined:
        rep.joined_s = max(joined) - t0
        if running_at is not None:
            rep.after_join_s = running_at - max(joined)
    if running_at is None:
        status = stub.GetHostGroup(spb.GetHostGroupRequest(name=GROUP), timeout=5).status
        said = "; ".join(f"{d.action}: {d.reason}" for d in status.decisions[-3:])
        rep.error = (f"not every replica running after {timeout:g}s (group: {status.hosts} hosts, "
                     f"{status.expected_hosts} expected, {status.pending_replicas} pending; {said})")
    else:
        rep.running_s = running_at - t0
    fresh = [f for f in provider.scale_outs(GROUP) if f.request_id not in known]
    if len(fresh) != 1:
        asked = [f.request_id for f in fresh]
        rep.error = rep.error or f"{len(fresh)} scale_out requests in the rep: {asked}"
    if fresh:
        job: Fulfilment = fresh[0]
        first = provider.of(job.request_id)[0]
        rep.request, rep.reason = job.request_id, str(first.body["reason"])
        rep.hosts_asked = int(first.body["count"])
        rep.webhook_s = first.at - t0
        # The provider notices an agent answering a little after it joined: wait for it (bounded).
        provider.wait(lambda: job.done, timeout=timeout, what=f"{job.request_id} fulfilled")
        rep.provider_s = job.finished_at - first.at_perf
        group = stub.GetHostGroup(spb.GetHostGroupRequest(name=GROUP), timeout=5)
        request = next((x for x in group.status.requests if x.id == job.request_id), None)
        if request is not None:
            rep.decided_s = seconds(request.created_at) - t0
            rep.attempts = request.attempts
    started = time.monotonic()
    cluster.remove(SERVICE)
    wait_for("the group's hosts forgotten", lambda: not members(cluster) and cluster.gone(SERVICE),
             timeout=timeout, interval=0.2)
    rep.return_s = time.monotonic() - started
    return rep


def report(rep: Rep) -> None:
    def s(value: float | None) -> str:
        return f"{value:.2f} s" if value is not None else "-"

    print(f"rep {rep.rep:2}: {rep.request} ({rep.hosts_asked} hosts): decided {s(rep.decided_s)}, webhook "
          f"{s(rep.webhook_s)}, provider {s(rep.provider_s)}, joined {s(rep.joined_s)}, then running after "
          f"{s(rep.after_join_s)}; "
          f"running {s(rep.running_s)}; returned in {s(rep.return_s)}"
          + (f" [{rep.error}]" if rep.error else ""),
          file=sys.stderr, flush=True)


def summarize(reps: list[Rep]) -> dict[str, dict[str, float | None]]:
    return {m: stats([v for r in reps if (v := getattr(r, m)) is not None]) for m in MEASURES}


def print_table(summary: dict[str, dict[str, float | None]], reps: list[Rep], path: dict[str, float]) -> None:
    def cell(value: float | None) -> str:
        return f"{value:6.2f}" if value is not None else f"{'-':>6}"

    print(f"{'measure':14} {'p50':>6} {'p99':>6} {'max':>6} {'min':>6}   ({len(reps)} reps, "
          f"{sum(bool(r.error) for r in reps)} with errors)")
    for name in MEASURES:
        row = summary[name]
        print(f"{name:14} {cell(row['p50_s'])} {cell(row['p99_s'])} {cell(row['max_s'])} "
              f"{cell(row['min_s'])}")
    print("path: pending_for {pending_for_s:g} s, the leader's elastic step every {elastic_interval_s:g} s; "
          "{new_hosts:g} hosts asked for per rep".format(**path), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default %(default)s)")
    parser.add_argument("--hosts", type=int, default=1,
                        help="the cluster's own agent hosts (default %(default)s)")
    parser.add_argument("--new-hosts", type=int, default=2,
                        help="hosts each rep's service needs from the provider (default %(default)s)")
    parser.add_argument("--pending-for", type=float, default=1.0,
                        help="the group's scale_out.pending_for, s (default %(default)s; Shoal's: 5)")
    parser.add_argument("--elastic-interval", type=float, default=1.0,
                        help="the scheduler's --elastic-interval, s (default %(default)s)")
    parser.add_argument("--scheduler-arg", action="append", default=[], metavar="ARG",
                        help="an extra flag for shoal-scheduler serve")
    parser.add_argument("--timeout", type=float, default=120.0, help="every wait, s (default %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "elastic.json")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dir (logs) at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (network namespaces, cgroups)")
    if args.reps < 1 or args.hosts < 1 or not 1 <= args.new_hosts <= 8 or args.timeout <= 0:
        parser.error("--reps and --hosts must be at least 1, --new-hosts 1 to 8, --timeout positive")
    tag = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix=f"shoal-el-{tag}-", dir="/tmp"))
    load_before = os.getloadavg()
    print(f"working in {work} (tag {tag})", file=sys.stderr, flush=True)
    problems: list[str] = []
    reps: list[Rep] = []
    setup: dict[str, float] = {}
    path = {"pending_for_s": args.pending_for, "elastic_interval_s": args.elastic_interval,
            "new_hosts": args.new_hosts, "replicas_per_host": PER_HOST}
    interrupted = False
    with NetWorld() as world:
        cluster: ShoalCluster | None = None
        provider: ProviderWebhook | None = None
        machines: NetnsMachines | None = None
        try:
            image = build_image(work)
            control = world.add_host()
            cluster = ShoalCluster(
                work=work / "shoal", control=control, hosts=[world.add_host() for _ in range(args.hosts)],
                tag=tag, workload=Workload(command=COMMAND, cpus=0.1, cpus_request=0.1, memory_mib=16),
                scheduler_args=("--elastic-interval", str(args.elastic_interval), *args.scheduler_arg),
            )
            setup = cluster.start(image)
            machines = NetnsMachines(world=world, base=work / "machines", pki=cluster.work / "pki",
                                     scheduler=cluster.instance_address(1), tag=tag, image=image.layout_tar,
                                     image_name=image.name)
            provider = ProviderWebhook(control.name, str(control.address), PROVIDER_PORT, machines)
            cpu_millis = cluster.stub().ListHosts(spb.ListHostsRequest(), timeout=5).hosts[0].info \
                .cpu_allocatable_millis
            group = work / "group.yaml"
            group.write_text(group_yaml(cpus=cpu_millis / 1000, max_hosts=args.new_hosts,
                                        pending_for=args.pending_for, url=provider.url))
            run_checked(cluster.cli("apply", "-f", str(group)))
            print("up: " + ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()), file=sys.stderr, flush=True)
            for r in range(1, args.reps + 1):
                rep = run_rep(cluster, provider, r, replicas=PER_HOST * args.new_hosts,
                              cpus=round(cpu_millis * 0.3) / 1000, timeout=args.timeout)
                reps.append(rep)
                report(rep)
            problems += [f"provider: {p}" for p in provider.problems]
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: tearing down", file=sys.stderr)
        except Exception as err:
            problems.append(f"run stopped: {str(err)[:2000]}")
        finally:
            if provider is not None:
                problems += [f"provider: {p}" for p in provider.close()]
            if machines is not None:
                problems += [f"machines: {p}" for p in machines.close()]
            if cluster is not None:
                problems += [f"shoal: {p}" for p in cluster.stop()]
    dispose(work, keep=args.keep_temp, problems=problems)
    if interrupted or not reps:
        return 1
    summary = summarize(reps)
    print_table(summary, reps, path)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "path": path,
        "setup_s": setup,
        "summary": summary,
        "reps": [asdict(r) for r in reps],
        "problems": problems,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
