"""Bridge networking end to end, with the NetworkManager running inside test host A of a two-host world."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import subprocess
from pathlib import Path

import pytest

from agent.linux import syscalls
from agent.network import netns, rtnetlink
from tests.integration.launch.busybox_rootfs import build_busybox_rootfs
from tests.integration.launch.conftest import Launcher

from .conftest import BRIDGE, UPLINK_MTU, DriverError, Lab, in_netns

pytestmark = [pytest.mark.root, pytest.mark.integration]

C1, C2, C3 = "c1" + "1" * 62, "c2" + "2" * 62, "c3" + "3" * 62


def test_containers_reach_each_other_the_host_and_the_outside(lab: Lab) -> None:
    one = lab.driver.call("attach", id=C1)
    two = lab.driver.call("attach", id=C2)
    assert (one["address"], two["address"]) == ("10.88.0.2", "10.88.0.3")
    assert one["mtu"] == UPLINK_MTU
    lab.serve(in_netns(one["netns_path"]), port=80, name="c1")
    lab.serve(lab.b.nsenter_net, port=9000, name="b")

    # container → container, by address: no NAT on the bridge
    assert lab.ask(in_netns(two["netns_path"]), one["address"], 80) == f"c1 {two['address']}"
    # host → container: the host speaks from its bridge address
    assert lab.ask(lab.a.nsenter_net, one["address"], 80) == "c1 10.88.0.1"
    # container → another host: masqueraded behind host A's address
    assert lab.ask(in_netns(one["netns_path"]), str(lab.b.address), 9000) == f"b {lab.a.address}"

    inside = subprocess.run([*in_netns(one["netns_path"]), "ip", "-o", "link", "show", "eth0"],
                            capture_output=True, text=True, check=True).stdout
    assert f"mtu {UPLINK_MTU}" in inside and one["mac"] in inside
    route = subprocess.run([*in_netns(one["netns_path"]), "ip", "route"], capture_output=True, text=True,
                           check=True).stdout
    assert "default via 10.88.0.1 dev eth0" in route


def test_published_port_reaches_the_container_from_everywhere(lab: Lab) -> None:
    one = lab.driver.call("attach", id=C1, ports=["8080:80"])
    two = lab.driver.call("attach", id=C2)
    lab.serve(in_netns(one["netns_path"]), port=80, name="c1")
    host_a = str(lab.a.address)

    # from another host: DNAT keeps the client's address
    assert lab.ask(lab.b.nsenter_net, host_a, 8080) == f"c1 {lab.b.address}"
    # from host A itself, to its own address (output hook)
    assert lab.ask(lab.a.nsenter_net, host_a, 8080) == f"c1 {host_a}"
    # from a sibling container through the host's address (hairpin, masqueraded to the gateway)
    assert lab.ask(in_netns(two["netns_path"]), host_a, 8080) == "c1 10.88.0.1"
    # nothing else is forwarded
    assert lab.ask(lab.b.nsenter_net, host_a, 8081) == ""


def test_a_taken_port_is_refused_before_anything_is_built(lab: Lab) -> None:
    lab.driver.call("attach", id=C1, ports=["8080:80"])
    before = lab.state()

    with pytest.raises(DriverError) as by_container:
        lab.driver.call("attach", id=C2, ports=["8080:80"])
    assert by_container.value.kind == "AlreadyExists"
    assert "8080" in by_container.value.message

    lab.serve(lab.a.nsenter_net, port=9090, name="host-process")
    with pytest.raises(DriverError) as by_process:
        lab.driver.call("attach", id=C2, ports=["9090:80"])
    assert by_process.value.kind == "FailedPrecondition"
    assert "9090" in by_process.value.message

    assert lab.state() == before
    # udp 8080 is a different port
    lab.driver.call("attach", id=C2, ports=["8080:80/udp"])


def test_detach_removes_veth_rules_address_and_namespace(lab: Lab) -> None:
    empty = lab.state()
    one = lab.driver.call("attach", id=C1, ports=["8080:80", "5353:53/udp"])
    during = lab.state()
    assert one["veth"] in during["links"] and len(during["links"]) == len(empty["links"]) + 1
    assert len(during["elements"]) == 2 and during["allocations"] == {C1: one["address"]}
    assert during["netns"] == [C1]

    assert lab.driver.call("detach", id=C1) is True
    assert lab.state() == empty
    assert lab.driver.call("detach", id=C1) is False  # idempotent


@pytest.mark.parametrize("step", ["veth", "inside", "forwards"])
def test_failure_part_way_through_attach_leaves_nothing(lab: Lab, step: str) -> None:
    lab.driver.call("attach", id=C1, ports=["8080:80"])
    before = lab.state()
    lab.driver.call("fail", step=step)
    with pytest.raises(DriverError, match="injected failure"):
        lab.driver.call("attach", id=C2, ports=["8081:80"])
    assert lab.state() == before
    # and the next attach works, taking the address the failed one would have had
    assert lab.driver.call("attach", id=C2, ports=["8081:80"])["address"] == "10.88.0.3"


def test_restart_readopts_without_duplicates_or_reused_addresses(lab: Lab) -> None:
    one = lab.driver.call("attach", id=C1, ports=["8080:80"])
    lab.serve(in_netns(one["netns_path"]), port=80, name="c1")
    table, links = lab.table(), lab.a.links()

    lab.restart_driver()
    lab.driver.call("setup")
    view = lab.driver.call("view")
    assert view == {"allocations": {C1: one["address"]}, "published": {C1: ["8080:80/tcp"]}}
    assert lab.table() == table  # rebuilt, not appended to
    assert lab.a.links() == links  # one bridge, the same veth
    assert lab.ask(lab.b.nsenter_net, str(lab.a.address), 8080) == f"c1 {lab.b.address}"
    two = lab.driver.call("attach", id=C2)
    assert two["address"] != one["address"]

    assert lab.driver.call("reconcile", live=[C1, C2]) == []
    # C1 "was removed while the agent was down": reconcile frees it completely
    assert lab.driver.call("reconcile", live=[C2]) == [C1]
    state = lab.state()
    assert state["allocations"] == {C2: two["address"]} and state["netns"] == [C2]
    assert one["veth"] not in state["links"] and state["elements"] == []
    assert lab.driver.call("attach", id=C3)["address"] == one["address"]  # freed, so reusable


def test_teardown_removes_bridge_and_table(lab: Lab) -> None:
    lab.driver.call("attach", id=C1)
    with pytest.raises(DriverError, match="still attached"):
        lab.driver.call("teardown")
    lab.driver.call("detach", id=C1)
    lab.driver.call("teardown")
    assert BRIDGE not in lab.a.links()
    assert lab.a.run(["nft", "list", "ruleset"]).stdout.strip() == ""


def test_launched_container_joins_the_prepared_namespace(lab: Lab, tmp_path: Path) -> None:
    """A real launch with ``LaunchPlan.netns_path``: the container sees eth0 with its address and route."""
    one = lab.driver.call("attach", id=C1)
    lower = tmp_path / "lower"
    build_busybox_rootfs(lower)
    launcher = Launcher(lower, tmp_path / "containers")
    plan = launcher.plan(["/bin/sh", "-c", "ip -o -4 addr show eth0; ip route"], netns_path=one["netns_path"])
    outcome = launcher.run(plan)
    assert outcome.exit == 0, outcome
    assert f"inet {one['address']}/24" in outcome.output
    assert "default via 10.88.0.1" in outcome.output


def test_rtnetlink_batch_reports_the_first_failure_and_the_kernel_applies_the_rest() -> None:
    """In a throwaway namespace (a fresh thread unshares, then returns; nothing is pinned)."""

    def inside() -> tuple[int, bool]:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.unshare(syscalls.CLONE_NEWNET)
            try:
                with rtnetlink.Socket() as sock:
                    try:
                        sock.transact(
                            rtnetlink.set_up(1),
                            rtnetlink.delete_link("no-such-link"),
                            rtnetlink.new_address(1, ipaddress.IPv4Interface("10.77.0.5/24")),
                        )
                        code = 0
                    except rtnetlink.RtnetlinkError as exc:
                        code = exc.errno
                with socket.socket() as probe:  # binding works only to an address the namespace has
                    try:
                        probe.bind(("10.77.0.5", 0))
                        applied = True
                    except OSError:
                        applied = False
                return code, applied
            finally:
                syscalls.setns(home, syscalls.CLONE_NEWNET, what="back to the test's namespace")
        finally:
            os.close(home)

    assert netns.in_fresh_thread(inside, name="rtnl-test").result(timeout=10) == (errno.ENODEV, True)
