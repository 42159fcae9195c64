"""``shoal autoscale history SERVICE`` and ``shoal autoscale replay FILE``: the autoscaler's decisions,
and any decision made again from its input.

``history`` lists the decisions the scheduler recorded for a service (every scale, and every change of
outcome), oldest first: when, the count before and after, and the reason in plain words; ``-o json``
adds each decision's input as a JSON object, ready for ``replay``. ``replay`` sends one input (a file, or
``-`` for standard input; docs/autoscaling.md has the format) to the scheduler, which runs the very rules
its leader runs on it and touches nothing; the decision is printed as JSON (``desired_replicas`` or
``error``, the reason, and each metric's figures). An input the rules refuse is reported with its JSON
path and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from agent.cli import cluster_output as out
from agent.cli.client import CliError
from agent.cli.output import table
from agent.cli.scheduler_client import Scheduler, scheduler_errors
from proto.scheduler.v1 import scheduler_lite as spb

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from typing import Any


def add_parsers(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = verbs.add_parser("history", help="the autoscaler's recorded decisions for a service",
                               description="The autoscaler's recorded decisions for SERVICE, oldest first.")
    history.add_argument("service", metavar="SERVICE")
    history.add_argument("-o", "--output", choices=["json"], default=None,
                         help="json: an array of objects, each with its input (for replay)")
    history.set_defaults(func=cmd_history, cluster=True)
    replay = verbs.add_parser("replay", help="make a decision again from its input (docs/autoscaling.md)",
                              description="Print, as JSON, the decision the autoscaler's rules make from the "
                                          "input in FILE (- for standard input).")
    replay.add_argument("file", metavar="FILE")
    replay.set_defaults(func=cmd_replay, cluster=True)


def decision_json(decision: spb.AutoscaleDecision) -> dict[str, Any]:
    try:
        document: Any = json.loads(decision.input_json) if decision.input_json else None
    except ValueError:
        document = None
    return {"time": out.timestamp(decision.time), "current_replicas": decision.current_replicas,
            "desired_replicas": decision.desired_replicas, "reason": decision.reason,
            "error": decision.error or None, "input": document}


def cmd_history(scheduler: Scheduler, args: argparse.Namespace) -> int:
    with scheduler_errors(scheduler.conn):
        status = scheduler.api.GetAutoscaleStatus(spb.GetServiceRequest(name=args.service))
    if args.output == "json":
        print(json.dumps([decision_json(d) for d in status.decisions], indent=2, ensure_ascii=False))
        return 0
    if not status.decisions:
        print(f"service/{args.service}: no decision recorded yet")
        return 0
    rows = [[out.timestamp(d.time) or "-", str(d.current_replicas), str(d.desired_replicas), d.reason]
            for d in status.decisions]
    print(table(["TIME", "FROM", "TO", "REASON"], rows))
    return 0


def cmd_replay(scheduler: Scheduler, args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as source:
                text = source.read()
    except OSError as err:
        raise CliError(f"cannot read {args.file}: {err.strerror or err}") from None
    with scheduler_errors(scheduler.conn):
        reply = scheduler.api.ReplayAutoscale(spb.ReplayAutoscaleRequest(input_json=text))
    sys.stdout.write(reply.output_json)
    return 0


__all__ = ["add_parsers", "cmd_history", "cmd_replay", "decision_json"]
