"""``shoal``: the command line. Docker-like verbs for one host, talking to ``shoal-agent``, and
kubectl-like verbs for the cluster, talking to ``shoal-scheduler`` (``agent/cli/cluster.py``).

Start-up is most of what a ``shoal`` process costs, so this package imports only the standard library's
small modules, its own lite messages and the pure parsers of ``agent/parsing.py``: no grpc, no
protobuf runtime, no rich (unless drawing progress bars), no asyncio, no typing (see
``agent/cli/transport.py``; a unit test keeps it that way).
"""

from __future__ import annotations

import argparse
import sys

from agent.cli.client import CliError, connect, resolve_address

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from typing import Any

    from agent.cli.client import Agent
    from agent.cli.scheduler_client import Scheduler


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


class _Unused:
    """What ``add_parser`` gives for a command this invocation does not run: every call is a no-op."""

    def __getattr__(self, name: str) -> object:
        return self._ignore

    def _ignore(self, *args: object, **kwargs: object) -> _Unused:
        return self


# Typed as a parser for the modules that fill it in; it only swallows their calls.
_UNUSED: argparse.ArgumentParser = _Unused()  # type: ignore[assignment]


class _SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """With ``only`` set, builds that command's parser alone: building all of them (≈ 100 arguments)
    cost every invocation more than parsing its own."""

    only: str | None = None

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if self.only is not None and name != self.only:
            return _UNUSED
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        return parser


class _Parser(argparse.ArgumentParser):
    """Subparsers are made with the parent's class, so every parser of the CLI gets the formatter."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.register("action", "parsers", _SubParsers)


# Command → the module that defines it, in the order their help lists them.
_MODULES = ("containers", "images", "system", "observe", "cluster", "autoscale", "certs")
COMMANDS = {**dict.fromkeys(("run", "create", "ps", "logs", "start", "stop", "kill", "rm", "wait", "exec",
                             "inspect"), "containers"),
            "image": "images", "system": "system", "events": "observe", "stats": "observe",
            "host": "observe", "certs": "certs",
            # The same list as agent.cli.cluster.COMMANDS (a test checks): importing it costs start-up.
            **dict.fromkeys(("apply", "get", "scale", "describe", "delete", "cordon", "uncordon", "drain",
                             "explain", "rollout", "top"), "cluster"),
            "autoscale": "autoscale"}
_GLOBAL_WITH_VALUE = ("--agent", "--scheduler", "--tls-dir")


def command_word(argv: list[str]) -> str | None:
    """The command ``argv`` runs, if it is plainly one of ours; None when in doubt (help, an unknown
    word, an option we do not know): then the whole parser is built, so every message is the same."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            matches = [o for o in _GLOBAL_WITH_VALUE if len(name) > 2 and o.startswith(name)]
            if len(matches) != 1:
                return None  # -h, --, or something argparse must explain
            skip = "=" not in arg
            continue
        return arg if arg in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv``, with only the parser of the command it runs filled in."""
    parser: argparse.ArgumentParser = _Parser(
        prog="shoal", description="Run and manage containers through a Shoal agent, and services through a "
                                  "Shoal scheduler.")
    parser.add_argument("--agent", default=None, metavar="ADDR",
                        help="agent address: unix:///PATH or HOST:PORT "
                             "(default $SHOAL_AGENT or unix:///run/shoal/agent.sock)")
    parser.add_argument("--scheduler", default=None, metavar="ADDR[,ADDR...]",
                        help="scheduler address(es) for the cluster verbs (apply, get, scale...): HOST:PORT "
                             "or unix:///PATH, the next tried when one is down (default $SHOAL_SCHEDULER or "
                             "127.0.0.1:7400)")
    parser.add_argument("--tls-dir", default=None,
                        help="ca.pem, client.pem, client-key.pem for an mTLS TCP agent or scheduler")
    # prog given: otherwise argparse formats a usage line (importing shutil) on every start.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="shoal")
    only = command_word(argv) if argv is not None else None
    if isinstance(sub, _SubParsers):
        sub.only = only
    # Only the module of the command being run is imported (each costs start-up time).
    for name in _MODULES if only is None else (COMMANDS[only],):
        module = __import__(f"agent.cli.{name}", fromlist=["add_parsers"])  # not importlib: its cost
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(words).parse_args(words)
    # Offline verbs (certs) need no agent, cluster verbs a scheduler; each connects on its first call.
    client: Agent | Scheduler | None = None
    try:
        if getattr(args, "cluster", False):
            from agent.cli.scheduler_client import connect_scheduler

            client = connect_scheduler(args.scheduler, tls_dir=args.tls_dir)
        elif not getattr(args, "offline", False):
            client = connect(resolve_address(args.agent), tls_dir=args.tls_dir)
        code = args.func(client, args)
    except CliError as err:
        print(f"shoal: {err}", file=sys.stderr)
        code = err.code
    except BrokenPipeError:
        code = 0
    finally:
        if client is not None:
            client.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
