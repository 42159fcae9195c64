"""``shoal-scheduler serve``: the central scheduler — the API on every instance, the control loops on the
elected leader.

Every instance serves the gRPC API (``scheduler.server``) on its listeners (TCP with mutual TLS, or a
unix socket) and takes part in the election (``scheduler.election``). While it leads, it runs the
controller (``scheduler.controller``) for that term: it follows every joined host's agent and reconciles
services against what runs. All state is in etcd, so an instance restarted from nothing loses nothing,
and several instances may run against one etcd.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from scheduler import gc_pauses, httpd, instances, metrics
from scheduler.agents import HEARTBEAT_TIMEOUT, KEEPALIVE_MIN_S, Credentials
from scheduler.autoscale.gather import CPU_INITIALIZATION_PERIOD
from scheduler.autoscale.loop import INTERVAL as AUTOSCALE_INTERVAL
from scheduler.cancellation import raise_if_cancelling
from scheduler.controller import COMMIT_IN_FLIGHT, AutoscaleSettings, Controller, ControllerSettings
from scheduler.elastic.loop import INTERVAL as ELASTIC_INTERVAL
from scheduler.election import Election, ElectionSettings, Term
from scheduler.keepalive import InLoopKeepalive, KeepaliveRunner, ThreadedKeepalive
from scheduler.keeper import ProcessKeepalive
from scheduler.liveness import DEFAULT_HANG_LIMIT_S, MIN_HANG_LIMIT_S, LoopAlive
from scheduler.placement import registry
from scheduler.placement.sampling import Sampling
from scheduler.reconcile import AGENT_DOWN_GRACE, HOST_GRACE, MASS_LOSS_MIN_HOSTS, MAX_LOST_SHARE
from scheduler.server import REGISTRATION_REFRESH, RegistrationService, add_services
from scheduler.session_workers import SessionWorkers
from scheduler.start_health import START_FAILURE_COOLDOWN, START_FAILURE_THRESHOLD, StartHealthSettings
from scheduler.store.base import MAX_TXN_OPS
from scheduler.store.errors import NotLeader, StoreError, StoreUnavailable
from scheduler.store.etcd import EtcdStore
from scheduler.store.factory import MEMORY, open_store
from scheduler.store.keys import DEFAULT_PREFIX
from scheduler.store.records import InstanceRecord
from scheduler.usage_pace import AUTO, REPORTS_PER_SECOND

log = logging.getLogger("shoal.scheduler")

DEFAULT_LISTEN = "127.0.0.1:7400"
SHUTDOWN_WAIT = 5.0  # seconds the leader's work and the registration get to stop after SIGTERM
MAX_USAGE_INTERVAL = 30.0  # longer, and a dead host is noticed only after a minute


@dataclass(frozen=True)
class Settings:
    etcd: str
    prefix: str
    listen: tuple[str, ...]
    tls_dir: Path | None
    insecure_tcp: bool
    http_listen: str
    election_ttl: int
    registration_refresh: float
    registration_spread: float
    instance: str
    log_level: str
    host_grace: float = HOST_GRACE
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT
    usage_interval: float | None = AUTO  # None: auto (scheduler.usage_pace)
    usage_reports_per_second: float = REPORTS_PER_SECOND
    agent_keepalive: float = 0.0  # seconds between keepalive pings to each agent (0: none)
    agent_down_grace: float = AGENT_DOWN_GRACE
    max_lost_share: float = MAX_LOST_SHARE
    start_health: StartHealthSettings = field(default_factory=StartHealthSettings)
    prometheus: str = ""
    autoscale_interval: float = AUTOSCALE_INTERVAL
    cpu_initialization_period: float = CPU_INITIALIZATION_PERIOD
    elastic_interval: float = ELASTIC_INTERVAL
    lease_keeper: str = "process"
    leader_hang_limit: float = DEFAULT_HANG_LIMIT_S
    percentage_of_hosts_to_score: int = 0
    session_workers: int = 0
    etcd_txns_in_flight: int = COMMIT_IN_FLIGHT
    etcd_max_txn_ops: int = MAX_TXN_OPS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal-scheduler", description="Shoal's central scheduler")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the API; lead the control loops when elected")
    serve.add_argument("--etcd", required=True, metavar="URL[,URL...]",
                       help="etcd endpoints, e.g. http://127.0.0.1:2379,http://10.0.0.2:2379")
    serve.add_argument("--etcd-prefix", default=DEFAULT_PREFIX, help="key prefix (default %(default)s)")
    serve.add_argument("--listen", action="append", default=[], metavar="HOST:PORT|unix:///PATH",
                       help=f"API listener, repeatable (default {DEFAULT_LISTEN})")
    serve.add_argument("--tls-dir", type=Path, default=None,
                       help="ca.pem, scheduler.pem, scheduler-key.pem: mTLS for TCP listeners and for "
                            "calls to agents")
    serve.add_argument("--insecure-tcp", action="store_true",
                       help="plain TCP, to clients and to agents (loopback tests only)")
    serve.add_argument("--http-listen", default="", metavar="HOST:PORT",
                       help="serve /metrics and Prometheus http_sd discovery here")
    serve.add_argument("--election-ttl", type=int, default=2, metavar="SECONDS",
                       help="leader lease TTL: a killed leader is replaced after about this (default 2)")
    serve.add_argument("--lease-keeper", choices=("process", "thread"), default="process",
                       help="where the leader lease is refreshed: a keeper process of its own (default; "
                            "immune to this process's garbage collections) or a thread of this one")
    serve.add_argument("--leader-hang-limit", type=float, default=DEFAULT_HANG_LIMIT_S, metavar="SECONDS",
                       help="a leader whose event loop shows no sign of life this long lets its term go "
                            "(the keeper revokes the lease, so another instance leads) and /healthz answers "
                            "503; 0: never (default %(default)g)")
    serve.add_argument("--registration-refresh", type=float, default=REGISTRATION_REFRESH, metavar="SECONDS",
                       help="the shortest time between an agent's registrations; it grows to hosts/20 s "
                            "(at most 60 s) with more hosts registering here (default %(default)s)")
    serve.add_argument("--registration-spread", type=float, default=RegistrationService.REFRESH_SPREAD,
                       metavar="SHARE",
                       help="a grown refresh is answered uniformly within this share of itself, so that "
                            "hosts that joined together do not come back together (0: not spread; "
                            "default %(default)s)")
    serve.add_argument("--usage-interval", type=_usage_interval, default=AUTO, metavar="auto|SECONDS",
                       help="ask agents for a usage report (the heartbeat, and the autoscaler's cpu and "
                            "memory figures) this often; auto: every second while the process following "
                            "them follows at most --usage-reports-per-second hosts, longer past that "
                            "(default auto)")
    serve.add_argument("--usage-reports-per-second", type=float, default=REPORTS_PER_SECOND, metavar="N",
                       help="with --usage-interval auto: the reports each process that follows hosts (the "
                            "leader, or each session worker) may receive a second; ~300 us of cpu each "
                            "(default %(default)g: about half a core, 3 s at 5,000 hosts)")
    serve.add_argument("--heartbeat-timeout", type=float, default=None, metavar="SECONDS",
                       help=f"an agent silent this long is unreachable (default {HEARTBEAT_TIMEOUT:g}, or "
                            "twice the usage interval when that is longer; with auto, the least)")
    serve.add_argument("--agent-keepalive", type=float, default=0.0, metavar="SECONDS",
                       help="ping each agent's connection once it has been quiet this long, and count the "
                            "host unreachable when a ping goes unanswered for twice as long: a dead machine "
                            "or a cut network noticed within about three periods whatever the usage "
                            "interval; each ping costs about a third of a usage report (default 0: off; "
                            f"at least {KEEPALIVE_MIN_S:g}; docs/architecture.md)")
    serve.add_argument("--host-grace", type=float, default=HOST_GRACE, metavar="SECONDS",
                       help="a host unreachable this long has its replicas replaced elsewhere; shorter "
                            "blips move nothing (default %(default)s; see docs/architecture.md)")
    serve.add_argument("--agent-down-grace", type=float, default=AGENT_DOWN_GRACE, metavar="SECONDS",
                       help="the same when the host answers but refuses its agent's port: an agent "
                            "restarting, its containers still running (default %(default)s)")
    serve.add_argument("--max-lost-share", type=float, default=MAX_LOST_SHARE, metavar="FRACTION",
                       help=f"when more than this share of the hosts (in a cluster of {MASS_LOSS_MIN_HOSTS} "
                            "or more) is lost at once, their replicas are not replaced: the leader more "
                            "likely lost its own view of them than they all died (default %(default)s; 1: "
                            "always replace)")
    serve.add_argument("--start-failure-threshold", type=int, default=START_FAILURE_THRESHOLD, metavar="N",
                       help="launches on one host failing in a row for host-side reasons (not the image's "
                            "or the spec's) before placement avoids it (default %(default)s)")
    serve.add_argument("--start-failure-cooldown", type=float, default=START_FAILURE_COOLDOWN,
                       metavar="SECONDS", help="how long after its last failure such a host is avoided "
                                               "before it is tried again (default %(default)s)")
    serve.add_argument("--prometheus", default="", metavar="URL",
                       help="Prometheus' HTTP API (http://HOST:9090), for autoscale metrics of type "
                            "prometheus")
    serve.add_argument("--autoscale-interval", type=float, default=AUTOSCALE_INTERVAL, metavar="SECONDS",
                       help="how often the autoscaler decides each autoscaled service (default %(default)s)")
    serve.add_argument("--autoscale-cpu-initialization-period", type=float, default=CPU_INITIALIZATION_PERIOD,
                       metavar="SECONDS", help="a replica started this recently is left out of cpu averages "
                                               "when not ready (HPA's; default %(default)s)")
    serve.add_argument("--elastic-interval", type=float, default=ELASTIC_INTERVAL, metavar="SECONDS",
                       help="how often the leader decides each host group's hosts and retries undelivered "
                            "provider requests (default %(default)s; docs/elastic-hosts.md)")
    serve.add_argument("--percentage-of-hosts-to-score", type=int, default=0, metavar="PERCENT",
                       help="in clusters of more than 100 hosts, how many hosts a service's placement "
                            "filters and scores, as kube-scheduler's percentageOfNodesToScore: 0 (default) "
                            "adaptive, 50%% less 1%% per 125 hosts and at least 5%%; 100 every host")
    serve.add_argument("--session-workers", type=int, default=0, metavar="N",
                       help="run the leader's agent sessions (a channel, two streams and a report a second "
                            "per host) in N worker processes instead of its own: for thousands of hosts "
                            "(default %(default)s: in-process; docs/scaling.md, part 6)")
    serve.add_argument("--etcd-txns-in-flight", type=int, default=COMMIT_IN_FLIGHT, metavar="N",
                       help="a reconcile pass's writes go to etcd in transactions of 127, up to N of them in "
                            "flight at once; API writes go ahead of them (default %(default)s; 1: one after "
                            "the other; docs/scaling.md, part 11)")
    serve.add_argument("--etcd-max-txn-ops", type=int, default=MAX_TXN_OPS, metavar="N",
                       help="etcd's --max-txn-ops, checked at startup. Raised with etcd's: a batch that fits "
                            "in two rounds of such transactions (a mass failure's replacements) goes in "
                            "fewer, larger ones while the API is quiet; bulk passes keep 128 "
                            "(default %(default)s, etcd's own; docs/scaling.md, part 19)")
    serve.add_argument("--instance-id", default="", help="this instance's id (default: hostname-random)")
    serve.add_argument("--log-level", default=os.environ.get("SHOAL_LOG_LEVEL", "info"),
                       choices=["debug", "info", "warning", "error"])
    return parser


def _usage_interval(text: str) -> float | None:
    """``auto`` (None) or seconds."""
    if text == "auto":
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or seconds, got {text!r}") from None


def _is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` names this machine's loopback (127.0.0.0/8, ::1, localhost)."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def settings_from_args(args: argparse.Namespace) -> Settings:
    listen = tuple(args.listen or [DEFAULT_LISTEN])
    tcp = [a for a in listen if not a.startswith("unix:")]
    if tcp and args.tls_dir is None and not args.insecure_tcp:
        raise SystemExit(f"shoal-scheduler: TCP listener {tcp[0]} needs mutual TLS: pass --tls-dir DIR (with "
                         "ca.pem, scheduler.pem, scheduler-key.pem), or --insecure-tcp for loopback tests")
    if args.insecure_tcp:
        for address in tcp:
            if not _is_loopback(address):
                raise SystemExit(f"shoal-scheduler: --insecure-tcp is for loopback only, and {address} is "
                                 "not: use --tls-dir DIR (shoal certs init) for real addresses")
    if args.tls_dir is not None:
        needed = ("ca.pem", "scheduler.pem", "scheduler-key.pem")
        missing = [n for n in needed if not (args.tls_dir / n).is_file()]
        if missing:
            raise SystemExit(f"shoal-scheduler: --tls-dir {args.tls_dir} is missing {', '.join(missing)} "
                             "(shoal certs init writes them)")
    if args.election_ttl < 1:
        raise SystemExit("shoal-scheduler: --election-ttl must be at least 1 second")
    if args.leader_hang_limit != 0 and not args.leader_hang_limit >= MIN_HANG_LIMIT_S:
        raise SystemExit(f"shoal-scheduler: --leader-hang-limit must be 0 (never) or at least "
                         f"{MIN_HANG_LIMIT_S:g} second")
    if args.usage_interval is not AUTO and not 0 <= args.usage_interval <= MAX_USAGE_INTERVAL:
        raise SystemExit(f"shoal-scheduler: --usage-interval must be auto or 0 to {MAX_USAGE_INTERVAL:g} "
                         "seconds")
    if args.usage_reports_per_second <= 0:
        raise SystemExit("shoal-scheduler: --usage-reports-per-second must be more than 0")
    # Agents sample once a second; with auto the heartbeat is the least, stretched with the interval.
    reports = 1.0 if args.usage_interval is AUTO else max(args.usage_interval, 1.0)
    heartbeat = args.heartbeat_timeout if args.heartbeat_timeout is not None else max(HEARTBEAT_TIMEOUT,
                                                                                       2 * reports)
    if heartbeat < 1.5 * reports:
        raise SystemExit(f"shoal-scheduler: --heartbeat-timeout must be at least 1.5 times the time between "
                         f"usage reports ({1.5 * reports:g} seconds: agents report every "
                         f"{reports:g} s)")
    if args.agent_keepalive != 0 and not KEEPALIVE_MIN_S <= args.agent_keepalive <= MAX_USAGE_INTERVAL:
        raise SystemExit(f"shoal-scheduler: --agent-keepalive must be 0 (off) or {KEEPALIVE_MIN_S:g} to "
                         f"{MAX_USAGE_INTERVAL:g} seconds")
    if args.host_grace < 0 or args.agent_down_grace < 0:
        raise SystemExit("shoal-scheduler: --host-grace and --agent-down-grace cannot be negative")
    if not 0 <= args.registration_spread < 1:
        raise SystemExit("shoal-scheduler: --registration-spread must be at least 0 and below 1")
    if not 0 < args.max_lost_share <= 1:
        raise SystemExit("shoal-scheduler: --max-lost-share must be more than 0 and at most 1 (1: always "
                         "replace lost hosts' replicas)")
    if args.start_failure_threshold < 1 or args.start_failure_cooldown < 0:
        raise SystemExit("shoal-scheduler: --start-failure-threshold must be at least 1 and "
                         "--start-failure-cooldown cannot be negative")
    if args.autoscale_interval < 0.1 or args.autoscale_cpu_initialization_period < 0:
        raise SystemExit("shoal-scheduler: --autoscale-interval must be at least 0.1 s and "
                         "--autoscale-cpu-initialization-period cannot be negative")
    if args.elastic_interval < 0.1:
        raise SystemExit("shoal-scheduler: --elastic-interval must be at least 0.1 s")
    if not 0 <= args.percentage_of_hosts_to_score <= 100:
        raise SystemExit("shoal-scheduler: --percentage-of-hosts-to-score must be 0 (adaptive) to 100")
    if not 0 <= args.session_workers <= 64:
        raise SystemExit("shoal-scheduler: --session-workers must be 0 (in-process) to 64")
    if not 1 <= args.etcd_txns_in_flight <= 64:
        raise SystemExit("shoal-scheduler: --etcd-txns-in-flight must be 1 to 64")
    if not 2 <= args.etcd_max_txn_ops <= 10_000:
        raise SystemExit("shoal-scheduler: --etcd-max-txn-ops must be 2 to 10000 (and etcd's --max-txn-ops)")
    if args.prometheus and not args.prometheus.startswith(("http://", "https://")):
        raise SystemExit(f"shoal-scheduler: --prometheus {args.prometheus!r}: expected http://HOST:PORT")
    instance = args.instance_id or f"{socket.gethostname()}-{secrets.token_hex(3)}"
    return Settings(etcd=args.etcd, prefix=args.etcd_prefix, listen=listen, tls_dir=args.tls_dir,
                    insecure_tcp=args.insecure_tcp, http_listen=args.http_listen,
                    election_ttl=args.election_ttl, registration_refresh=args.registration_refresh,
                    registration_spread=args.registration_spread, lease_keeper=args.lease_keeper,
                    leader_hang_limit=args.leader_hang_limit,
                    instance=instance, log_level=args.log_level, host_grace=args.host_grace,
                    heartbeat_timeout=heartbeat, usage_interval=args.usage_interval,
                    usage_reports_per_second=args.usage_reports_per_second,
                    agent_keepalive=args.agent_keepalive, agent_down_grace=args.agent_down_grace,
                    max_lost_share=args.max_lost_share,
                    start_health=StartHealthSettings(threshold=args.start_failure_threshold,
                                                     cooldown=args.start_failure_cooldown),
                    prometheus=args.prometheus, autoscale_interval=args.autoscale_interval,
                    cpu_initialization_period=args.autoscale_cpu_initialization_period,
                    elastic_interval=args.elastic_interval,
                    percentage_of_hosts_to_score=args.percentage_of_hosts_to_score,
                    session_workers=args.session_workers, etcd_txns_in_flight=args.etcd_txns_in_flight,
                    etcd_max_txn_ops=args.etcd_max_txn_ops)


def _credentials(settings: Settings) -> Credentials | None:
    tls = settings.tls_dir
    if tls is None:
        return None
    return Credentials(ca=(tls / "ca.pem").read_bytes(), cert=(tls / "scheduler.pem").read_bytes(),
                       key=(tls / "scheduler-key.pem").read_bytes())


def _bind(server: grpc.aio.Server, settings: Settings) -> list[Path]:
    sockets = []
    for address in settings.listen:
        if address.startswith("unix:"):
            path = Path(address.removeprefix("unix://").removeprefix("unix:"))
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            old = os.umask(0o177)
            try:
                server.add_insecure_port(f"unix://{path}")
            finally:
                os.umask(old)
            sockets.append(path)
        elif settings.tls_dir is not None:
            tls = settings.tls_dir
            creds = grpc.ssl_server_credentials(
                [((tls / "scheduler-key.pem").read_bytes(), (tls / "scheduler.pem").read_bytes())],
                root_certificates=(tls / "ca.pem").read_bytes(), require_client_auth=True)
            server.add_secure_port(address, creds)
        else:
            log.warning("listening on %s without TLS (--insecure-tcp)", address)
            server.add_insecure_port(address)
    return sockets


async def _check_txn_ops(store: EtcdStore) -> None:
    """``--etcd-max-txn-ops`` above etcd's own limit fails every pass that writes that many: refuse to
    start instead. An etcd that cannot be reached now is checked by nothing else, and said so."""
    try:
        await store.check_txn_ops()
    except StoreUnavailable as err:
        log.warning("could not check --etcd-max-txn-ops against etcd (%s); passes fail if it allows fewer",
                    err)


async def serve(settings: Settings) -> None:
    gc_pauses.install()
    gc_pauses.tune()
    try:
        store = await open_store(settings.etcd, prefix=settings.prefix, max_txn_ops=settings.etcd_max_txn_ops)
        if settings.etcd_max_txn_ops != MAX_TXN_OPS and isinstance(store, EtcdStore):
            await _check_txn_ops(store)
    except (StoreError, ValueError) as err:
        raise SystemExit(f"shoal-scheduler: {err}") from None
    profile = replace(registry.default_profile(),
                      sampling=Sampling(percentage=settings.percentage_of_hosts_to_score))
    observer = metrics.SchedulerMetrics()
    server = grpc.aio.server(interceptors=[observer.interceptor()])
    add_services(server, store=store, profile=profile, refresh_seconds=settings.registration_refresh,
                 spread=settings.registration_spread, reads=observer.follower(store))
    sockets = _bind(server, settings)
    await server.start()
    for path in sockets:
        os.chmod(path, 0o600)
    # The lease is kept by a process (or a thread) and an etcd connection of its own, so a busy leader
    # keeps its term (scheduler.keeper, scheduler.keepalive); the in-memory store exists once per process,
    # so its lease is kept in the loop.
    keepalive: KeepaliveRunner
    if settings.etcd == MEMORY:
        keepalive = InLoopKeepalive(store)
    elif settings.lease_keeper == "process":
        keepalive = ProcessKeepalive(settings.etcd, settings.prefix)
        await keepalive.start()
    else:
        keepalive = ThreadedKeepalive(lambda: open_store(settings.etcd, prefix=settings.prefix))
    election = Election(store, ElectionSettings(instance=settings.instance, address=settings.listen[0],
                                                ttl_s=settings.election_ttl,
                                                hang_limit_s=settings.leader_hang_limit),
                        keepalive=keepalive)
    registration = instances.InstanceRegistration(store, InstanceRecord(
        instance=settings.instance, addresses=settings.listen, http_address=settings.http_listen,
        started_at=time.time(), version=instances.shoal_version()),
        ttl_s=max(settings.election_ttl, instances.DEFAULT_TTL_S))
    registration_task = asyncio.create_task(registration.run(), name="instance-registration")
    credentials = _credentials(settings)
    leading: list[Controller] = []
    # The session workers outlive terms: a term lost and won again adopts their sessions as they are.
    workers = (SessionWorkers(settings.session_workers, credentials=credentials,
                              heartbeat_timeout=settings.heartbeat_timeout,
                              usage_interval=settings.usage_interval,
                              usage_reports_per_second=settings.usage_reports_per_second,
                              keepalive=settings.agent_keepalive,
                              hang_limit=settings.leader_hang_limit, timings=observer)
               if settings.session_workers else None)

    async def lead(term: Term) -> None:
        log.info("leading (epoch %d)", term.epoch)
        controller = Controller(store, ControllerSettings(epoch=term.epoch, guard=term.guard,
                                                          credentials=credentials, profile=profile,
                                                          host_grace=settings.host_grace,
                                                          heartbeat_timeout=settings.heartbeat_timeout,
                                                          usage_interval=settings.usage_interval,
                                                          usage_reports_per_second=(
                                                              settings.usage_reports_per_second),
                                                          agent_keepalive=settings.agent_keepalive,
                                                          agent_down_grace=settings.agent_down_grace,
                                                          max_lost_share=settings.max_lost_share,
                                                          start_health=settings.start_health,
                                                          autoscale=AutoscaleSettings(
                                                              interval=settings.autoscale_interval,
                                                              prometheus_url=settings.prometheus,
                                                              cpu_initialization_period=(
                                                                  settings.cpu_initialization_period)),
                                                          elastic_interval=settings.elastic_interval,
                                                          session_workers=settings.session_workers,
                                                          commit_in_flight=settings.etcd_txns_in_flight),
                                on_pass=observer.record_pass,
                                on_provider_attempt=observer.record_provider_attempt,
                                follower=observer.follower(store), workers=workers, timings=observer)
        leading.append(controller)
        try:
            await controller.run()
        finally:
            leading.remove(controller)
            log.info("no longer leading (epoch %d)", term.epoch)

    async def elect() -> None:
        while True:
            try:
                await election.run(lead)
                return
            except NotLeader as err:
                log.warning("deposed: %s", err)
            except Exception:
                raise_if_cancelling()
                log.exception("the control loop failed; campaigning again")
            await asyncio.sleep(1.0)

    observer.watch(store=store, election=election, leader=lambda: leading[0] if leading else None)
    alive = LoopAlive()  # for /healthz and /metrics: whether this loop still runs
    alive.start()
    observer.follow_loop(alive)
    http = (httpd.serve(settings.http_listen, observer, alive=alive, hang_limit=settings.leader_hang_limit)
            if settings.http_listen else None)
    election_task = asyncio.create_task(elect(), name="election")
    log.info("shoal-scheduler %s serving on %s (etcd %s)", settings.instance, ", ".join(settings.listen),
             settings.etcd)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: resigning leadership, then closing the API")
    for task in (election_task, registration_task):
        task.cancel()
    _, stuck = await asyncio.wait({election_task, registration_task}, timeout=SHUTDOWN_WAIT)
    for task in stuck:  # a bug, but shutting down must not hang on it: say where it is, and go on
        where = io.StringIO()
        task.print_stack(file=where)
        log.error("shutting down: %s still runs %g s after it was cancelled; going on without it\n%s",
                  task.get_name(), SHUTDOWN_WAIT, where.getvalue())
    await keepalive.close()
    await alive.close()
    await registration.close()
    if workers is not None:
        await workers.close()
    await server.stop(grace=2)
    if http is not None:
        http.close()
    await store.close()
    for path in sockets:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
