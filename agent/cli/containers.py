"""Container verbs of the ``shoal`` CLI: run, ps, logs, stop, kill, rm, exec, inspect, start, wait.

Each verb is a thin client of the agent's gRPC API; all decisions (what a limit means, whether a
container may be removed) are the agent's, so a remote caller (the scheduler) gets identical behaviour.
"""

from __future__ import annotations

import argparse
import os
import sys

from agent import parsing
from agent.cli.client import Agent, CliError, describe_rpc_error, rpc_errors
from agent.cli.output import ago, command_line, ports_line, short_id, status_line, table
from agent.cli.transport import RpcFailure
from agent.errors import InvalidArgument
from proto.agent.v1 import agent_lite as pb

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# docker run's own exit statuses: 125 the run itself failed, 126 cannot invoke, 127 not found.
EXIT_RUN_FAILED = 125
_LAUNCH_EXIT = {"not-found": 127, "not-executable": 126}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="create and start a container from an image")
    run.add_argument("-d", "--detach", action="store_true", help="run in the background, print the id")
    _add_create_options(run)
    run.set_defaults(func=cmd_run)

    create = sub.add_parser("create", help="create a container without starting it")
    _add_create_options(create)
    create.set_defaults(func=cmd_create, detach=True)

    ps = sub.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    ps.add_argument("-q", "--quiet", action="store_true", help="only ids")
    ps.add_argument("-f", "--filter", action="append", default=[], metavar="label=K=V|name=N",
                    help="filter by label or name")
    ps.add_argument("--no-trunc", action="store_true")
    ps.set_defaults(func=cmd_ps)

    logs = sub.add_parser("logs", help="show a container's output")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-t", "--timestamps", action="store_true")
    logs.add_argument("-n", "--tail", type=int, default=0, help="only the last N lines")
    logs.add_argument("container")
    logs.set_defaults(func=cmd_logs)

    start = sub.add_parser("start", help="start created or stopped containers")
    start.add_argument("containers", nargs="+")
    start.set_defaults(func=cmd_start)

    stop = sub.add_parser("stop", help="SIGTERM, then SIGKILL after a grace period")
    stop.add_argument("-t", "--time", type=int, default=None, help="seconds before SIGKILL (default 10)")
    stop.add_argument("containers", nargs="+")
    stop.set_defaults(func=cmd_stop)

    kill = sub.add_parser("kill", help="send a signal (default KILL)")
    kill.add_argument("-s", "--signal", default="KILL")
    kill.add_argument("containers", nargs="+")
    kill.set_defaults(func=cmd_kill)

    rm = sub.add_parser("rm", help="remove containers")
    rm.add_argument("-f", "--force", action="store_true", help="kill running containers first")
    rm.add_argument("containers", nargs="+")
    rm.set_defaults(func=cmd_rm)

    wait = sub.add_parser("wait", help="wait for containers to exit, print their exit codes")
    wait.add_argument("containers", nargs="+")
    wait.set_defaults(func=cmd_wait)

    exe = sub.add_parser("exec", help="run a command inside a running container")
    exe.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    exe.add_argument("-u", "--user", default="")
    exe.add_argument("-w", "--workdir", default="")
    exe.add_argument("container")
    exe.add_argument("command", nargs=argparse.REMAINDER)
    exe.set_defaults(func=cmd_exec)

    inspect = sub.add_parser("inspect", help="a container's full record as JSON")
    inspect.add_argument("containers", nargs="+")
    inspect.set_defaults(func=cmd_inspect)


