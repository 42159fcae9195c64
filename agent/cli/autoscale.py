"""``shoal autoscale``: a service's autoscale policy from the command line, as ``kubectl autoscale`` sets an
HPA's.

``shoal autoscale web --min 2 --max 20 --cpu-percent 60`` sets the policy (the scheduler then keeps the
count within 2-20 following the metrics); ``shoal autoscale web --off`` removes it and leaves the count
where it is. Flags merge into the policy the service has: without ``--min``/``--max``/``--tolerance`` those
stay, without a metric flag the metrics stay, and ``--cpu-percent``/``--memory-percent`` replace the
policy's cpu and memory items (its prometheus metrics, which only the service file declares, stay). The
merged policy goes to ``AutoscaleService`` with the generation it was read at, so a concurrent change is
never overwritten: the read and merge are done again (a few times) unless ``--expected-generation`` was
given, which is then the caller's premise and refused when stale.

The first word after ``autoscale`` is read the way argparse reads a sub-command, except that a word which
is not one is a service's name: ``shoal autoscale replay FILE`` (decision inputs replayed offline) is a
sub-command, so a service named ``replay`` is given as ``service/replay`` (or ``service replay``, as
``kubectl autoscale deployment web`` names its kind).
"""

from __future__ import annotations

import argparse

from agent.cli import autoscale_decisions
from agent.cli import cluster_output as out
from agent.cli.client import CliError
from agent.cli.scheduler_client import Scheduler, scheduler_errors
from agent.cli.transport import RpcFailure
from proto.scheduler.v1 import scheduler_lite as spb

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

COMMANDS = ("autoscale",)
SERVICE_VERB = "service"
KIND_PREFIXES = ("service/", "services/", "svc/")  # service/replay: a service, whatever its name
MERGE_ATTEMPTS = 5  # read, merge and write again when the service changed in between


class _ServiceOrVerb(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Sub-commands of ``autoscale`` where any other first word is the name of a service: it (and what
    follows) goes to the ``service`` sub-command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.choices = None  # type: ignore[assignment]  # any word: not a sub-command means a service

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Sequence[Any] | str | None, option_string: str | None = None) -> None:
        words = list(values or [])
        first = words[0] if words else ""
        prefix = next((p for p in KIND_PREFIXES if first.startswith(p)), None)
        if prefix is not None:
            words = [SERVICE_VERB, first[len(prefix):], *words[1:]]
        elif first not in self._name_parser_map:
            words = [SERVICE_VERB, *words]
        super().__call__(parser, namespace, words, option_string)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = ("shoal autoscale [service] SERVICE (--min N --max N [--cpu-percent P] [--memory-percent P] "
             "[--tolerance F] | --off) [--expected-generation G]")
    autoscale = sub.add_parser(
        "autoscale", usage=usage, help="set or remove a service's autoscale policy (like kubectl autoscale)",
        description="Set a service's autoscale policy (the scheduler keeps its replica count within "
                    "--min..--max following the metrics, by Kubernetes' HPA rules), or remove it with --off.")
    verbs = autoscale.add_subparsers(dest="autoscale_command", required=True, metavar="SERVICE",
                                     action=_ServiceOrVerb, prog="shoal autoscale")
    service = verbs.add_parser(
        SERVICE_VERB, usage=usage, help="the service to autoscale (the word 'service' may come first)",
        description="Flags merge into the service's policy: what is not given stays. --cpu-percent and "
                    "--memory-percent replace the policy's cpu and memory metrics; its prometheus metrics "
                    "(declared in the service file) stay.")
    service.add_argument("name", metavar="SERVICE", help="the service (service/NAME for one named like a "
                                                         "sub-command)")
    service.add_argument("--min", type=int, default=None, metavar="N",
                         help="fewest replicas (default for a new policy: 1; 0 needs a service-level "
                              "prometheus metric)")
    service.add_argument("--max", type=int, default=None, metavar="N",
                         help="most replicas (required for a service that is not autoscaled yet)")
    service.add_argument("--cpu-percent", type=int, default=None, metavar="P",
                         help="target cpu utilization, in percent of the replica's cpu request")
    service.add_argument("--memory-percent", type=int, default=None, metavar="P",
                         help="target memory utilization, in percent of the replica's memory request")
    service.add_argument("--tolerance", type=float, default=None, metavar="F",
                         help="no scaling while the metrics are within this fraction of their targets, both "
                              "ways (default 0.1)")
    service.add_argument("--off", action="store_true",
                         help="remove the policy; the replica count stays where it is")
    service.add_argument("--expected-generation", type=int, default=0, metavar="G",
                         help="only if the service is still at generation G (refused otherwise)")
    service.set_defaults(func=cmd_autoscale, cluster=True)
    autoscale_decisions.add_parsers(verbs)


