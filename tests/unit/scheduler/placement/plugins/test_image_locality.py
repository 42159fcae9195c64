from __future__ import annotations

from scheduler.model import ReplicaPhase
from scheduler.placement.plugins import image_locality
from tests.unit.scheduler.placement import builders as b


def test_image_score() -> None:
    assert image_locality.image_score("web:1", {"web:1", "db:2"}) == 100.0
    assert image_locality.image_score("web:2", {"web:1"}) == 0.0


def test_images_come_from_running_replicas_and_reports() -> None:
    svc = b.service(image="web:1")
    view = b.cluster(
        [b.host("h1"), b.host("h2"), b.host("h3"), b.host("h4")], services=[svc],
        replicas=[b.replica("r1", svc, "h1", phase=ReplicaPhase.RUNNING),
                  b.replica("r2", svc, "h2", phase=ReplicaPhase.FAILED)],  # maybe the pull failed
        images={b.HostId("h3"): ["web:1"]})
    plugin = image_locality.new({})
    req = b.request(svc, "r9")
    scores = {h.id: plugin.score(req, h) for h in view.hosts}
    assert scores == {"h1": 100.0, "h2": 0.0, "h3": 100.0, "h4": 0.0}
