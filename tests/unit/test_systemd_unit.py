"""deploy/systemd/shoal-agent.service: the flags in ExecStart are ones the agent accepts, and the unit
keeps the settings the agent depends on (delegation, supervisor surviving restarts)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from agent import config
from agent.cgroups import delegation

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "shoal-agent.service"


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_exec_start_parses_and_delegates() -> None:
    argv = shlex.split(service()["ExecStart"])
    assert argv[0].endswith("/shoal-agent") and argv[1] == "serve"
    settings = config.settings_from_args(config.build_parser().parse_args(argv[1:]))
    assert settings.cgroup_delegate is True
    assert settings.cgroup_parent != delegation.AGENT_LEAF


def test_unit_delegates_its_cgroup_and_spares_the_supervisor() -> None:
    unit = service()
    assert unit["Delegate"] == "yes"
    assert unit["DelegateSubgroup"] == delegation.AGENT_LEAF
    assert unit["KillMode"] == "process"
