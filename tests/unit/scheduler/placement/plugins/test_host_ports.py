from __future__ import annotations

from scheduler import model
from scheduler.placement.plugins import host_ports
from tests.unit.scheduler.placement import builders as b


def test_conflicts_match_number_and_protocol() -> None:
    taken = {(8080, "tcp"), (53, "udp")}
    assert host_ports.conflicts([(8080, "tcp"), (53, "tcp"), (53, "udp"), (9090, "tcp")], taken) == (
        "port 8080 in use", "port 53/udp in use")


def test_a_port_the_host_chooses_needs_nothing() -> None:
    plugin = host_ports.new({})
    svc = b.service()
    svc_any = model.Service(spec=model.ServiceSpec(
        name=svc.name, replicas=1, template_json="{}",
        facts=model.TemplateFacts(image="x", ports=(model.PortRequest(container_port=8080),))))
    assert not plugin.applies(b.request(svc_any, "r1"))
    assert plugin.applies(b.request(b.service(host_ports=[8080]), "r1"))


def test_ports_of_replicas_and_of_other_containers_are_taken() -> None:
    fixed = b.service("fixed", host_ports=[8080])
    chosen = b.service("chosen")
    view = b.cluster(
        [b.host("h1"), b.host("h2"), b.host("h3"), b.host("h4")], services=[fixed, chosen],
        replicas=[b.replica("f1", fixed, "h1"),
                  b.replica("c1", chosen, "h2", ports=[model.HostPort(container_port=80, host_port=8080)]),
                  b.replica("f2", fixed, "h4", phase=model.ReplicaPhase.STOPPING)],  # not gone yet
        ports_in_use={b.HostId("h3"): [(8080, "tcp")]})
    plugin = host_ports.new({})
    req = b.request(b.service("new", host_ports=[8080]), "r1")
    assert {h.id: plugin.filter(req, h) for h in view.hosts} == {
        "h1": ("port 8080 in use",), "h2": ("port 8080 in use",), "h3": ("port 8080 in use",),
        "h4": ("port 8080 in use",)}
    udp = b.request(b.service("udp", host_ports=[(8080, "udp")]), "r2")
    assert plugin.filter(udp, view.host(b.HostId("h1"))) == ()