def _add_create_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="")
    parser.add_argument("--id", default="", help="caller-chosen container id (idempotent create)")
    parser.add_argument("--rm", action="store_true", help="remove the container when it exits")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    parser.add_argument("-l", "--label", action="append", default=[], metavar="K=V")
    parser.add_argument("-m", "--memory", default=None, help="memory limit, e.g. 64M (no swap)")
    parser.add_argument("--cpus", default=None, help="cpu limit in cores, e.g. 0.5")
    parser.add_argument("--memory-request", "--memory-reservation", dest="memory_request", default=None,
                        metavar="SIZE", help="memory the host reserves for it (default: the limit)")
    parser.add_argument("--cpus-request", dest="cpus_request", default=None, metavar="CORES",
                        help="cpu the host reserves for it (default: the limit)")
    parser.add_argument("--pids", "--pids-limit", dest="pids", default=None, help="max processes")
    parser.add_argument("--storage-size", dest="storage_size", default=None, metavar="SIZE",
                        help="writable-layer limit, e.g. 1G: a project quota where the agent's filesystem "
                             "has one, else measured and the container evicted (killed) when over it")
    parser.add_argument("--storage-opt", dest="storage_opt", action="append", default=[], metavar="size=SIZE",
                        help="Docker's spelling of --storage-size (only size= is known)")
    parser.add_argument("--hostname", default="")
    parser.add_argument("-u", "--user", default="", help="UID[:GID] or NAME[:GROUP]")
    parser.add_argument("-w", "--workdir", default="")
    parser.add_argument("--entrypoint", default=None, help="override the image's entrypoint")
    parser.add_argument("--read-only", action="store_true", help="mount the root filesystem read-only")
    parser.add_argument("--network", "--net", default=None, choices=["bridge", "none", "host"],
                        help="bridge (the default when the agent has a --subnet), none (loopback only) "
                             "or host")
    parser.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CTR[/PROTO]",
                        help="publish a container port on the host (bridge network; repeatable)")
    parser.add_argument("--restart", default="no", metavar="no|on-failure[:MAX]|always",
                        help="restart policy (exponential backoff, capped at 1 minute)")
    health = parser.add_argument_group("health check (one probe kind)")
    probe = health.add_mutually_exclusive_group()
    probe.add_argument("--health-cmd", default=None, metavar="CMD",
                       help="run CMD with /bin/sh -c inside the container; healthy on exit 0")
    probe.add_argument("--health-tcp", type=int, default=None, metavar="PORT",
                       help="connect to PORT inside the container's network namespace")
    probe.add_argument("--health-http", default=None, metavar="PORT[/PATH]",
                       help="GET http://127.0.0.1:PORT/PATH inside the container; healthy on 2xx/3xx")
    health.add_argument("--health-interval", default="30s", metavar="DURATION")
    health.add_argument("--health-timeout", default="30s", metavar="DURATION")
    health.add_argument("--health-retries", type=int, default=3, metavar="N")
    health.add_argument("--health-start-period", default="0s", metavar="DURATION")
    health.add_argument("--restart-on-unhealthy", action="store_true",
                        help="kill the container when it turns unhealthy (the restart policy decides)")
    parser.add_argument("--pull", default="missing", choices=["missing", "always", "never"],
                        help="pull the image from its registry first (default: when missing)")
    parser.add_argument("image")
    parser.add_argument("command", nargs=argparse.REMAINDER)


_NETWORKS = {None: pb.NETWORK_MODE_UNSPECIFIED, "none": pb.NETWORK_MODE_NONE,
             "host": pb.NETWORK_MODE_HOST, "bridge": pb.NETWORK_MODE_BRIDGE}


def _port_to_pb(spec: str) -> pb.PortMapping:
    host_ip, host_port, container_port, protocol = parsing.parse_port_text(spec)
    return pb.PortMapping(host_ip=host_ip, host_port=host_port, container_port=container_port,
                          protocol=protocol)


_RESTART_MODES = {"no": pb.RESTART_MODE_NO, "on-failure": pb.RESTART_MODE_ON_FAILURE,
                  "always": pb.RESTART_MODE_ALWAYS}


def parse_restart(raw: str) -> pb.RestartPolicy:
    """The runtime's own parser (so the CLI and the agent accept the same words), as a message."""
    mode, max_retries = parsing.parse_restart_text("always" if raw == "unless-stopped" else raw)
    return pb.RestartPolicy(mode=_RESTART_MODES[mode], max_retries=max_retries)


def parse_health(args: argparse.Namespace) -> pb.HealthCheck | None:
    check = pb.HealthCheck(
        interval_seconds=parsing.parse_duration(args.health_interval, what="health interval"),
        timeout_seconds=parsing.parse_duration(args.health_timeout, what="health timeout"),
        retries=args.health_retries,
        start_period_seconds=parsing.parse_duration(args.health_start_period, what="health start period"),
        restart_on_unhealthy=args.restart_on_unhealthy,
    )
    if args.health_cmd is not None:
        check.exec = pb.ExecProbe(command=["/bin/sh", "-c", args.health_cmd])
    elif args.health_tcp is not None:
        check.tcp = pb.TcpProbe(port=args.health_tcp)
    elif args.health_http is not None:
        port, _, path = args.health_http.partition("/")
        if not port.isdigit():
            raise InvalidArgument(f"invalid --health-http {args.health_http!r}: expected PORT[/PATH]")
        check.http = pb.HttpProbe(port=int(port), path="/" + path)
    else:
        if args.restart_on_unhealthy:
            raise InvalidArgument("--restart-on-unhealthy needs a health check (--health-cmd, -tcp or -http)")
        return None
    if check.retries < 1 or check.interval_seconds <= 0 or check.timeout_seconds <= 0:
        raise InvalidArgument("health checks need retries ≥ 1 and a positive interval and timeout")
    return check


