from __future__ import annotations

import pytest

from scheduler import model
from scheduler.model import ConstraintOp
from scheduler.placement.plugins import constraints
from tests.unit.scheduler.placement import builders as b

ZONE_NOT_C = b.constraint("zone", "!=", "c")
ZONE_A_OR_B = b.constraint("zone", "in", "a", "b")
GPU = b.constraint("gpu", "exists")


@pytest.mark.parametrize(("labels", "expected"), [
    ({"zone": "a", "gpu": "1"}, ()),
    ({"zone": "c", "gpu": "1"}, ("constraint zone!=c", "constraint zone in (a,b)")),
    ({"zone": "b"}, ("constraint gpu",)),
    ({"gpu": "1"}, ("constraint zone in (a,b)",)),  # != passes without the label, in does not
])
def test_unmet_names_every_failed_constraint(labels: dict[str, str], expected: tuple[str, ...]) -> None:
    assert constraints.unmet((ZONE_NOT_C, ZONE_A_OR_B, GPU), labels) == expected


@pytest.mark.parametrize(("constraint", "text"), [
    (model.Constraint("zone", ConstraintOp.EQ, ("a",)), "zone=a"),
    (model.Constraint("zone", ConstraintOp.NE, ("c",)), "zone!=c"),
    (model.Constraint("zone", ConstraintOp.IN, ("a", "b")), "zone in (a,b)"),
    (model.Constraint("zone", ConstraintOp.NOT_IN, ("c",)), "zone notin (c)"),
    (model.Constraint("gpu", ConstraintOp.EXISTS), "gpu"),
    (model.Constraint("gpu", ConstraintOp.NOT_EXISTS), "!gpu"),
    (model.Constraint("zone", ConstraintOp.NE, ("c",), text="zone != c"), "zone != c"),
])
def test_constraint_text_is_what_the_user_wrote(constraint: model.Constraint, text: str) -> None:
    assert constraints.constraint_text(constraint) == text


def test_plugin_applies_only_with_constraints() -> None:
    plugin = constraints.new({})
    assert not plugin.applies(b.request(b.service(), "r1"))
    assert plugin.applies(b.request(b.service(constraints=[ZONE_NOT_C]), "r1"))


def test_the_host_label_is_there_to_constrain() -> None:
    view = b.cluster([b.host("h1"), b.host("h2")])
    req = b.request(b.service(constraints=[b.constraint("shoal.host", "!=", "h1")]), "r1")
    plugin = constraints.new({})
    assert plugin.filter(req, view.host(b.HostId("h1"))) == ("constraint shoal.host!=h1",)
    assert plugin.filter(req, view.host(b.HostId("h2"))) == ()
