"""Bridge networking end to end: real agents inside two test hosts, driven through the shoal CLI.

Everything happens inside network namespaces this test creates (``tests/fixtures/netns.py``); the root
namespace is checked unchanged by the module's autouse fixture.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.network import firewall, ipam
from tests.fixtures import images as image_fixtures
from tests.fixtures.netns import NetWorld, TestHost
from tests.integration.agent.conftest import AgentProcess, full_busybox_layer, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "net/busybox:v1"
# One connection, answered with the address the connection came from; bounded by a timeout.
PEER_ECHO = (
    "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    "s.bind(('0.0.0.0', 9000)); s.listen(1); s.settimeout(20); print('listening', flush=True); "
    "c, peer = s.accept(); c.sendall(peer[0].encode() + b'\\n'); c.close()"
)
WEB = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"


@dataclass
class Site:
    host: TestHost
    agent: AgentProcess
    subnet: str


def _wget(host: TestHost, url: str) -> str:
    # busybox 1.35's wget -T segfaults: bound it with timeout(1) instead.
    result = host.run(["timeout", "5", "busybox", "wget", "-q", "-O-", url], timeout=10)
    return result.stdout.strip()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site]]:
    base = tmp_path_factory.mktemp("bridge")
    layout = image_fixtures.build_oci_layout(base / "img", [full_busybox_layer()], ref_name="v1",
                                             config={"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})
    with NetWorld() as world:
        made = []
        for n, subnet in enumerate(("10.88.1.0/24", "10.88.2.0/24")):
            host = world.add_host()
            agent = AgentProcess(
                root=base / f"root{n}", socket=base / f"agent{n}.sock",
                cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=base / f"agent{n}.log",
                extra_args=["--subnet", subnet, "--bridge", f"shoal{n}"], prefix=host.nsenter_net,
            )
            agent.start()
            agent.run("image", "import", str(layout), "--name", IMAGE)
            made.append(Site(host, agent, subnet))
        try:
            yield made[0], made[1]
        finally:
            for site in made:
                ids = site.agent.run("ps", "-aq", "--no-trunc", check=False).stdout.split()
                if ids:
                    site.agent.run("rm", "-f", *ids, check=False)
                site.agent.stop()
            for site in made:
                for d in Path("/sys/fs/cgroup").glob(f"*/{site.agent.cgroup_parent}"):
                    d.rmdir()


def inspect(agent: AgentProcess, ref: str) -> dict[str, object]:
    return json.loads(agent.run("inspect", ref).stdout)[0]  # type: ignore[no-any-return]


def counts(site: Site) -> tuple[int, int, int]:
    """veth links, map elements (published ports) in the agent's nft table, and allocated addresses."""
    veths = sum(1 for link in site.host.links() if link.startswith("veth"))
    bridge = site.agent.extra_args[site.agent.extra_args.index("--bridge") + 1]
    listing = site.host.run(["nft", "-j", "list", "table", "ip", firewall.table_name(bridge)], check=True)
    elements = sum(len(item["map"].get("elem", ())) for item in json.loads(listing.stdout)["nftables"]
                   if "map" in item)
    allocations = ipam.Ipam(site.agent.root / "network", ipaddress.IPv4Network(site.subnet)).allocations()
    return veths, elements, len(allocations)


