from __future__ import annotations

from scheduler.placement import registry
from scheduler.placement.placer import ViewPlacer
from scheduler.placement.view import ClusterView
from tests.unit.scheduler.placement import builders as b


def test_a_step_places_service_after_service_on_one_view() -> None:
    web = b.service("web", cpus=3)
    db = b.service("db", cpus=3)
    pending = [b.replica("w1", web), b.replica("d1", db), b.replica("d2", db)]
    view = b.cluster([b.host("h1", cpus=4), b.host("h2", cpus=4)], services=[web, db], replicas=pending)
    placer = ViewPlacer(view, registry.default_profile())

    first = placer.place(web, pending[:1])
    assert set(first) == {"w1"}
    web_host, why = first[b.ReplicaId("w1")]
    assert web_host is not None and why.startswith("2/2 hosts fit, score ")

    second = placer.place(db, pending[1:])  # the web replica's 3 cpus count: one db replica fits
    placed = {rid: host for rid, (host, _) in second.items() if host is not None}
    assert len(placed) == 1 and web_host not in placed.values()
    pending_why = [why for host, why in second.values() if host is None]
    assert pending_why == ["0/2 hosts: 2 insufficient cpu"]

    explained = placer.explain(b.ReplicaId("w1"))
    assert explained is not None and explained.outcome.host == web_host
    assert [v.feasible for v in explained.verdicts] == [True, True]
    assert placer.explain(b.ReplicaId("nobody")) is None


def test_a_view_given_as_a_function_is_built_only_when_a_question_needs_it() -> None:
    web = b.service("web", cpus=1)
    pending = [b.replica("w1", web)]
    built: list[int] = []

    def build() -> ClusterView:
        built.append(1)
        return b.cluster([b.host("h1", cpus=4)], services=[web], replicas=pending)

    placer = ViewPlacer(build, registry.default_profile())
    assert not placer.built and built == []  # a step that places nothing never builds it
    assert placer.place(web, pending)[b.ReplicaId("w1")][0] == "h1"
    assert placer.removal_order(pending) == pending
    assert placer.built and built == [1]  # once, then kept for the rest of the step
