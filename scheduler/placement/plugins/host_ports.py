"""Host ports filter: a template port with a fixed ``host_port`` must be free on the host (same number
and protocol). A port left to the host to choose (``host_port`` 0) needs nothing from placement. Taken
ports are those of the host's replicas (fixed in their template or assigned by the agent) and those the
caller reported for other containers; a batch adds the ports of each replica it places."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Sequence

from scheduler.placement.framework import PlacementRequest, PluginArgs, Reads, Reasons, check_args
from scheduler.placement.view import HostView, Port, fixed_host_ports

NAME = "host_ports"


def port_text(port: Port) -> str:
    number, protocol = port
    return str(number) if protocol == "tcp" else f"{number}/{protocol}"


def conflicts(wanted: Iterable[Port], taken: Collection[Port]) -> Reasons:
    """The wanted host ports already taken, as reasons ("port 8080 in use", "port 53/udp in use")."""
    return tuple(f"port {port_text(p)} in use" for p in wanted if p in taken)


class HostPorts:
    name = NAME
    reads = Reads.HOST

    def applies(self, request: PlacementRequest) -> bool:
        return any(p.host_port for p in request.facts.ports)

    def key(self, request: PlacementRequest) -> Hashable:
        return tuple(fixed_host_ports(request.facts))

    def filter(self, request: PlacementRequest, host: HostView) -> Reasons:
        return conflicts(fixed_host_ports(request.facts), host.ports)

    def filter_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[Reasons]:
        wanted = fixed_host_ports(request.facts)
        return [conflicts(wanted, host.ports) for host in hosts]


def new(args: PluginArgs) -> HostPorts:
    check_args(NAME, args, {})
    return HostPorts()
