"""The cluster verbs of ``shoal``: kubectl-like commands against a scheduler instead of one agent.

``apply -f`` (services and host groups), ``get`` (``cluster_get.py``), ``scale``, ``describe`` and
``explain`` (``cluster_describe.py``), ``delete service|hostgroup``, ``cordon``/``uncordon``/``drain``,
``rollout status|undo`` and ``top`` (``top.py``, imported only when it runs: it draws with rich).
Each is a thin client of the scheduler's API: the YAML goes to the scheduler as written (it validates,
and names the path and line of any mistake), and every message shown is the scheduler's.
The scheduler is ``--scheduler ADDR`` or ``$SHOAL_SCHEDULER``, several comma-separated addresses
allowed (``scheduler_client.py``); ``--tls-dir`` holds the client certificate, as for agents.

Exit status: 0 on success, 1 when the scheduler refused or could not be reached (the message says which),
2 for a command line argparse refuses; a watch ended with Ctrl-C is a success.
"""

from __future__ import annotations

import argparse
import os
import sys

from agent.cli import cluster_describe, cluster_get
from agent.cli.client import CliError
from agent.cli.scheduler_client import Scheduler, describe_failure, is_unreachable, scheduler_errors
from agent.cli.transport import RpcFailure
from proto.scheduler.v1 import scheduler_lite as spb

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

COMMANDS = ("apply", "get", "scale", "describe", "delete", "cordon", "uncordon", "drain", "explain",
            "rollout", "top")
YAML_SUFFIXES = (".yaml", ".yml", ".json")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apply = sub.add_parser("apply", help="create or update services and host groups from service files "
                                         "(YAML)")
    apply.add_argument("-f", "--filename", action="append", required=True, dest="files", metavar="FILE",
                       help="a service file, a directory of them, or - for stdin (repeatable)")
    apply.set_defaults(func=cmd_apply, cluster=True)

    cluster_get.add_parser(sub)

    scale = sub.add_parser("scale", help="set the number of replicas of a service")
    scale.add_argument("service")
    scale.add_argument("--replicas", type=int, required=True, metavar="N")
    scale.add_argument("--expected-generation", type=int, default=0, metavar="G",
                       help="only if the service is still at generation G (refused otherwise)")
    scale.set_defaults(func=cmd_scale, cluster=True)

    describe = sub.add_parser("describe", help="a service, host, replica, scheduler instance or host "
                                               "group in detail")
    describe.add_argument("kind", metavar="service|host|replica|scheduler|hostgroup")
    describe.add_argument("name")
    describe.set_defaults(func=cluster_describe.cmd_describe, cluster=True)

    delete = sub.add_parser("delete", help="delete a service (its replicas are stopped and removed), a "
                                           "host group (its hosts stay) or a host that is gone")
    delete.add_argument("kind", metavar="service|hostgroup|host")
    delete.add_argument("name")
    delete.add_argument("--force", action="store_true",
                        help="a host group: even with provider requests undelivered or drains in flight")
    delete.set_defaults(func=cmd_delete, cluster=True)

    for verb, text in (("cordon", "place no new replicas on a host"),
                       ("uncordon", "place replicas on a host again"),
                       ("drain", "cordon a host and move its replicas elsewhere")):
        host = sub.add_parser(verb, help=text)
        host.add_argument("host", help="host id or name")
        if verb == "drain":
            host.add_argument("--wait", action="store_true", help="return once the host is drained")
            host.add_argument("--timeout", default=None, metavar="DURATION",
                              help="with --wait: give up after this long (e.g. 5m); exit status 1")
        host.set_defaults(func=cmd_host, cluster=True, verb=verb)

    explain = sub.add_parser("explain", help="why a replica is on its host, or why it is pending")
    explain.add_argument("kind", metavar="replica")
    explain.add_argument("name", metavar="ID")
    explain.add_argument("-o", "--output", choices=["json"], default=None)
    explain.set_defaults(func=cluster_describe.cmd_explain, cluster=True)

    rollout = sub.add_parser("rollout", help="the rollout of a service's latest template")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True, prog="shoal rollout")
    status = rsub.add_parser("status", help="how far the rollout is")
    status.add_argument("service")
    status.add_argument("-w", "--watch", action="store_true", help="wait until it is complete")
    status.add_argument("--timeout", default=None, metavar="DURATION",
                        help="with --watch: give up after this long (e.g. 5m); exit status 1")
    status.set_defaults(func=cmd_rollout_status, cluster=True)
    undo = rsub.add_parser("undo", help="go back to the previous template")
    undo.add_argument("service")
    undo.set_defaults(func=cmd_rollout_undo, cluster=True)

    _add_top_parser(sub)


