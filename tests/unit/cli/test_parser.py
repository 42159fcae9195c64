"""The CLI builds only the parser of the command it runs (agent/cli/main.py): it must parse exactly as the
whole parser does, and print the same help and errors."""

from __future__ import annotations

import contextlib
import io

import pytest

from agent.cli import main

ARGVS = [
    ["run", "--rm", "-m", "64M", "-p", "8080:80", "--restart", "on-failure:3", "img", "sh", "-c", "x"],
    ["--agent", "unix:///x.sock", "run", "-d", "--name", "n", "img"],
    ["--ag=unix:///x", "ps", "-a", "-q"],
    ["--tls-dir", "/d", "image", "pull", "-q", "r/x:1"],
    ["logs", "-f", "-n", "5", "c"],
    ["exec", "-e", "A=1", "c", "ls", "-l"],
    ["system", "df", "-v"],
    ["events", "--since", "3", "--json"],
    ["certs", "init", "/tmp/pki", "--host", "h"],
    ["--scheduler", "a:1,b:2", "get", "services", "-o", "json", "-w"],
    ["--sch=a:1", "--tls-dir", "/d", "get", "replicas", "--service", "web", "--state", "running"],
    ["apply", "-f", "web.yaml", "-f", "-"],
    ["scale", "web", "--replicas", "3", "--expected-generation", "2"],
    ["describe", "service", "web"],
    ["delete", "service", "web"],
    ["cordon", "h1"], ["uncordon", "h1"], ["drain", "h1", "--wait", "--timeout", "5m"],
    ["explain", "replica", "web-1", "-o", "json"],
    ["rollout", "status", "web", "-w"], ["rollout", "undo", "web"],
    ["autoscale", "web", "--min", "2", "--max", "20", "--cpu-percent", "60", "--tolerance", "0.2"],
    ["autoscale", "service", "web", "--off", "--expected-generation", "3"],
    ["autoscale", "svc/replay", "--max", "3"],
]


def _namespace(argv: list[str], *, lazy: bool) -> dict[str, object]:
    args = main.build_parser(argv if lazy else None).parse_args(argv)
    values = vars(args)
    values["func"] = values["func"].__qualname__
    return values


@pytest.mark.parametrize("argv", ARGVS)
def test_the_partial_parser_parses_like_the_whole_one(argv: list[str]) -> None:
    assert main.command_word(argv) is not None
    assert _namespace(argv, lazy=True) == _namespace(argv, lazy=False)


def _output(argv: list[str], *, lazy: bool) -> tuple[object, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main.build_parser(argv if lazy else None).parse_args(argv)
    return info.value.code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv", [["run", "--help"], ["image", "--help"], ["image", "nope"], ["run"],
                                  ["ps", "--bogus"], ["--agent"], ["nope"], ["--help"], [],
                                  ["get", "--help"], ["get", "services", "-o", "xml"], ["rollout"],
                                  ["scale", "web"], ["--scheduler"], ["autoscale", "--help"], ["autoscale"],
                                  ["autoscale", "web", "--help"], ["autoscale", "web", "--max"]])
def test_help_and_errors_are_the_same(argv: list[str]) -> None:
    assert _output(argv, lazy=True) == _output(argv, lazy=False)


@pytest.mark.parametrize(("argv", "word"), [
    (["ps"], "ps"), (["--agent", "x", "ps"], "ps"), (["--agent=x", "ps"], "ps"),
    (["--ag", "x", "rm", "a"], "rm"),
    (["-h"], None), (["--", "ps"], None), (["nope"], None), (["--verbose", "ps"], None), ([], None),
    (["--scheduler", "x", "get", "hosts"], "get"), (["--sched=x", "apply"], "apply"),
    (["rollout"], "rollout"),
])
def test_command_word(argv: list[str], word: str | None) -> None:
    assert main.command_word(argv) == word


def test_the_cluster_verbs_are_all_routed_to_their_module() -> None:
    from agent.cli import cluster

    assert {word for word, module in main.COMMANDS.items() if module == "cluster"} == set(cluster.COMMANDS)