def _key_values(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"invalid {what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _storage_bytes(args: argparse.Namespace) -> int:
    """--storage-size, or Docker's --storage-opt size= (the last one given wins, as in Docker)."""
    sizes = [parsing.parse_storage_opt(opt) for opt in args.storage_opt]
    if args.storage_size:
        if sizes:
            raise InvalidArgument("give the storage limit once: --storage-size or --storage-opt size=")
        return parsing.parse_storage_size(args.storage_size)
    return sizes[-1] if sizes else 0


def build_request(args: argparse.Namespace) -> pb.CreateContainerRequest:
    try:
        resources = pb.Resources(
            memory_bytes=parsing.parse_memory(args.memory) if args.memory else 0,
            cpu_millis=parsing.parse_cpus(args.cpus) if args.cpus else 0,
            pids_max=parsing.parse_pids(args.pids) if args.pids else 0,
            memory_request_bytes=parsing.parse_size(args.memory_request, what="memory request")
            if args.memory_request else 0,
            cpu_request_millis=parsing.parse_cpus(args.cpus_request, what="cpu request")
            if args.cpus_request else 0,
            storage_bytes=_storage_bytes(args),
        )
        env = parsing.parse_env(args.env)
        restart = parse_restart(args.restart)
        health = parse_health(args)
        ports = [_port_to_pb(p) for p in args.publish]
    except InvalidArgument as err:
        raise CliError(str(err), code=EXIT_RUN_FAILED) from None
    entrypoint = [args.entrypoint] if args.entrypoint else []
    spec = pb.ContainerSpec(
        image=args.image, entrypoint=entrypoint, command=args.command, env=env,
        working_dir=args.workdir, user=args.user, hostname=args.hostname, resources=resources,
        read_only=args.read_only, network=_NETWORKS[args.network], ports=ports,
        labels=_key_values(args.label, "label"), auto_remove=bool(args.rm),
        restart=restart, health=health,
    )
    return pb.CreateContainerRequest(id=args.id, name=args.name, spec=spec)


def has_registry(ref: str) -> bool:
    """Docker's rule: the first path component names a registry if it has a '.' or ':' or is localhost."""
    first, sep, _ = ref.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def ensure_image(agent: Agent, ref: str, policy: str) -> None:
    """Pull on the client side (so the user sees progress), as ``docker run`` does."""
    if policy == "never" or not has_registry(ref):
        return
    if policy == "missing":
        try:
            agent.images.GetImage(pb.ImageRef(ref=ref))
            return
        except RpcFailure as err:
            if err.code != "NOT_FOUND":
                raise CliError(describe_rpc_error(err, agent.address), code=EXIT_RUN_FAILED) from None
        print(f"Unable to find image '{ref}' locally", file=sys.stderr)
    from agent.cli.images import pull_image  # only when pulling: every import costs each run

    try:
        pull_image(agent, ref, quiet=False)
    except CliError as err:
        raise CliError(str(err), code=EXIT_RUN_FAILED) from None


def cmd_create(agent: Agent, args: argparse.Namespace) -> int:
    ensure_image(agent, args.image, args.pull)
    with rpc_errors(agent.address, code=EXIT_RUN_FAILED):
        ctr = agent.containers.CreateContainer(build_request(args))
    print(ctr.id)
    return 0


def _launch_kind(err: RpcFailure) -> str:
    return err.metadata.get("shoal-launch-kind", "")


def _launch_code(err: RpcFailure) -> int:
    return _LAUNCH_EXIT.get(_launch_kind(err), EXIT_RUN_FAILED)


def cmd_run(agent: Agent, args: argparse.Namespace) -> int:
    request = build_request(args)
    ensure_image(agent, args.image, args.pull)
    request.start = True
    ours = not request.id
    if ours:
        # Choose the id here, so a failed start can be cleaned up: the user never saw this container.
        request.id = os.urandom(32).hex()
    try:
        if args.detach:
            print(agent.containers.CreateContainer(request).id)
            return 0
        return _run_attached(agent, request)
    except RpcFailure as err:
        if ours:  # created but not started (a taken port, a missing command): leave nothing behind
            _remove_quietly(agent, request.id)
        if err.code == "FAILED_PRECONDITION" and _launch_kind(err):
            raise CliError(err.message or "start failed", code=_launch_code(err)) from None
        raise CliError(describe_rpc_error(err, agent.address), code=EXIT_RUN_FAILED) from None


def _remove_quietly(agent: Agent, container_id: str) -> None:
    try:
        agent.containers.RemoveContainer(pb.RemoveContainerRequest(id=container_id, force=True))
    except RpcFailure:
        return  # already gone, or the agent is: the error the caller reports is the one that matters


class _Abandoned(Exception):
    """The user gave up waiting: a second interrupt, or a stop that never came back."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# After asking for a stop, how long past its grace period to wait for the exit before giving up.
_STOP_SLACK_SECONDS = 10


def _run_attached(agent: Agent, request: pb.CreateContainerRequest) -> int:
    """Run the container and stream its output until it exits, then exit with its code.

    The first SIGINT/SIGTERM asks the agent to stop the container (SIGTERM, then SIGKILL after 10 s)
    and keeps streaming; a second one, or no exit by the end of the stop's grace plus a margin, gives up
    at once (exit 128+signal), leaving the container to the agent — with ``--rm`` the agent removes it
    when it exits, as it does when this process is killed outright."""
    import signal

    first: int | None = None
    started = False
    stop_timeout = 10

    def ask_stop() -> None:
        signal.alarm(stop_timeout + _STOP_SLACK_SECONDS)
        try:  # sent now, answered whenever: the output keeps streaming meanwhile
            agent.transport.unary_nowait(pb.ContainersStub.StopContainer_method,
                                         pb.StopContainerRequest(id=request.id, timeout_seconds=stop_timeout))
        except RpcFailure:
            return  # the agent is gone; the output stream reports that

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal first
        if first is not None:  # a second signal, or SIGALRM: the stop's time is up
            raise _Abandoned(first)
        first = signum
        print(f"shoal: stopping {request.id[:12]} (interrupt again to stop waiting)", file=sys.stderr,
              flush=True)
        if started:
            ask_stop()  # else asked as soon as it has started


    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        signal.signal(signum, on_signal)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    status = None
    try:
        for item in agent.containers.RunContainer(request):
            if item.HasField("started"):
                started = True
                if first is not None:
                    ask_stop()
            elif item.HasField("log"):
                entry = item.log
                target = err if entry.stream == pb.LOG_STREAM_STDERR else out
                target.write(entry.line if entry.partial else entry.line + b"\n")
                target.flush()
            elif item.HasField("exit"):
                status = item.exit
    except _Abandoned as gave_up:
        signal.alarm(0)
        print(f"shoal: gave up waiting for {request.id[:12]} to exit; the agent still stops it"
              + (" and removes it" if request.spec.auto_remove else ""), file=sys.stderr)
        return 128 + gave_up.signum
    except RpcFailure as failure:
        if not started:
            raise  # the run's own failure: the caller cleans up and reports it
        raise CliError(describe_rpc_error(failure, agent.address)) from None
    signal.alarm(0)
    if status is None:
        raise CliError(f"the agent ended {request.id[:12]}'s output without its exit status")
    if status.reason == "StartFailed" and status.error:
        print(f"shoal: {status.error}", file=sys.stderr)
    return int(status.exit_code)


def _stream_logs(agent: Agent, request: pb.ContainerLogsRequest, *, timestamps: bool) -> None:
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for entry in agent.containers.ContainerLogs(request):
        target = err if entry.stream == pb.LOG_STREAM_STDERR else out
        if timestamps:
            target.write(entry.time.ToJsonString().encode() + b" ")
        target.write(entry.line if entry.partial else entry.line + b"\n")
        target.flush()


def cmd_logs(agent: Agent, args: argparse.Namespace) -> int:
    request = pb.ContainerLogsRequest(id=args.container, follow=args.follow, tail=args.tail,
                                      timestamps=args.timestamps)
    with rpc_errors(agent.address):
        try:
            _stream_logs(agent, request, timestamps=args.timestamps)
        except KeyboardInterrupt:
            return 130
    return 0


def _filters(raw: list[str]) -> tuple[dict[str, str], str]:
    labels, name = {}, ""
    for item in raw:
        kind, _, rest = item.partition("=")
        if kind == "label":
            labels.update(_key_values([rest], "label filter"))
        elif kind == "name":
            name = rest
        else:
            raise CliError(f"unsupported filter {item!r}: use label=KEY=VALUE or name=NAME")
    return labels, name


def cmd_ps(agent: Agent, args: argparse.Namespace) -> int:
    labels, name = _filters(args.filter)
    found: list[pb.Container] = []
    token = ""
    with rpc_errors(agent.address):
        while True:  # the agent pages its answer so no reply exceeds a message limit
            page = agent.containers.ListContainers(
                pb.ListContainersRequest(all=args.all, labels=labels, name=name, page_token=token))
            found.extend(page.containers)
            token = page.next_page_token
            if not token:
                break
    if args.quiet:
        for ctr in found:
            print(ctr.id if args.no_trunc else ctr.id[:12])
        return 0
    rows = [
        [ctr.id if args.no_trunc else ctr.id[:12], ctr.spec.image,
         command_line(ctr.argv, width=10_000 if args.no_trunc else 20),
         ago(ctr.created_at.ToNanoseconds() / 1e9), status_line(ctr), ctr.ip_address,
         ports_line(ctr.ports), ctr.name]
        for ctr in found
    ]
    print(table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "ADDRESS", "PORTS", "NAMES"],
                rows))
    return 0


def _each(agent: Agent, refs: list[str], call: Callable[[str], Any]) -> int:
    """Apply ``call`` to every ref, docker style: print each success, report each failure, go on."""
    status = 0
    for ref in refs:
        try:
            call(ref)
            print(ref)
        except RpcFailure as err:
            print(f"shoal: {describe_rpc_error(err, agent.address)}", file=sys.stderr)
            status = 1
    return status


def cmd_start(agent: Agent, args: argparse.Namespace) -> int:
    return _each(agent, args.containers,
                 lambda ref: agent.containers.StartContainer(pb.StartContainerRequest(id=ref)))


def cmd_stop(agent: Agent, args: argparse.Namespace) -> int:
    def stop(ref: str) -> None:
        request = pb.StopContainerRequest(id=ref)
        if args.time is not None:
            request.timeout_seconds = args.time
        agent.containers.StopContainer(request)

    return _each(agent, args.containers, stop)


def cmd_kill(agent: Agent, args: argparse.Namespace) -> int:
    return _each(agent, args.containers, lambda ref: agent.containers.KillContainer(
        pb.KillContainerRequest(id=ref, signal=args.signal)))


def cmd_rm(agent: Agent, args: argparse.Namespace) -> int:
    return _each(agent, args.containers, lambda ref: agent.containers.RemoveContainer(
        pb.RemoveContainerRequest(id=ref, force=args.force)))


def cmd_wait(agent: Agent, args: argparse.Namespace) -> int:
    with rpc_errors(agent.address):
        for ref in args.containers:
            print(agent.containers.WaitContainer(pb.ContainerRef(id=ref)).exit_code)
    return 0


def cmd_exec(agent: Agent, args: argparse.Namespace) -> int:
    if not args.command:
        raise CliError("exec needs a command: shoal exec CONTAINER COMMAND [ARG...]")
    request = pb.ExecRequest(id=args.container, command=args.command, env=args.env,
                             working_dir=args.workdir, user=args.user)
    code = 0
    with rpc_errors(agent.address, code=126):
        for out in agent.containers.Exec(request):
            kind = out.WhichOneof("payload")
            if kind == "stdout":
                sys.stdout.buffer.write(out.stdout)
                sys.stdout.buffer.flush()
            elif kind == "stderr":
                sys.stderr.buffer.write(out.stderr)
                sys.stderr.buffer.flush()
            else:
                code = out.exit_code
    return code



_STATE_NAMES = {pb.CONTAINER_STATE_CREATED: "created", pb.CONTAINER_STATE_RUNNING: "running",
                pb.CONTAINER_STATE_EXITED: "exited", pb.CONTAINER_STATE_RESTARTING: "restarting"}


def container_json(ctr: pb.Container) -> dict[str, Any]:
    from agent.protolite import to_dict

    raw = to_dict(ctr, always_print_fields_with_no_presence=True)
    raw["state"] = _STATE_NAMES.get(ctr.state, "unknown")
    raw["short_id"] = short_id(ctr.id)
    return raw


def cmd_inspect(agent: Agent, args: argparse.Namespace) -> int:
    import json

    out = []
    with rpc_errors(agent.address):
        for ref in args.containers:
            out.append(container_json(agent.containers.GetContainer(pb.ContainerRef(id=ref))))
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0
