"""``shoal``: the command line. Docker-like verbs for one host, talking to ``shoal-agent`` over gRPC."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli import certs, containers, images, observe, system
from agent.cli.client import CliError, connect, resolve_address


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal", description="Run and manage containers through a Shoal agent.",
    )
    parser.add_argument("--agent", default=None, metavar="ADDR",
                        help="agent address: unix:///PATH or HOST:PORT "
                             "(default $SHOAL_AGENT or unix:///run/shoal/agent.sock)")
    parser.add_argument("--tls-dir", type=Path, default=None,
                        help="ca.pem, client.pem, client-key.pem for an mTLS TCP agent")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    containers.add_parsers(sub)
    images.add_parsers(sub)
    system.add_parsers(sub)
    observe.add_parsers(sub)
    certs.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Offline verbs (certs) need no agent.
    agent = None if getattr(args, "offline", False) else connect(resolve_address(args.agent),
                                                                  tls_dir=args.tls_dir)
    try:
        code = args.func(agent, args)
    except CliError as err:
        print(f"shoal: {err}", file=sys.stderr)
        code = err.code
    except BrokenPipeError:
        code = 0
    finally:
        if agent is not None:
            agent.channel.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
