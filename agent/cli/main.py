"""``shoal``: the command line. Docker-like verbs for one host, talking to ``shoal-agent``.

Start-up is most of what a ``shoal`` process costs, so this package imports only the standard library's
small modules, its own lite messages and the pure parsers of ``agent/runtime/parse.py``: no grpc, no
protobuf runtime, no rich (unless drawing progress bars), no asyncio, no typing (see
``agent/cli/transport.py``; a unit test keeps it that way).
"""

from __future__ import annotations

import argparse
import sys

from agent.cli import certs, containers, images, observe, system
from agent.cli.client import CliError, connect, resolve_address


class _HelpFormatter(argparse.HelpFormatter):
    """argparse builds a formatter for every ``add_argument`` (to check its metavar); the stock one
    asks the terminal for its width each time, importing shutil. Ask only when help is printed."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        self._lazy_width = width is None
        self._asked_position = max_help_position
        super().__init__(prog, indent_increment, max_help_position, width=width or 78)

    def format_help(self) -> str:
        if self._lazy_width:
            import shutil

            self._width = shutil.get_terminal_size().columns - 2
            self._max_help_position = min(self._asked_position,
                                          max(self._width - 20, self._indent_increment * 2))
            self._lazy_width = False
        return super().format_help()


class _Parser(argparse.ArgumentParser):
    """Subparsers are made with the parent's class, so every parser of the CLI gets the formatter."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(prog="shoal",
                                              description="Run and manage containers through a Shoal agent.")
    parser.add_argument("--agent", default=None, metavar="ADDR",
                        help="agent address: unix:///PATH or HOST:PORT "
                             "(default $SHOAL_AGENT or unix:///run/shoal/agent.sock)")
    parser.add_argument("--tls-dir", default=None,
                        help="ca.pem, client.pem, client-key.pem for an mTLS TCP agent")
    # prog given: otherwise argparse formats a usage line (importing shutil) on every start.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="shoal")
    containers.add_parsers(sub)
    images.add_parsers(sub)
    system.add_parsers(sub)
    observe.add_parsers(sub)
    certs.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Offline verbs (certs) need no agent; the others connect on their first call.
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
            agent.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