# -- the policy from the flags ------------------------------------------------------------------------------

def _check_flags(args: argparse.Namespace) -> None:
    changes = [flag for flag, value in (("--min", args.min), ("--max", args.max),
                                        ("--cpu-percent", args.cpu_percent),
                                        ("--memory-percent", args.memory_percent),
                                        ("--tolerance", args.tolerance)) if value is not None]
    if args.off:
        if changes:
            raise CliError(f"--off removes the policy: give it without {', '.join(changes)}")
        return
    if not changes:
        raise CliError("nothing to set: give --min/--max and a metric (--cpu-percent, --memory-percent), "
                       "or --off")
    if args.min is not None and args.min < 0:
        raise CliError(f"--min must be 0 or more, got {args.min}")
    if args.max is not None and args.max < 1:
        raise CliError(f"--max must be at least 1, got {args.max}")
    if args.min is not None and args.max is not None and args.min > args.max:
        raise CliError(f"--min ({args.min}) is above --max ({args.max})")
    for flag, percent in (("--cpu-percent", args.cpu_percent), ("--memory-percent", args.memory_percent)):
        if percent is not None and percent < 1:
            raise CliError(f"{flag} must be at least 1, got {percent}")
    if args.tolerance is not None and not 0 <= args.tolerance < 1:
        raise CliError(f"--tolerance must be at least 0 and below 1 (0.1 is 10 %), got {args.tolerance:g}")


def merged_policy(current: spb.Autoscale | None, args: argparse.Namespace) -> spb.Autoscale:
    """The policy the flags ask for, on top of ``current`` (the service's, None when it has none)."""
    policy = spb.Autoscale.FromString(current.SerializeToString()) if current is not None else spb.Autoscale()
    if current is None and args.max is None:
        raise CliError("the service is not autoscaled yet: give --max (and --min, 1 if left out)")
    if args.min is not None:
        policy.min_replicas = args.min
    if args.max is not None:
        policy.max_replicas = args.max
    if args.cpu_percent is not None or args.memory_percent is not None:
        utilization = [spb.MetricTarget(kind=kind, target_utilization_percent=percent)
                       for kind, percent in (("cpu", args.cpu_percent), ("memory", args.memory_percent))
                       if percent is not None]
        policy.metrics = utilization + [m for m in policy.metrics if m.kind not in ("cpu", "memory")]
    elif not policy.metrics:
        raise CliError("give the metric to scale on: --cpu-percent P and/or --memory-percent P (prometheus "
                       "metrics are declared in the service file's autoscale section)")
    if args.tolerance is not None:
        policy.tolerance_up = policy.tolerance_down = args.tolerance
    return policy


def policy_line(service: spb.Service) -> str:
    """``service/web autoscaled: 2-20 replicas on cpu 60%`` (with an en dash)."""
    policy = service.spec.autoscale
    return (f"service/{service.spec.name} autoscaled: {out.autoscale_range(policy)} replicas on "
            f"{out.targets_text(policy)}")


# -- the verb ----------------------------------------------------------------------------------------------

def cmd_autoscale(scheduler: Scheduler, args: argparse.Namespace) -> int:
    _check_flags(args)
    api = scheduler.api
    with scheduler_errors(scheduler.conn):
        if args.off:
            service = api.AutoscaleService(spb.AutoscaleServiceRequest(
                name=args.name, off=True, expected_generation=args.expected_generation))
            print(f"service/{service.spec.name} autoscaling off: replicas stay at {service.spec.replicas}")
            return 0
        # --expected-generation is the caller's premise: one try, which the scheduler refuses when stale.
        for _ in range(1 if args.expected_generation else MERGE_ATTEMPTS):
            current = api.GetService(spb.GetServiceRequest(name=args.name))
            have = current.spec.autoscale if current.spec.HasField("autoscale") else None
            request = spb.AutoscaleServiceRequest(
                name=args.name, autoscale=merged_policy(have, args),
                expected_generation=args.expected_generation or current.generation)
            try:
                service = api.AutoscaleService(request)
            except RpcFailure as err:
                if err.code == "ABORTED" and not args.expected_generation:
                    continue  # it changed since it was read: merge into what it is now
                raise
            print(policy_line(service))
            return 0
    raise CliError(f"service/{args.name} kept changing while its policy was being set; retry")


__all__ = ["COMMANDS", "add_parsers", "cmd_autoscale", "merged_policy", "policy_line"]
