"""Reading deploy/'s systemd units and environment files the way systemd does, so tests can hand the
command a unit would run to the real argument parsers.

Only the part of systemd's syntax the files in deploy/ use is understood, and ``read_environment_file``
refuses anything beyond it (quotes, escapes, continued lines), so a file can never mean one thing to
systemd and another to the tests: ``KEY=VALUE`` lines, blank lines and ``#``/``;`` comments. In command
lines (``expand_command``), ``${VAR}`` is the variable's value as written and ``$VAR`` standing as a word
of its own is its value split on whitespace (no word at all when it is empty or unset), as
systemd.service(5) describes.
"""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=([^\"'\\]*)")
BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
BARE_WORD = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def read_unit(path: Path) -> configparser.ConfigParser:
    """A unit file's sections; keys are case-sensitive and a repeated key keeps its last value."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def read_environment_file(path: Path) -> dict[str, str]:
    """``EnvironmentFile=``'s variables; raises ``ValueError`` naming the line for anything else."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        match = ASSIGNMENT.fullmatch(stripped)
        if match is None:
            raise ValueError(f"{path}:{number}: not a plain KEY=VALUE line (no quotes, escapes or "
                             f"continuations): {line!r}")
        key, value = match.groups()
        if key in env:
            raise ValueError(f"{path}:{number}: {key} is set twice")
        env[key] = value.strip()
    return env


def expand_command(command: str, env: dict[str, str]) -> list[str]:
    """``ExecStart=``'s argv with ``env`` substituted."""
    argv: list[str] = []
    for word in shlex.split(command):
        bare = BARE_WORD.fullmatch(word)
        if bare is not None:
            argv.extend(env.get(bare.group(1), "").split())
            continue
        if "$" in BRACED.sub("", word):
            raise ValueError(f"unsupported use of $ in {word!r}")
        argv.append(BRACED.sub(lambda m: env.get(m.group(1), ""), word))
    return argv
