"""Host label constraints as people write them: ``zone=a``, ``zone!=c``, ``zone in (a,b)``,
``zone notin (a,b)``, ``gpu`` (the label is present) and ``!gpu`` (it is absent).

The grammar is Kubernetes' set-based label selectors, one requirement per string. ``parse_constraint``
returns a ``model.Constraint`` whose ``text`` is the canonical spelling (``zone in (a,b)``, no matter
the spaces the user typed), so two files that mean the same thing make the same spec, and messages quote
something readable. ``format_constraint`` gives that spelling back from the parts.
"""

from __future__ import annotations

import re

from scheduler.model import Constraint, ConstraintOp

# Label keys as agents accept them (``--label K=V``), kept to what cannot be confused with the operators.
_KEY = r"[A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9])?"
_VALUE = r"[A-Za-z0-9._/:@+-]+"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")
_COMPARE_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*(.*?)\s*$")
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\((.*)\)\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")

_HELP = 'expected "KEY=VALUE", "KEY!=VALUE", "KEY in (A,B)", "KEY notin (A,B)", "KEY" or "!KEY"'


class InvalidConstraint(ValueError):
    """A constraint that does not parse; the message says what is expected."""


def is_label_key(text: str) -> bool:
    return bool(_KEY_RE.match(text))


def parse_constraint(raw: str) -> Constraint:
    compare = _COMPARE_RE.match(raw)
    if compare:
        key, op, value = compare.groups()
        if not _VALUE_RE.match(value):
            raise InvalidConstraint(f"invalid constraint {raw!r}: {value!r} is not a label value"
                                    if value else f"invalid constraint {raw!r}: the value is missing")
        kind = ConstraintOp.NE if op == "!=" else ConstraintOp.EQ
        return _made(key, kind, (value,))
    in_set = _SET_RE.match(raw)
    if in_set:
        key, op, inside = in_set.groups()
        values = tuple(v.strip() for v in inside.split(","))
        bad = [v for v in values if not _VALUE_RE.match(v)]
        if bad:
            what = "an empty value" if bad[0] == "" else f"{bad[0]!r} is not a label value"
            raise InvalidConstraint(f"invalid constraint {raw!r}: {what}")
        unique = tuple(dict.fromkeys(values))
        return _made(key, ConstraintOp.IN if op == "in" else ConstraintOp.NOT_IN, unique)
    exists = _EXISTS_RE.match(raw)
    if exists:
        negated, key = exists.groups()
        return _made(key, ConstraintOp.NOT_EXISTS if negated else ConstraintOp.EXISTS, ())
    raise InvalidConstraint(f"invalid constraint {raw!r}: {_HELP}")


def _made(key: str, op: ConstraintOp, values: tuple[str, ...]) -> Constraint:
    return Constraint(key=key, op=op, values=values, text=format_constraint(key, op, values))


def format_constraint(key: str, op: ConstraintOp, values: tuple[str, ...]) -> str:
    if op is ConstraintOp.EXISTS:
        return key
    if op is ConstraintOp.NOT_EXISTS:
        return f"!{key}"
    if op is ConstraintOp.EQ or op is ConstraintOp.NE:
        return f"{key}{op.value}{values[0]}"
    return f"{key} {op.value} ({','.join(values)})"


__all__ = ["InvalidConstraint", "format_constraint", "is_label_key", "parse_constraint"]