def _add_top_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser(
        "top", help="a live view of hosts, services and replicas, redrawn in place",
        description="Hosts (state, zone, replicas, cpu and memory requested of allocatable, conditions), "
                    "services (desired, running, ready, pending, updated; for autoscaled ones the last "
                    "decision's metrics against their targets) and the replicas on each host, redrawn "
                    "every --delay seconds until Ctrl-C. Not on a terminal, or with -n, frames are printed "
                    "one after another (plain text when not a terminal), like top -b. A scheduler that "
                    "cannot be reached is shown in the frame and tried again (the next --scheduler address "
                    "first); only a first frame in batch mode that cannot be read is an error. The "
                    "schedulers are shoal --scheduler A,B [--tls-dir DIR] top, or $SHOAL_SCHEDULER.")
    top.add_argument("-n", "--iterations", type=_frames, default=None, metavar="N",
                     help="print N frames, then exit (-n 1: one snapshot)")
    top.add_argument("-d", "--delay", type=_delay, default=1.0, metavar="SECONDS",
                     help="seconds between frames (default 1; fractions allowed)")
    top.add_argument("--service", action="append", default=[], metavar="NAME",
                     help="show only this service and its replicas (repeatable)")
    top.set_defaults(func=_cmd_top, cluster=True)


def _frames(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of frames, 1 or more, not {text!r}")
    return value


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86400:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 (e.g. 1 or 0.5), not {text!r}")
    return value


def _cmd_top(scheduler: Scheduler, args: argparse.Namespace) -> int:
    from agent.cli import top  # rich and dataclasses: only for the command that draws with them

    return top.cmd_top(scheduler, args)


# -- apply ----------------------------------------------------------------------------------------------

def _sources(names: list[str]) -> Iterator[tuple[str, str]]:
    """(name for messages, text) of every file named, directories expanded (their YAML files, sorted)."""
    for name in names:
        if name == "-":
            yield "<stdin>", sys.stdin.read()
            continue
        paths = [name]
        if os.path.isdir(name):
            paths = [os.path.join(name, f) for f in sorted(os.listdir(name)) if f.endswith(YAML_SUFFIXES)]
            if not paths:
                raise CliError(f"no service files (*.yaml, *.yml) in {name}")
        for path in paths:
            try:
                with open(path, encoding="utf-8") as f:
                    yield path, f.read()
            except (OSError, UnicodeDecodeError) as err:
                reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
                raise CliError(f"cannot read {path}: {reason}") from None


def cmd_apply(scheduler: Scheduler, args: argparse.Namespace) -> int:
    sources = list(_sources(args.files))  # all read before anything is applied
    status = 0
    for source, text in sources:
        try:
            response = scheduler.api.ApplyService(spb.ApplyServiceRequest(yaml=text, source=source))
        except RpcFailure as err:
            if is_unreachable(err):
                raise CliError(describe_failure(err, scheduler.conn)) from None
            for line in (err.message or err.code).splitlines():
                print(f"shoal: {line}", file=sys.stderr)
            status = 1
            continue
        for result in response.results:
            if result.kind == "hostgroup":
                print(f"hostgroup/{result.hostgroup.spec.name} {result.action}")
                continue
            # An autoscaled service keeps the count its autoscaler set: the file's replicas did not apply.
            spec = result.service.spec
            kept = f" (replicas {spec.replicas} kept: autoscaled)" if result.replicas_kept else ""
            print(f"service/{spec.name} {result.action}{kept}")
    return status


# -- scale, delete, hosts ------------------------------------------------------------------------------------

def cmd_scale(scheduler: Scheduler, args: argparse.Namespace) -> int:
    if args.replicas < 0:
        raise CliError(f"--replicas must be 0 or more, got {args.replicas}")
    with scheduler_errors(scheduler.conn):
        service = scheduler.api.ScaleService(spb.ScaleServiceRequest(
            name=args.service, replicas=args.replicas, expected_generation=args.expected_generation))
    print(f"service/{service.spec.name} scaled to {service.spec.replicas} (generation {service.generation})")
    return 0


def cmd_delete(scheduler: Scheduler, args: argparse.Namespace) -> int:
    kind = cluster_get.KIND_WORDS.get(args.kind)
    if kind not in ("services", "hostgroups", "hosts"):
        raise CliError(f"only services, host groups and hosts can be deleted (not {args.kind!r}): shoal "
                       "delete service NAME, shoal delete hostgroup NAME, shoal delete host NAME|ID")
    if args.force and kind != "hostgroups":
        raise CliError("--force is for host groups (a service's deletion waits for nothing, and a host "
                       "is deleted only once it is gone)")
    with scheduler_errors(scheduler.conn):
        if kind == "hosts":
            host = scheduler.api.DeleteHost(spb.HostRequest(host=args.name))
            print(f"host/{host.name or host.id} deleted")
            return 0
        if kind == "hostgroups":
            request = spb.DeleteHostGroupRequest(name=args.name, force=args.force)
            response = scheduler.api.DeleteHostGroup(request)
            members = response.hostgroup.status.hosts
            kept = "its host stays" if members == 1 else f"its {members} hosts stay"
            print(f"hostgroup/{args.name} deleted" + (f" ({kept})" if members else ""))
            return 0
        scheduler.api.DeleteService(spb.DeleteServiceRequest(name=args.name))
    print(f"service/{args.name} deleted")
    return 0


_HOST_CALLS = {"cordon": ("CordonHost", "cordoned"), "uncordon": ("UncordonHost", "uncordoned"),
               "drain": ("DrainHost", "draining")}


def cmd_host(scheduler: Scheduler, args: argparse.Namespace) -> int:
    method, done = _HOST_CALLS[args.verb]
    timeout = _timeout(getattr(args, "timeout", None))  # refused before anything is asked
    with scheduler_errors(scheduler.conn):
        host = getattr(scheduler.api, method)(spb.HostRequest(host=args.host))
        name = host.name or host.id
        if args.verb == "drain" and args.wait and host.state != spb.HOST_STATE_DRAINED:
            print(f"host/{name} draining: waiting for its {host.replicas} replicas to move")
            sys.stdout.flush()
            wait_until(scheduler, kinds=["host", "replica"], service="", timeout=timeout,
                       revision=lambda: _revision(scheduler, spb.ListReplicasRequest(host=host.id)),
                       done=lambda: _drained(scheduler, host.id))
            done = "drained"
        elif host.state == spb.HOST_STATE_DRAINED:
            done = "drained"
    print(f"host/{name} {done}")
    return 0


def _revision(scheduler: Scheduler, request: spb.ListReplicasRequest) -> int:
    """The store's revision now, from a listing of the few replicas concerned (not of every host)."""
    revision: int = scheduler.api.ListReplicas(request).revision
    return revision


def _drained(scheduler: Scheduler, host_id: str) -> bool:
    return scheduler.api.GetHost(spb.GetHostRequest(host=host_id)).state == spb.HOST_STATE_DRAINED


# -- rollouts -----------------------------------------------------------------------------------------------

def rollout_line(rollout: spb.Rollout) -> str:
    if rollout.complete:
        head = f"service/{rollout.service} rolled out"
    else:
        head = (f"service/{rollout.service}: {rollout.updated} of {rollout.desired} replicas updated, "
                f"{rollout.updated_ready} ready, {rollout.old} old")
    detail = f" (template generation {rollout.template_generation})"
    return head + detail + (f": {rollout.message}" if rollout.message else "")


def cmd_rollout_status(scheduler: Scheduler, args: argparse.Namespace) -> int:
    timeout = _timeout(args.timeout)
    request = spb.GetServiceRequest(name=args.service)
    last = ""

    def complete() -> bool:
        nonlocal last
        rollout = scheduler.api.RolloutStatus(request)
        line = rollout_line(rollout)
        if line != last:
            print(line)
            sys.stdout.flush()
            last = line
        return rollout.complete

    with scheduler_errors(scheduler.conn):
        if not args.watch:
            complete()
            return 0
        wait_until(scheduler, kinds=["service", "replica"], service=args.service, timeout=timeout,
                   revision=lambda: _revision(scheduler, spb.ListReplicasRequest(service=args.service)),
                   done=complete)
    return 0


def cmd_rollout_undo(scheduler: Scheduler, args: argparse.Namespace) -> int:
    with scheduler_errors(scheduler.conn):
        service = scheduler.api.RolloutUndo(spb.RolloutUndoRequest(name=args.service))
    print(f"service/{service.spec.name} rolled back (template generation {service.template_generation}, "
          f"generation {service.generation})")
    return 0


# -- waiting ------------------------------------------------------------------------------------------------

class _TimedOut(Exception):
    pass


class Timeout:
    """``--timeout`` as typed (for the message) and in seconds."""

    def __init__(self, text: str, seconds: float) -> None:
        self.text, self.seconds = text, seconds


def _timeout(text: str | None) -> Timeout | None:
    if not text:
        return None
    from agent import parsing
    from agent.errors import InvalidArgument

    try:
        return Timeout(text, parsing.parse_duration(text, what="timeout"))
    except InvalidArgument as err:
        raise CliError(str(err)) from None


def wait_until(scheduler: Scheduler, *, kinds: list[str], service: str, timeout: Timeout | None,
               revision: Callable[[], int], done: Callable[[], bool]) -> None:
    """Returns once ``done()`` holds, checking it again after each change the scheduler reports (its
    Watch, from ``revision()``); ``CliError`` after ``timeout``. A broken or compacted watch starts again
    from a new revision."""
    import signal

    def expire(signum: int, frame: object) -> None:
        raise _TimedOut

    if timeout is not None and timeout.seconds > 0:
        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, timeout.seconds)
    failures = 0
    try:
        while True:
            # The revision first, then the check: a change after the check is in the watch.
            after = revision()
            if done():
                return
            try:
                for _ in scheduler.api.Watch(spb.WatchRequest(after_revision=after, kinds=kinds,
                                                              service=service)):
                    failures = 0
                    if done():
                        return
            except RpcFailure as err:
                if is_unreachable(err):
                    failures += 1
                    if failures > len(scheduler.conn.addresses):
                        raise
                    scheduler.conn.give_up_on_current()
                elif err.metadata.get("shoal-error") != cluster_get.COMPACTED:
                    raise
    except _TimedOut:
        raise CliError(f"timed out after {timeout.text if timeout else '?'}") from None
    except KeyboardInterrupt:
        raise CliError("interrupted", code=130) from None
    finally:
        if timeout is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)


__all__ = ["COMMANDS", "add_parsers", "cmd_apply", "cmd_host", "cmd_rollout_status", "cmd_scale",
           "rollout_line", "wait_until"]
