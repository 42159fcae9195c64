"""The demo's story: each step does one thing to the cluster, measures what happened, and checks it.

1. **Declare** a service (an HTTP server with a health check, a published port, cpu autoscaling between
   3 and ``4 * hosts + 4`` replicas, spread over zones) and a host group ``burst`` whose provider is the
   demo's webhook: three replicas run, one per zone.
2. **Serve**: a client sends requests through the service's endpoints; Prometheus has found every agent
   and replica through the schedulers' ``/http_sd``.
3. **Load**: the client adds requests that cost cpu; the autoscaler raises the count to its maximum,
   more than the hosts hold, so some replicas are pending.
4. **A host bought**: the leader asks the provider for a host through the webhook; the new host joins
   and takes the pending replicas.
5. **Load gone**: the count falls back to 3, and the idle bought host is drained and given back.
6. **A host dies** (link silent, every process SIGKILLed): its replica runs elsewhere within seconds; the
   host comes back.
7. **The leader dies** while a new version is rolled out: the other scheduler takes over and completes
   the rollout, and no request fails.

Every wait is bounded; a step whose expectation fails raises ``DemoFailed``. Timings come from polling
the scheduler's API every ``POLL`` seconds, so they are accurate to about that.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.cli.scheduler_client import Scheduler
from proto.scheduler.v1 import scheduler_lite as spb
from scripts.demo.cluster import BIN, HOST_MILLICORES, IMAGE, ZONES, DemoCluster, wait_for_value
from scripts.demo.load import BURN_MS, Endpoint, LoadGenerator, Second
from scripts.demo.machines import DemoMachines
from scripts.demo.timeline import Sampler
from scripts.demo.view import DemoFailed, Narrator
from tests.fixtures.elastic_provider import ProviderWebhook

T = TypeVar("T")
SERVICE = "web"
GROUP = "burst"
POLL = 0.1
REPLICA_MILLICORES = 50   # each replica's cpu request: HOST_MILLICORES / 50 = 4 fit on a host
TARGET_PERCENT = 50       # the autoscaler's cpu target, of the request
BASE_RATE = 10.0          # requests per second for the static page, all along
MIN_REPLICAS = 3


@dataclass(frozen=True)
class Profile:
    name: str
    hold: float                # seconds a state is left on screen for a person to see
    scale_down_window: int     # the autoscaler's scale-down stabilization window
    scale_in_for: str          # how long the bought host must be idle before it is given back
    scale_in_delay: str        # no scale-in this soon after buying


PROFILES = {
    "full": Profile("full", hold=5.0, scale_down_window=10, scale_in_for="5s", scale_in_delay="15s"),
    "short": Profile("short", hold=0.0, scale_down_window=3, scale_in_for="2s", scale_in_delay="5s"),
}


def service_yaml(*, generation: int, max_replicas: int, window: int) -> str:
    command = ('echo "web v$GEN on $(hostname)" > /www/index.html && '
               'echo "demo_web_info{version=\\"$GEN\\"} 1" > /www/metrics && exec httpd -f -p 8080 -h /www')
    return f"""# The demo's service: see docs/service-file.md for every key.
name: {SERVICE}
template:
  image: {IMAGE}
  command: ["sh", "-c", {json.dumps(command)}]
  env: {{GEN: "{generation}"}}
  ports: [{{container: 8080}}]
  health: {{http: {{port: 8080, path: /}}, interval: 500ms, timeout: 1s, retries: 2}}
  restart: always
  resources: {{cpus: 250m, cpus_request: {REPLICA_MILLICORES}m, memory: 32M}}
metrics_port: 8080
placement:
  strategy: spread
  topology_spread: {{label: zone, max_skew: 1}}
update: {{max_surge: 1, max_unavailable: 0}}
autoscale:
  min: {MIN_REPLICAS}
  max: {max_replicas}
  metrics:
    - cpu: {{target_utilization_percent: {TARGET_PERCENT}}}
  behavior:
    scale_up: {{stabilization_window_seconds: 0,
               policies: [{{type: replicas, value: 20, period_seconds: 1}}]}}
    scale_down: {{stabilization_window_seconds: {window},
                 policies: [{{type: percent, value: 100, period_seconds: 1}}]}}
"""


def group_yaml(*, zone: str, url: str, profile: Profile) -> str:
    return f"""# Hosts the scheduler may buy when replicas have no room, and give back when idle.
