"""deploy/examples/three-machines/: what each machine's units would run is accepted by the real
argument parsers (agent, scheduler) and by etcd, the machines agree with each other, and the service
and host group files parse — so the example cannot rot as flags change."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent import certs, config
from scheduler import __main__ as scheduler_main
from scheduler import spec
from scheduler.store import endpoints

from .systemd_files import expand_command, read_environment_file, read_unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "examples" / "three-machines"
MACHINES = ("m1", "m2", "m3")
PKI = "/etc/shoal/pki"


def exec_start(unit: str) -> str:
    return read_unit(DEPLOY / "systemd" / unit)["Service"]["ExecStart"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    certs.init_pki(directory, hosts=["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    return directory


def _with_pki(argv: list[str], pki: Path) -> list[str]:
    """The machine's argv with its --tls-dir (which the parsers check for the files) pointing at ``pki``."""
    assert argv.count(PKI) == 1, argv
    return [str(pki) if word == PKI else word for word in argv]


@pytest.mark.parametrize("machine", MACHINES)
def test_agent_flags_are_accepted(machine: str, pki: Path) -> None:
    env = read_environment_file(EXAMPLE / machine / "agent.env")
    argv = _with_pki(expand_command(exec_start("shoal-agent.service"), env), pki)
    settings = config.settings_from_args(config.build_parser().parse_args(argv[1:]))
    number = machine[1:]
    address = f"10.0.0.{number}"
    assert settings.listen == ("unix:///run/shoal/agent.sock", f"{address}:7070")
    assert settings.tls is not None and settings.cgroup_delegate
    assert settings.advertise == f"{address}:7070"
    assert len(settings.join) == 3
    assert str(settings.subnet) == f"10.88.{number}.0/24"
    assert dict(settings.labels)["zone"] == "abc"[int(number) - 1]
    assert settings.metrics_listen == f"{address}:9101"


@pytest.mark.parametrize("machine", MACHINES)
def test_scheduler_flags_are_accepted(machine: str, pki: Path) -> None:
    env = read_environment_file(EXAMPLE / machine / "scheduler.env")
    argv = _with_pki(expand_command(exec_start("shoal-scheduler.service"), env), pki)
    settings = scheduler_main.settings_from_args(scheduler_main.build_parser().parse_args(argv[1:]))
    address = f"10.0.0.{machine[1:]}"
    assert settings.listen == (f"{address}:7400",)
    assert settings.http_listen == f"{address}:7401"
    assert settings.instance == machine
    assert len(endpoints.parse_endpoints(settings.etcd)) == 3


def test_machines_agree() -> None:
    """Every agent joins every scheduler; every scheduler uses every etcd member; etcd's initial cluster
    is the same on all three and names each member's own peer URL."""
    schedulers = {read_environment_file(EXAMPLE / m / "scheduler.env")["SHOAL_SCHEDULER_ARGS"].split()[1]
                  for m in MACHINES}
    members = [read_environment_file(EXAMPLE / m / "etcd") for m in MACHINES]
    clients = {m["ETCD_ADVERTISE_CLIENT_URLS"] for m in members}
    for machine in MACHINES:
        agent = read_environment_file(EXAMPLE / machine / "agent.env")["SHOAL_AGENT_ARGS"].split()
        assert set(agent[agent.index("--join") + 1].split(",")) == schedulers
        etcd = read_environment_file(EXAMPLE / machine / "scheduler.env")["SHOAL_ETCD"]
        assert set(etcd.split(",")) == clients
    assert len({m["ETCD_INITIAL_CLUSTER"] for m in members}) == 1
    cluster = dict(item.split("=", 1) for item in members[0]["ETCD_INITIAL_CLUSTER"].split(","))
    assert {m["ETCD_NAME"]: m["ETCD_INITIAL_ADVERTISE_PEER_URLS"] for m in members} == cluster


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed")
def test_etcd_variables_are_etcd_flags() -> None:
    """etcd reads ETCD_X as its flag --x and only warns about a variable it does not know: check each
    against the flags of the installed etcd."""
    help_text = subprocess.run(["etcd", "--help"], capture_output=True, text=True, timeout=30).stdout
    flags = set(re.findall(r"^\s+--([a-z0-9-]+)", help_text, re.MULTILINE))
    assert "initial-cluster" in flags
    for machine in MACHINES:
        for name in read_environment_file(EXAMPLE / machine / "etcd"):
            assert name.startswith("ETCD_"), name
            assert name.removeprefix("ETCD_").lower().replace("_", "-") in flags, (machine, name)


def test_service_and_host_group_files_parse() -> None:
    (service,) = spec.parse_file((EXAMPLE / "web.yaml").read_text(), source="web.yaml").services
    assert service.autoscale is not None
    (group,) = spec.parse_file((EXAMPLE / "hostgroup.yaml").read_text(), source="hostgroup.yaml").hostgroups
    assert group.webhook is not None and group.shape is not None
    assert dict(group.shape.labels)["group"] == group.name
