"""``shoal-agent``: start the per-host daemon (gRPC API, container runtime, image store).

The daemon never forks containers itself: its supervisor process does, so this process can be killed and
restarted at any time without touching running containers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import grpc

from agent import config, private_root
from agent.cgroups.detect import detect as detect_cgroups
from agent.connect import ConnectServer
from agent.connect_protocol import http_socket_path
from agent.errors import ShoalError
from agent.images.layers import UnpackLimits
from agent.images.pull import Puller, RegistrySettings
from agent.images.reserve import FreeSpaceReserve
from agent.images.store import ImageStore
from agent.join import Joiner, JoinSettings
from agent.network.manager import NetworkManager
from agent.rootfs import storage_limit
from agent.runtime import supervisor_client
from agent.runtime.containers import ContainerRuntime, RuntimeSettings
from agent.runtime.image_source import StoreImages
from agent.self_fence import SelfFence, stop_scheduler_managed
from agent.server import add_services, host_to_pb
from agent.server_options import SERVER_OPTIONS
from agent.usage import host as usage_host
from agent.usage.cadvisor import UsageCollector
from agent.usage.metrics import AgentMetrics, RpcMetricsInterceptor, serve_metrics
from agent.usage.sampler import RuntimeTotals, UsageSampler
from agent.usage.targets import SampleTarget

log = logging.getLogger("shoal.agent")


def _check_socket_free(path: Path) -> None:
    """Refuse to steal the socket of a live agent; remove a stale one left by a killed agent."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SystemExit(f"shoal-agent: another agent is already listening on {path}")


async def _bind(server: grpc.aio.Server, connect: ConnectServer, settings: config.AgentSettings,
                sockets: list[Path]) -> None:
    """Bind every listener; each unix socket created is appended to ``sockets`` at once, so a later
    failure still removes it."""
    for address in settings.listen:
        path = config.unix_path(address)
        if path is not None:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            _check_socket_free(path)
            # The socket is the whole API: root only. The umask closes the window before chmod.
            old = os.umask(0o177)
            try:
                server.add_insecure_port(f"unix://{path}")
            finally:
                os.umask(old)
            sockets.append(path)
            # The same API over Connect (HTTP/1.1) for the CLI, at PATH.http: same mode, same lifetime.
            http = Path(http_socket_path(str(path)))
            _check_socket_free(http)
            await connect.bind_unix(http)
            sockets.append(http)
            continue
        if settings.tls is not None:
            creds = grpc.ssl_server_credentials(
                [(settings.tls.key.read_bytes(), settings.tls.cert.read_bytes())],
                root_certificates=settings.tls.ca.read_bytes(), require_client_auth=True,
            )
            server.add_secure_port(address, creds)
        else:  # settings_from_args allows this only with --insecure-tcp
            log.warning("listening on %s without TLS (--insecure-tcp)", address)
            server.add_insecure_port(address)