kind: hostgroup
name: {GROUP}
min: 0
max: 2
shape: {{cpus: {HOST_MILLICORES}m, memory: 1G, labels: {{zone: {zone}}}}}
scale_out: {{pending_for: 2s, cooldown: 10s}}
scale_in: {{utilization_below: 50%, for: {profile.scale_in_for},
           delay_after_scale_out: {profile.scale_in_delay}}}
provider:
  webhook: {{url: "{url}", timeout: 5s}}
"""


@dataclass
class Reader:
    """The service and hosts through one connection of its own (each thread of the demo has one)."""

    api: Scheduler

    def service(self) -> Any:
        return self.api.api.GetService(spb.GetServiceRequest(name=SERVICE))

    def replicas(self) -> list[Any]:
        return list(self.api.api.ListReplicas(spb.ListReplicasRequest(service=SERVICE)).replicas)

    def hosts(self) -> list[Any]:
        return list(self.api.api.ListHosts(spb.ListHostsRequest()).hosts)

    def endpoints(self) -> list[Endpoint]:
        listed = self.api.api.ListEndpoints(spb.ListEndpointsRequest(service=SERVICE)).endpoints
        return [Endpoint(address=e.address, host=e.host) for e in listed]

    def sample(self) -> tuple[int, int, int, int]:
        """For the timeline: declared, ready, pending, hosts ready."""
        service = self.service()
        ready_hosts = sum(h.state == spb.HOST_STATE_READY for h in self.hosts())
        return int(service.spec.replicas), int(service.status.ready), int(service.status.pending), ready_hosts


@dataclass
class Story:
    cluster: DemoCluster
    read: Reader
    machines: DemoMachines
    provider: ProviderWebhook
    load: LoadGenerator
    timeline: Sampler
    say: Narrator
    profile: Profile
    started: float  # the demo's clock (time.monotonic())
    pending_at: float = 0.0  # when the load step first saw replicas pending

    @property
    def capacity(self) -> int:
        return len(self.cluster.hosts) * (HOST_MILLICORES // REPLICA_MILLICORES)

    @property
    def max_replicas(self) -> int:
        return self.capacity + HOST_MILLICORES // REPLICA_MILLICORES  # one bought host's worth more

    def run(self) -> None:
        self.declare()
        self.serve()
        self.load_up()
        self.buy_a_host()
        self.load_down()
        self.lose_a_host()
        self.lose_the_leader_during_a_rollout()

    # -- the steps -----------------------------------------------------------------------------------

    def declare(self) -> None:
        self.say.step("Declare a service and a host group: shoal apply -f", short="declare")
        work = self.cluster.work
        (work / "web.yaml").write_text(service_yaml(generation=1, max_replicas=self.max_replicas,
                                                    window=self.profile.scale_down_window))
        next_zone = ZONES[len(self.cluster.hosts)]
        (work / "burst.yaml").write_text(group_yaml(zone=next_zone, url=self.provider.url,
                                                    profile=self.profile))
        self.say.say(f"web.yaml: an HTTP server (busybox httpd), health-checked, port 8080 published, "
                     f"cpu request {REPLICA_MILLICORES}m, autoscaled {MIN_REPLICAS}..{self.max_replicas} "
                     f"at {TARGET_PERCENT}% cpu, spread over zones")
        self.say.say(f"burst.yaml: up to 2 hosts of {HOST_MILLICORES}m in zone {next_zone}, bought through "
                     "a webhook (this demo's provider) when replicas have no room")
        t0 = time.monotonic()
        self.timeline.mark("apply")
        self.cli("apply", "-f", str(work / "web.yaml"), "-f", str(work / "burst.yaml"),
                 shown=["shoal", "apply", "-f", "web.yaml", "-f", "burst.yaml"])
        self.wait("3 replicas ready", lambda: self.ready() == MIN_REPLICAS and self.replica_count() == 3)
        self.say.measured("replicas ready after apply", f"{time.monotonic() - t0:.1f} s")
        self.cli("get", "replicas")
        zones = self.zones_of_replicas()
        self.say.measured("spread over zones", ", ".join(f"{z}: {n}" for z, n in sorted(zones.items())),
                          ok=len(zones) == MIN_REPLICAS and set(zones.values()) == {1},
                          expected="one replica in each of three zones")
        self.hold()

    def serve(self) -> None:
        self.say.step("Requests through the endpoints; Prometheus finds every target", short="serve")
        self.cli("get", "endpoints", SERVICE)
        self.load.set_rate("base", BASE_RATE)
        self.timeline.mark("clients")
        since = self.load.now()
        self.wait("requests answered", lambda: self.load.totals(since).ok >= 2 * BASE_RATE, timeout=30)
        seen = self.load.totals(since)
        self.say.measured("requests answered through the endpoints", f"{seen.ok + seen.retried}, failed "
                          f"{seen.failed}", ok=seen.failed == 0, expected="no failure")
        t0 = time.monotonic()
        agents = len(self.cluster.hosts)
        self.wait("Prometheus scraping every agent and replica",
                  lambda: self.up("shoal-agent") == agents and self.up("shoal-replicas") == MIN_REPLICAS,
                  timeout=60)
        self.say.measured("Prometheus targets up (found through /http_sd)",
                          f"{agents} agents, {MIN_REPLICAS} replicas, in {time.monotonic() - t0:.1f} s")
        self.say.frame()

    def load_up(self) -> None:
        self.say.step("Load: requests that cost cpu; the autoscaler follows", short="load")
        # Enough cpu that every replica up to max is above its target: load / (max * target) = 1.6.
        needed = self.max_replicas * REPLICA_MILLICORES * TARGET_PERCENT / 100 / 1000  # cores
        rate = round(1.6 * needed / (BURN_MS / 1000))
        cores = rate * BURN_MS / 1000
        self.say.say(f"{rate} requests/s to /cgi-bin/work (≈{BURN_MS} ms of cpu each, ≈{cores:.2f} cores) "
                     f"on top of {BASE_RATE:g}/s to the static page")
        t0 = time.monotonic()
        self.timeline.mark("load on")
        self.load.set_rate("burst", rate)
        first = self.wait("a scale-up decision", lambda: self.declared() > MIN_REPLICAS and self.declared(),
                          timeout=60)
        self.say.measured("first scale-up decision after the load began",
                          f"{time.monotonic() - t0:.1f} s (→ {first} replicas)")
        self.wait(f"the count at its maximum ({self.max_replicas})",
                  lambda: self.declared() == self.max_replicas, timeout=90)
        self.say.measured("declared replicas", f"{self.max_replicas} (the maximum) after "
                          f"{time.monotonic() - t0:.1f} s")
        pending = self.wait("replicas with no room (pending)", lambda: self.service().status.pending,
                            timeout=60)
        # When replicas were first pending: the timeline saw it (the waits above may have been longer).
        seen = next((s.t for s in self.timeline.samples if s.t >= t0 - self.started and s.pending), None)
        self.pending_at = self.started + seen if seen is not None else time.monotonic()
        self.say.measured("replicas with no room on the hosts (pending)", str(pending))
        self.wait(f"the {len(self.cluster.hosts)} hosts full", lambda: self.ready() >= self.capacity,
                  timeout=90)
        self.cli("autoscale", "history", SERVICE, tail=4)
        self.hold()

    def buy_a_host(self) -> None:
        self.say.step("A host bought: the elastic-hosts webhook, the provider, the new host used",
                      short="host bought")
        t0 = self.pending_at  # this step's clock starts when replicas were first seen pending
        offset = time.time() - time.monotonic()
        received = self.wait("the webhook called", lambda: [r for r in self.provider.received
                                                            if r.kind == "scale_out"], timeout=60)
        self.timeline.mark("host bought")
        asked = received[0]
        self.say.say(f"webhook: POST {self.provider.url} {{kind: scale_out, "
                     f"count: {asked.body.get('count')}, reason: {asked.body.get('reason')!r}}}")
        self.say.measured("webhook called after replicas were pending (pending_for: 2s)",
                          f"{max(0.0, asked.at - offset - t0):.1f} s")
        self.wait("the provider's host joined", lambda: self.ready_hosts() == len(self.cluster.hosts) + 1,
                  timeout=90, why=lambda: f"provider: {self.provider.problems}, "
                  f"{[(f.request_id, f.errors) for f in self.provider.scale_outs()]}")
        (bought,) = self.provider.wait(lambda: [f for f in self.provider.scale_outs() if f.done], timeout=30,
                                       what="the provider's job done")
        self.say.measured("new host joined and ready", f"{time.monotonic() - t0:.1f} s (the provider took "
                          f"{bought.seconds:.1f} s to start it; a cloud's take minutes)")
        self.wait("every replica ready", lambda: self.ready() == self.max_replicas, timeout=90)
        new_hosts = {h.id for h in self.hosts() if h.labels.get("group") == GROUP}
        on_new = sum(r.host in new_hosts for r in self.replicas())
        self.say.measured("all replicas ready, on the new host",
                          f"{on_new}, after {time.monotonic() - t0:.1f} s", ok=on_new > 0,
                          expected="replicas on the bought host")
        self.cli("get", "hosts")
        self.wait("Prometheus scraping the new agent",
                  lambda: self.up("shoal-agent") == len(self.cluster.hosts) + 1, timeout=60)
        self.say.measured("Prometheus found the new agent", "yes")
        self.hold()
        self.say.frame()

    def load_down(self) -> None:
        self.say.step("Load gone: back to 3 replicas, and the bought host given back", short="load gone")
        t0 = time.monotonic()
        since = self.load.now()
        self.load.set_rate("burst", 0)
        self.timeline.mark("load off")
        self.wait("the count back to 3", lambda: self.declared() == MIN_REPLICAS, timeout=120)
        self.say.measured("scale-down decision after the load ended",
                          f"{time.monotonic() - t0:.1f} s (a {self.profile.scale_down_window} s "
                          "stabilization window)")
        self.wait("3 replicas left", lambda: self.replica_count() == MIN_REPLICAS
                  and self.ready() == MIN_REPLICAS, timeout=90)
        self.wait("the bought host given back and forgotten",
                  lambda: not self.machines.live() and len(self.hosts()) == len(self.cluster.hosts),
                  timeout=120)
        self.timeline.mark("host given back")
        self.say.measured("bought host drained, released, removed",
                          f"{time.monotonic() - t0:.1f} s after the load ended")
        seen = self.load.totals(since)
        self.say.measured("requests failed while scaling down", failed_of(seen))
        self.cli("get", "hostgroups")
        self.hold()

    def lose_a_host(self) -> None:
        self.say.step("A host dies: link silent, agent and containers SIGKILLed", short="host dies")
        ids = {h.id: h for h in self.hosts()}
        victim = next(h for h in self.cluster.hosts
                      if any(ids.get(r.host) and ids[r.host].address == h.address for r in self.replicas()))
        victim_id = next(i for i, h in ids.items() if h.address == victim.address)
        since = self.load.now()
        t0 = time.monotonic()
        killed = self.cluster.kill_host(victim)
        self.timeline.mark(f"{victim.name} dies")
        self.say.say(f"{victim.name} (zone {victim.zone}): {killed} processes killed, its link down")
        self.wait("the host seen down", lambda: self.host_state(victim_id) != spb.HOST_STATE_READY,
                  timeout=60)
        self.say.measured("host marked not ready", f"{time.monotonic() - t0:.1f} s")
        self.wait("its replica running elsewhere", lambda: self.ready(excluding=victim_id) == MIN_REPLICAS,
                  timeout=90)
        self.say.measured("replicas running elsewhere", f"{time.monotonic() - t0:.1f} s after the host died")
        seen = self.load.totals(since)
        self.say.measured("requests failed", failed_of(seen))
        self.cli("get", "replicas")
        self.say.frame()
        self.hold()
        t1 = time.monotonic()
        self.cluster.power_on(victim)
        self.wait("the host back", lambda: self.host_state(victim_id) == spb.HOST_STATE_READY, timeout=90)
        self.timeline.mark(f"{victim.name} back")
        self.say.measured("host back and ready after power-on", f"{time.monotonic() - t1:.1f} s")

    def lose_the_leader_during_a_rollout(self) -> None:
        self.say.step("The leader dies while version 2 rolls out", short="leader dies")
        old = self.wait("a leader", self.cluster.leader, timeout=30)
        generation = self.service().template_generation
        since = self.load.now()
        t0 = time.monotonic()
        killed = self.cluster.kill_scheduler(old)
        self.timeline.mark(f"leader {old} dies; v2")
        self.say.say(f"scheduler {old} (the leader) SIGKILLed")
        (self.cluster.work / "web.yaml").write_text(service_yaml(
            generation=2, max_replicas=self.max_replicas, window=self.profile.scale_down_window))
        self.cli("apply", "-f", str(self.cluster.work / "web.yaml"),
                 shown=["shoal", "apply", "-f", "web.yaml"])
        new = self.wait("another leader",
                        lambda: (leader := self.cluster.leader()) not in ("", old) and leader, timeout=60)
        self.say.measured(f"scheduler {new} leads", f"{time.monotonic() - t0:.1f} s after {old} died")
        self.wait("version 2 on every replica, all ready", lambda: self.rolled_out(generation), timeout=120)
        self.timeline.mark("v2 everywhere")
        self.say.measured("rollout done (one new replica ready before each old one stops)",
                          f"{time.monotonic() - t0:.1f} s")
        seen = self.load.totals(since)
        self.say.measured("requests failed during the failover and the rollout",
                          failed_of(seen), ok=seen.failed == 0, expected="0")
        url = f"http://{self.endpoints()[0].address}/"
        served = self.cluster.client.run(["curl", "-fsS", "--max-time", "3", url], timeout=10).stdout.strip()
        self.say.measured("a replica answers", served, ok=served.startswith("web v2"), expected="web v2 ...")
        killed.start()
        self.wait("both schedulers up", lambda: len(self.cluster.api.api.ListSchedulers(
            spb.ListSchedulersRequest()).schedulers) == 2, timeout=60)
        self.cli("get", "schedulers")

    # -- reads (the main thread's own connection) -----------------------------------------------------

    def service(self) -> Any:
        return self.read.service()

    def declared(self) -> int:
        return int(self.service().spec.replicas)

    def replicas(self) -> list[Any]:
        return self.read.replicas()

    def ready(self, *, excluding: str = "") -> int:
        """Replicas running and ready (on hosts other than ``excluding``)."""
        return sum(r.state == spb.REPLICA_STATE_RUNNING and r.ready and r.host != excluding
                   for r in self.replicas())

    def replica_count(self) -> int:
        return len(self.replicas())

    def hosts(self) -> list[Any]:
        return self.read.hosts()

    def ready_hosts(self) -> int:
        return sum(h.state == spb.HOST_STATE_READY for h in self.hosts())

    def host_state(self, host_id: str) -> int:
        return next((int(h.state) for h in self.hosts() if h.id == host_id), 0)

    def zones_of_replicas(self) -> Counter[str]:
        zone = {h.id: h.labels.get("zone", "?") for h in self.hosts()}
        return Counter(zone.get(r.host, "?") for r in self.replicas())

    def endpoints(self) -> list[Endpoint]:
        return self.read.endpoints()

    def up(self, job: str) -> int:
        result = self.cluster.prometheus_query(f'count(up{{job="{job}"}} == 1)')
        return int(float(result[0]["value"][1])) if result else 0  # type: ignore[index]

    def rolled_out(self, before: int) -> bool:
        replicas = self.replicas()
        return (len(replicas) == MIN_REPLICAS
                and all(r.generation > before and r.ready for r in replicas))

    # -- plumbing ------------------------------------------------------------------------------------

    def cli(self, *args: str, shown: list[str] | None = None, tail: int = 0) -> str:
        env = {**os.environ, "SHOAL_SCHEDULER": self.cluster.scheduler_sockets, "COLUMNS": "110"}
        out = self.say.run([str(BIN / "shoal"), *args], shown=shown or ["shoal", *args], env=env,
                           quiet=bool(tail))
        if tail:
            for line in out.rstrip("\n").splitlines()[-tail:]:
                self.say.say(f"  {line}")
        return out

    def wait(self, what: str, check: Callable[[], T], *, timeout: float = 60,
             why: Callable[[], str] | None = None) -> T:
        """Poll ``check`` until it returns something truthy; DemoFailed after ``timeout`` seconds."""
        try:
            return wait_for_value(what, check, timeout=timeout, interval=POLL)
        except TimeoutError as err:
            raise DemoFailed(f"{err}" + (f"; {why()}" if why is not None else "")) from None

    def hold(self) -> None:
        if self.profile.hold:
            time.sleep(self.profile.hold)  # for a person watching, not for synchronisation


def failed_of(seen: Second) -> str:
    total = seen.ok + seen.retried + seen.failed
    return f"{seen.failed} of {total}" + (f" ({seen.retried} answered on a retry)" if seen.retried else "")


def write_outputs(timeline: Sampler, out: Path, *, hosts: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data, png = out / "shoal-demo-timeline.json", out / "shoal-demo-timeline.png"
    timeline.write_json(data)
    timeline.plot(png, title=f"Shoal demo: service web on {hosts} hosts, autoscaled on cpu")
    return [png, data]


__all__ = ["PROFILES", "Profile", "Story", "write_outputs"]