def test_reachability_published_ports_and_names(sites: tuple[Site, Site]) -> None:
    a, b = sites
    a.agent.run("run", "-d", "--name", "web", "-p", "8080:80", IMAGE, "sh", "-c", WEB)
    info = inspect(a.agent, "web")
    address = str(info["ip_address"])
    assert address.startswith("10.88.1.") and info["gateway"] == "10.88.1.1"
    assert info["ports"] == [{"host_ip": "", "host_port": 8080, "container_port": 80, "protocol": "tcp"}]
    ps = a.agent.run("ps").stdout
    assert address in ps and "0.0.0.0:8080->80/tcp" in ps
    wait_for(lambda: _wget(a.host, f"http://{address}/") == f"hello-from-{str(info['id'])[:12]}")

    # Another host reaches the published port on A's address; so does A itself.
    assert _wget(b.host, f"http://{a.host.address}:8080/").startswith("hello-from-")
    assert _wget(a.host, f"http://{a.host.address}:8080/").startswith("hello-from-")
    # A container reaches a sibling by address, and its own name resolves to its own address.
    out = a.agent.run("run", "--rm", IMAGE, "sh", "-c",
                      f"wget -q -O- http://{address}/; grep $(hostname) /etc/hosts").stdout
    assert "hello-from-" in out and "10.88.1." in out.splitlines()[-1]
    # Out through the host (masquerade): a server on host B sees host A's address, not a 10.88 one.
    server = b.host.popen([sys.executable, "-c", PEER_ECHO], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        seen = a.agent.run("run", "--rm", IMAGE, "sh", "-c",
                           f"timeout 5 nc {b.host.address} 9000 </dev/null").stdout.strip()
    finally:
        server.kill()
        server.wait()
    assert seen == str(a.host.address)
    a.agent.run("rm", "-f", "web")


def test_a_port_the_host_picks_is_reachable_and_kept_until_rm(sites: tuple[Site, Site]) -> None:
    """``-p 80`` (no host port): the host picks the lowest free one of AUTO_PORTS; two such containers
    get two ports; the pick is the container's until it is removed, across restarts of the container."""
    from agent.network.ports import AUTO_PORTS

    a, b = sites
    a.agent.run("run", "-d", "--name", "auto1", "-p", "80", IMAGE, "sh", "-c", WEB)
    a.agent.run("run", "-d", "--name", "auto2", "-p", "80", IMAGE, "sh", "-c", WEB)
    ports = [inspect(a.agent, name)["ports"] for name in ("auto1", "auto2")]
    picked = [p[0]["host_port"] for p in ports]  # type: ignore[index]
    assert picked == [AUTO_PORTS.start, AUTO_PORTS.start + 1]
    wait_for(lambda: _wget(b.host, f"http://{a.host.address}:{picked[0]}/").startswith("hello-from-"))
    a.agent.run("stop", "-t", "1", "auto1")
    a.agent.run("start", "auto1")
    assert inspect(a.agent, "auto1")["ports"] == ports[0]
    a.agent.run("rm", "-f", "auto1", "auto2")


def test_port_conflict_is_refused_and_leaves_nothing(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    a.agent.run("run", "-d", "--name", "first", "-p", "8181:80", IMAGE, "sh", "-c", WEB)
    before = counts(a), a.agent.run("ps", "-aq").stdout
    result = a.agent.run("run", "-d", "--name", "second", "-p", "8181:80", IMAGE, "sh", "-c", WEB,
                         check=False)
    assert result.returncode != 0 and "8181" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (counts(a), a.agent.run("ps", "-aq").stdout) == before
    a.agent.run("rm", "-f", "first")


def test_rm_removes_veth_rules_and_address(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    baseline = counts(a)
    a.agent.run("run", "-d", "--name", "temp", "-p", "8282:80", IMAGE, "sh", "-c", WEB)
    during = counts(a)
    assert during[0] == baseline[0] + 1 and during[1] > baseline[1]
    a.agent.run("rm", "-f", "temp")
    assert counts(a) == baseline
    assert not list((a.agent.root / "netns").glob("*"))


def test_agent_restart_keeps_containers_serving_without_duplicates(sites: tuple[Site, Site]) -> None:
    a, b = sites
    a.agent.run("run", "-d", "--name", "steady", "-p", "8383:80", IMAGE, "sh", "-c", WEB)
    address = str(inspect(a.agent, "steady")["ip_address"])
    wait_for(lambda: _wget(b.host, f"http://{a.host.address}:8383/").startswith("hello-from-"))
    ruleset = a.host.run(["nft", "list", "ruleset"], check=True).stdout
    links = sorted(a.host.links())
    a.agent.kill9()
    a.agent.start()
    assert a.host.run(["nft", "list", "ruleset"], check=True).stdout == ruleset
    assert sorted(a.host.links()) == links
    assert _wget(b.host, f"http://{a.host.address}:8383/").startswith("hello-from-")
    a.agent.run("run", "-d", "--name", "newcomer", IMAGE, "sleep", "300")
    assert inspect(a.agent, "newcomer")["ip_address"] != address
    a.agent.run("rm", "-f", "steady", "newcomer")


def test_container_on_one_host_reaches_a_published_port_on_another(sites: tuple[Site, Site]) -> None:
    a, b = sites
    a.agent.run("run", "-d", "--name", "served", "-p", "8484:80", IMAGE, "sh", "-c", WEB)
    wait_for(lambda: _wget(a.host, f"http://{a.host.address}:8484/").startswith("hello-from-"))
    out = b.agent.run("run", "--rm", IMAGE, "sh", "-c",
                      f"timeout 5 wget -q -O- http://{a.host.address}:8484/").stdout
    assert out.startswith("hello-from-")
    a.agent.run("rm", "-f", "served")


def test_failed_start_and_killed_agent_leave_nothing(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    baseline = counts(a), sorted((a.agent.root / "containers").iterdir())
    failed = a.agent.run("run", "-p", "8585:80", IMAGE, "/no/such/binary", check=False)
    assert failed.returncode == 127
    assert (counts(a), sorted((a.agent.root / "containers").iterdir())) == baseline
    # An agent killed with a container attached: after restart, rm still releases everything.
    a.agent.run("run", "-d", "--name", "orphan", "-p", "8686:80", IMAGE, "sleep", "300")
    a.agent.kill9()
    a.agent.start()
    a.agent.run("rm", "-f", "orphan")
    assert (counts(a), sorted((a.agent.root / "containers").iterdir())) == baseline


def test_start_after_the_namespace_pin_is_gone_reattaches(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    a.agent.run("run", "-d", "--name", "rebooted", IMAGE, "sleep", "300")
    cid = str(inspect(a.agent, "rebooted")["id"])
    a.agent.run("stop", "-t", "0", "rebooted")
    pin = a.agent.root / "netns" / cid
    # What a host reboot leaves: the file, without the namespace bind-mounted on it.
    subprocess.run(["umount", str(pin)], check=True)
    assert pin.exists()
    a.agent.run("start", "rebooted")
    info = inspect(a.agent, "rebooted")
    assert info["state"] == "running" and str(info["ip_address"]).startswith("10.88.1.")
    a.agent.run("rm", "-f", "rebooted")
    assert not pin.exists()
