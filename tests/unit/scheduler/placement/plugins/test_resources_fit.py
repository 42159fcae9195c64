from __future__ import annotations

from scheduler.model import ReplicaPhase
from scheduler.placement.plugins import resources_fit
from tests.unit.scheduler.placement import builders as b


def _host_view(**kwargs: object):  # type: ignore[no-untyped-def]
    view = b.cluster([b.host("h1", **kwargs)])  # type: ignore[arg-type]
    return view.host(b.HostId("h1"))


def test_fits_exactly_the_room_left() -> None:
    host = _host_view(cpus=2, memory=1 * b.GiB, committed_cpus=1.5, committed_memory=512 * b.MiB)
    assert resources_fit.shortfalls(cpu_millis=500, memory_bytes=512 * b.MiB, host=host) == ()
    assert resources_fit.shortfalls(cpu_millis=501, memory_bytes=512 * b.MiB, host=host) == (
        "insufficient cpu",)
    assert resources_fit.shortfalls(cpu_millis=500, memory_bytes=512 * b.MiB + 1, host=host) == (
        "insufficient memory",)
    assert resources_fit.shortfalls(cpu_millis=600, memory_bytes=1 * b.GiB, host=host) == (
        "insufficient cpu", "insufficient memory")


def test_placed_but_not_started_replicas_take_room() -> None:
    svc = b.service(cpus=1, memory=1 * b.GiB)
    view = b.cluster([b.host("h1", cpus=2, memory=4 * b.GiB)], services=[svc],
                     replicas=[b.replica("r1", svc, "h1", phase=ReplicaPhase.STARTING)])
    plugin = resources_fit.new({})
    host = view.host(b.HostId("h1"))
    assert plugin.filter(b.request(svc, "r2"), host) == ()
    view.assume(host.id, replica=b.ReplicaId("r2"), service=svc.name, facts=svc.spec.facts)
    assert plugin.filter(b.request(svc, "r3"), host) == ("insufficient cpu",)


def test_a_host_reporting_no_room_fits_nothing_that_asks() -> None:
    host = _host_view(cpus=0, memory=0)
    assert resources_fit.shortfalls(cpu_millis=10, memory_bytes=0, host=host) == ("insufficient cpu",)
    assert resources_fit.shortfalls(cpu_millis=0, memory_bytes=0, host=host) == ()
