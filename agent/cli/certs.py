"""``shoal certs``: create the cluster CA and the certificates for mutual TLS (``agent/certs.py``)."""

from __future__ import annotations

import argparse

from agent.cli.client import Agent, CliError
from agent.errors import ShoalError

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from pathlib import Path

# The same as agent.certs.KINDS (a test checks): spelled out so the parser need not import
# cryptography, which costs every CLI invocation ~45 ms.
KINDS = ("agent", "scheduler", "client")


def _path(text: str) -> Path:
    from pathlib import Path  # only for these verbs: pathlib costs every other command's start-up

    return Path(text)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("certs", help="mutual-TLS certificates for agents, schedulers and clients")
    csub = group.add_subparsers(dest="certs_command", required=True, prog="shoal certs")
    init = csub.add_parser("init", help="create a CA and an agent, scheduler and client certificate")
    init.add_argument("dir", type=_path)
    init.add_argument("--host", action="append", default=[], dest="hosts", metavar="NAME|IP",
                      help="name or address the agent/scheduler serve on (repeatable; "
                           "default: this host's name, localhost, 127.0.0.1, ::1)")
    init.add_argument("--days", type=int, default=365, help="validity of the leaf certificates")
    init.add_argument("--force", action="store_true", help="replace an existing CA and certificates")
    init.set_defaults(func=cmd_init, offline=True)

    issue = csub.add_parser("issue", help="issue another certificate with the CA in DIR")
    issue.add_argument("dir", type=_path)
    issue.add_argument("--kind", choices=KINDS, required=True)
    issue.add_argument("--name", required=True, help="file stem and common name, e.g. agent-host7")
    issue.add_argument("--host", action="append", default=[], dest="hosts", metavar="NAME|IP")
    issue.add_argument("--days", type=int, default=365)
    issue.add_argument("--force", action="store_true")
    issue.set_defaults(func=cmd_issue, offline=True)


def cmd_init(agent: Agent | None, args: argparse.Namespace) -> int:
    from agent import certs

    try:
        written = certs.init_pki(args.dir, hosts=args.hosts or certs.default_hosts(), days=args.days,
                                 force=args.force)
    except ShoalError as err:
        raise CliError(str(err)) from None
    for path in written:
        print(path)
    print(f"agents: --tls-dir {args.dir}; clients: shoal --tls-dir {args.dir}. Keep ca-key.pem safe.")
    return 0


def cmd_issue(agent: Agent | None, args: argparse.Namespace) -> int:
    from agent import certs

    try:
        ca = certs.load_ca(args.dir)
        pair = certs.issue(ca, args.name, kind=args.kind, hosts=args.hosts, days=args.days)
        certs.write_pair(args.dir, args.name, pair, overwrite=args.force)
    except ShoalError as err:
        raise CliError(str(err)) from None
    print(args.dir / f"{args.name}.pem")
    return 0
