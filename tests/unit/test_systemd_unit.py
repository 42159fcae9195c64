"""deploy/systemd/: every unit passes ``systemd-analyze verify``, the command each unit runs is one the
real argument parsers accept (with and without the example environment files), and the units keep the
settings Shoal depends on (the agent's delegation and surviving supervisor, the scheduler's restart and
hardening, etcd's restart)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent import config
from agent.cgroups import delegation
from scheduler import __main__ as scheduler_main

from .systemd_files import expand_command, read_environment_file, read_unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SYSTEMD = DEPLOY / "systemd"
AGENT_UNIT = SYSTEMD / "shoal-agent.service"
SCHEDULER_UNIT = SYSTEMD / "shoal-scheduler.service"
ETCD_DROPIN = SYSTEMD / "etcd.service.d" / "shoal.conf"
INSTALLED_BIN = "/opt/shoal/.venv/bin/"
# systemd before 254 does not know this key and says so; the unit explains why it is there anyway.
KNOWN_WARNINGS = ("Unknown key 'DelegateSubgroup'",)


def service(unit: Path) -> dict[str, str]:
    return dict(read_unit(unit)["Service"])


def test_agent_exec_start_parses_and_delegates() -> None:
    argv = expand_command(service(AGENT_UNIT)["ExecStart"], {})  # no /etc/shoal/agent.env: one machine
    assert argv[0] == INSTALLED_BIN + "shoal-agent" and argv[1] == "serve"
    settings = config.settings_from_args(config.build_parser().parse_args(argv[1:]))
    assert settings.cgroup_delegate is True
    assert settings.cgroup_parent != delegation.AGENT_LEAF
    assert settings.listen == ("unix:///run/shoal/agent.sock",)


def test_agent_unit_delegates_its_cgroup_and_spares_the_supervisor() -> None:
    unit = service(AGENT_UNIT)
    assert unit["Delegate"] == "yes"
    assert unit["DelegateSubgroup"] == delegation.AGENT_LEAF
    assert unit["KillMode"] == "process"
    assert unit["EnvironmentFile"] == "-/etc/shoal/agent.env"  # optional: the unit works without it


def test_scheduler_unit_restarts_and_is_confined() -> None:
    unit = service(SCHEDULER_UNIT)
    assert unit["Restart"] == "on-failure"
    assert unit["EnvironmentFile"] == "/etc/shoal/scheduler.env"  # required: --etcd has no default
    assert unit["User"] == "shoal" and unit["CapabilityBoundingSet"] == ""
    assert unit["ProtectSystem"] == "strict" and unit["NoNewPrivileges"] == "yes"
    assert set(unit["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert "KillMode" not in unit  # nothing of the scheduler must outlive it


def test_scheduler_exec_start_takes_etcd_from_the_environment_file() -> None:
    argv = expand_command(service(SCHEDULER_UNIT)["ExecStart"],
                          {"SHOAL_ETCD": "http://10.0.0.1:2379", "SHOAL_SCHEDULER_ARGS": ""})
    assert argv[:2] == [INSTALLED_BIN + "shoal-scheduler", "serve"]
    args = scheduler_main.build_parser().parse_args(argv[1:])
    assert args.etcd == "http://10.0.0.1:2379"


def test_etcd_dropin_restarts_a_failed_member() -> None:
    assert service(ETCD_DROPIN)["Restart"] == "on-failure"


def _verify(unit_dir: Path, unit: str) -> str:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", unit], cwd=unit_dir,
                            env={"SYSTEMD_UNIT_PATH": f"{unit_dir}:", "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if line and not any(known in line for known in KNOWN_WARNINGS)]
    assert result.returncode == 0 and not lines, "\n".join(lines)
    return result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # ExecStart must name an executable that exists: point it at this checkout's console scripts.
    bin_dir = Path(shutil.which("shoal-agent") or "/nonexistent").parent
    if not (bin_dir / "shoal-scheduler").exists():
        pytest.skip("shoal-agent and shoal-scheduler are not on PATH (run from the project's venv)")
    for unit in (AGENT_UNIT, SCHEDULER_UNIT):
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_BIN, f"{bin_dir}/"))
        _verify(tmp_path, unit.name)


@pytest.mark.skipif(not Path("/lib/systemd/system/etcd.service").exists(),
                    reason="Debian's etcd-server package is not installed")
def test_etcd_dropin_applies_to_debians_unit(tmp_path: Path) -> None:
    shutil.copy("/lib/systemd/system/etcd.service", tmp_path)
    (tmp_path / "etcd.service.d").mkdir()
    shutil.copy(ETCD_DROPIN, tmp_path / "etcd.service.d")
    _verify(tmp_path, "etcd.service")
    # The check reads the drop-in: a mistake in it is reported.
    (tmp_path / "etcd.service.d" / "shoal.conf").write_text(ETCD_DROPIN.read_text() + "Restrat=always\n")
    with pytest.raises(AssertionError, match="Restrat"):
        _verify(tmp_path, "etcd.service")


def test_example_environment_files_are_plain_assignments() -> None:
    examples = sorted((DEPLOY / "examples").glob("*/*/*.env"))
    assert examples
    for path in examples:
        assert read_environment_file(path)
