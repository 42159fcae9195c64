"""Host label constraints as written in a service file (scheduler/constraints.py): every form, the
canonical text, and what is refused."""

from __future__ import annotations

import pytest

from scheduler.constraints import InvalidConstraint, parse_constraint
from scheduler.model import Constraint, ConstraintOp


@pytest.mark.parametrize(("text", "expected"), [
    ("zone=a", Constraint("zone", ConstraintOp.EQ, ("a",), "zone=a")),
    (" zone == a ", Constraint("zone", ConstraintOp.EQ, ("a",), "zone=a")),
    ("zone!=c", Constraint("zone", ConstraintOp.NE, ("c",), "zone!=c")),
    ("zone in (a,b)", Constraint("zone", ConstraintOp.IN, ("a", "b"), "zone in (a,b)")),
    ("zone in ( a , b, a )", Constraint("zone", ConstraintOp.IN, ("a", "b"), "zone in (a,b)")),
    ("zone notin (c)", Constraint("zone", ConstraintOp.NOT_IN, ("c",), "zone notin (c)")),
    ("zone notin(c,d)", Constraint("zone", ConstraintOp.NOT_IN, ("c", "d"), "zone notin (c,d)")),
    ("gpu", Constraint("gpu", ConstraintOp.EXISTS, (), "gpu")),
    ("! gpu", Constraint("gpu", ConstraintOp.NOT_EXISTS, (), "!gpu")),
    ("example.com/rack=r-1.2", Constraint("example.com/rack", ConstraintOp.EQ, ("r-1.2",),
                                          "example.com/rack=r-1.2")),
])
def test_every_form_parses_to_its_canonical_constraint(text: str, expected: Constraint) -> None:
    assert parse_constraint(text) == expected
    assert parse_constraint(expected.text) == expected  # the canonical text reads back the same


@pytest.mark.parametrize(("text", "message"), [
    ("zone=", "the value is missing"),
    ("zone=a b", "is not a label value"),
    ("zone in (a,)", "an empty value"),
    ("zone in ()", "an empty value"),
    ("zone in (a b)", "'a b' is not a label value"),
    ("zone in a,b", "expected"),
    ("=a", "expected"),
    ("!", "expected"),
    ("!zone=a", "expected"),
    ("zone >= 3", "expected"),
    ("", "expected"),
])
def test_malformed_constraints_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidConstraint, match=message) as info:
        parse_constraint(text)
    assert repr(text) in str(info.value)


def test_parsed_constraints_match_host_labels_as_the_model_defines() -> None:
    hosts = [{"zone": "a"}, {"zone": "c"}, {"gpu": "1"}, {}]
    matched = {text: [parse_constraint(text).matches(h) for h in hosts]
               for text in ("zone=a", "zone!=c", "zone in (a,c)", "zone notin (a)", "gpu", "!gpu")}
    assert matched == {
        "zone=a": [True, False, False, False],
        "zone!=c": [True, False, True, True],
        "zone in (a,c)": [True, True, False, False],
        "zone notin (a)": [False, True, True, True],
        "gpu": [False, False, True, False],
        "!gpu": [True, True, False, True],
    }
