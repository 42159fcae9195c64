"""Label constraints filter: a host must satisfy every constraint of the service (``zone=a``,
``zone!=c``, ``zone in (a,b)``, ``zone notin (c)``, ``gpu``, ``!gpu``; ``model.Constraint.matches`` is
the rule). A refusal names each unmet constraint as the user wrote it: ``constraint zone!=c``."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from scheduler import model
from scheduler.model import ConstraintOp
from scheduler.placement.framework import PlacementRequest, PluginArgs, Reads, Reasons, check_args
from scheduler.placement.view import HostView

NAME = "constraints"


def constraint_text(constraint: model.Constraint) -> str:
    """The constraint as the user wrote it (rebuilt in the same syntax when the text was not kept)."""
    if constraint.text:
        return constraint.text
    values = ",".join(constraint.values)
    op = constraint.op
    if op is ConstraintOp.EXISTS:
        return constraint.key
    if op is ConstraintOp.NOT_EXISTS:
        return f"!{constraint.key}"
    if op is ConstraintOp.IN or op is ConstraintOp.NOT_IN:
        return f"{constraint.key} {op.value} ({values})"
    return f"{constraint.key}{op.value}{values}"


def unmet(constraints: Iterable[model.Constraint], labels: dict[str, str]) -> Reasons:
    """The constraints a host with these labels fails, as reasons."""
    return tuple(f"constraint {constraint_text(c)}" for c in constraints if not c.matches(labels))


class Constraints:
    name = NAME
    reads = Reads.STATIC

    def applies(self, request: PlacementRequest) -> bool:
        return bool(request.placement.constraints)

    def key(self, request: PlacementRequest) -> Hashable:
        return request.placement.constraints

    def filter(self, request: PlacementRequest, host: HostView) -> Reasons:
        return unmet(request.placement.constraints, host.labels)

    def filter_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[Reasons]:
        return [unmet(request.placement.constraints, host.labels) for host in hosts]  # static: once per view


def new(args: PluginArgs) -> Constraints:
    check_args(NAME, args, {})
    return Constraints()