async def serve(settings: config.AgentSettings) -> None:
    try:
        private_root.make_private(settings.root)
    except (ShoalError, OSError) as err:
        raise SystemExit(f"shoal-agent: {err}") from None
    ballast = bytearray(settings.ballast_mib << 20) if settings.ballast_mib else None
    if ballast is not None:
        ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page so it is resident
    store = ImageStore(settings.root / "images", limits=UnpackLimits(
        max_bytes=settings.max_unpacked_layer_size, max_ratio=settings.max_compression_ratio),
        reserve=FreeSpaceReserve(min_bytes=settings.min_free_bytes, min_fraction=settings.min_free_fraction))
    puller = Puller(store, RegistrySettings(
        auth_file=settings.root / "auth.json", insecure=settings.insecure_registries,
        ca_bundle=settings.registry_ca, max_parallel=settings.pull_parallel,
        blob_deadline=settings.pull_blob_deadline, max_layer_size=settings.max_layer_size,
    ))
    network = None
    if settings.subnet is not None:
        network = NetworkManager(settings.root, subnet=settings.subnet, bridge_name=settings.bridge)
        # Idempotent: a restarted agent adopts its bridge and rebuilds its nftables table in place.
        await network.setup_host()
    try:
        cgroup_manager = detect_cgroups(delegate=settings.cgroup_delegate)
    except ShoalError as err:  # e.g. --cgroup-delegate outside a delegated unit: say why, no traceback
        raise SystemExit(f"shoal-agent: {err}") from None
    storage = await asyncio.to_thread(storage_limit.choose_enforcement, settings.root)
    log.info("--storage-size is enforced by %s: %s", storage.mode.value, storage.detail)
    quotas = (storage_limit.ProjectQuotas(settings.root)
              if storage.mode is storage_limit.Enforcement.PROJECT_QUOTA else None)
    identity = usage_host.HostIdentity.for_this_agent(root=settings.root, labels=dict(settings.labels))
    runtime_settings = RuntimeSettings(root=settings.root, cgroup_parent=settings.cgroup_parent,
                                       log_max_bytes=settings.log_max_bytes,
                                       log_max_files=settings.log_max_files)
    runtime = ContainerRuntime(
        runtime_settings, images=StoreImages(store, puller), cgroup_manager=cgroup_manager,
        connect=functools.partial(supervisor_client.connect_or_spawn, settings.root,
                                  python=runtime_settings.python),
        network=network, boot_id=identity.boot_id, quotas=quotas,
    )
    agent_metrics = AgentMetrics(version=identity.agent_version, host_id=identity.host_id)

    def totals() -> RuntimeTotals:
        promised = runtime.commitments()
        return RuntimeTotals(containers=promised.containers,
                             memory_committed_bytes=promised.memory_requested,
                             cpu_committed_millis=promised.cpu_requested,
                             memory_limits_bytes=promised.memory_limits,
                             cpu_limits_millis=promised.cpu_limits, conditions=tuple(runtime.conditions()))

    def evict(target: SampleTarget, message: str) -> None:
        agent_metrics.record_eviction("storage")
        runtime.evict(target, message)

    sampler = UsageSampler(targets=runtime.sample_targets, identity=identity,
                           interval=settings.sample_interval,
                           memory_reserve_bytes=settings.memory_reserve_bytes,
                           cpu_reserve_millis=settings.cpu_reserve_millis, disk_path=settings.root,
                           pressure=usage_host.PressureThresholds(
                               memory_available_bytes=settings.memory_pressure_bytes,
                               disk_free_fraction=settings.disk_pressure_fraction,
                               inodes_free_fraction=settings.disk_pressure_inodes_fraction),
                           totals=totals, observe_duration=agent_metrics.record_sample,
                           evict=evict, storage_limit=(storage.mode.value, storage.detail))
    agent_metrics.registry.register(UsageCollector(sampler.latest))
    interceptors = [RpcMetricsInterceptor(agent_metrics)]
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    connect = ConnectServer(interceptors=interceptors)
    bridge = (str(settings.subnet), settings.bridge) if settings.subnet else ("", "")
    add_services(connect.capture(server), runtime=runtime, store=store, scratch=settings.root / "tmp",
                 sampler=sampler, network=bridge, puller=puller, metrics=agent_metrics)
    # Bind before starting anything else, so a taken or bad address fails with nothing to undo but
    # the sockets themselves.
    sockets: list[Path] = []
    metrics_server = None
    try:
        await _bind(server, connect, settings, sockets)
        if settings.metrics_listen:
            metrics_server = serve_metrics(settings.metrics_listen, agent_metrics.registry)
        await runtime.open()
        await server.start()
        await connect.start()
    except BaseException:
        for path in sockets:
            path.unlink(missing_ok=True)
        if metrics_server is not None:
            metrics_server.close()
        raise
    sampler_task = asyncio.create_task(sampler.run(), name="usage-sampler")
    join_task = fence_task = None
    if settings.join:
        fence = None
        if settings.stop_replicas_after:
            fence = SelfFence(stop_after=settings.stop_replicas_after,
                              stop_replicas=lambda: stop_scheduler_managed(runtime))
            fence_task = asyncio.create_task(fence.run(), name="self-fence")
        joiner = Joiner(JoinSettings(schedulers=settings.join, advertise=settings.advertise,
                                     metrics_address=settings.metrics_listen,
                                     tls_dir=settings.tls.ca.parent if settings.tls else None,
                                     max_refresh=settings.stop_replicas_after / 3),
                        host_info=lambda: host_to_pb(sampler.host(), network=bridge),
                        on_contact=fence.contact if fence is not None else None)
        join_task = asyncio.create_task(joiner.run(), name="join")
    for path in sockets:
        os.chmod(path, 0o600)
    log.info("shoal-agent serving on %s (root %s, cgroup parent %s)", ", ".join(settings.listen),
             settings.root, settings.cgroup_parent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down; containers keep running under the supervisor")
    puller.close()  # downloads in progress stop now, so their worker threads do not hold up the exit
    await asyncio.gather(server.stop(grace=2), connect.stop(grace=2))
    sampler_task.cancel()
    for task in (join_task, fence_task):
        if task is not None:
            task.cancel()
    sampler.close()
    if metrics_server is not None:
        metrics_server.close()
    await runtime.close()
    for path in sockets:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    args = config.build_parser().parse_args(argv)
    settings = config.settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        raise SystemExit("shoal-agent: must run as root (namespaces, mounts and cgroups)")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
