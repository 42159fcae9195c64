"""The reconcile step's placer: each service's pending replicas placed on one view kept for the step.

``scheduler.reconcile.step`` hands a ``Placer`` the pending replicas of one service at a time and expects
it to remember, within the step, what it placed, so the next service sees those replicas' requests.
``ViewPlacer`` does that with a ``ClusterView`` built for the step: ``batch.place`` updates the view
with every placement. For each replica it answers with a host (None: none fits) and the reason without
the host's name, which the step writes itself ("on node-2: 3/5 hosts fit, score 187.5"). It also keeps
the step's decisions, so ``explain`` shows what a decision saw.

The view may be given as a function that builds it: it is then built on the first question, so a step
that places and removes nothing (most steps of a settled cluster) never pays for it — building it is
linear in the replicas, a third of a settled pass at 100,000 (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from scheduler import model
from scheduler.model import HostId, ReplicaId
from scheduler.placement import batch
from scheduler.placement.framework import Profile, request_for
from scheduler.placement.removal import rank_for_removal
from scheduler.placement.view import ClusterView


class ViewPlacer:
    """Places the replicas of one service after another on one view (one per reconcile step)."""

    def __init__(self, view: ClusterView | Callable[[], ClusterView], profile: Profile) -> None:
        self._view = view
        self.profile = profile
        self._decided: dict[ReplicaId, batch.Placements] = {}

    @property
    def view(self) -> ClusterView:
        if not isinstance(self._view, ClusterView):
            self._view = self._view()
        return self._view

    @property
    def built(self) -> bool:
        """Whether the view exists (was given, or some question needed it)."""
        return isinstance(self._view, ClusterView)

    def place(self, service: model.Service,
              replicas: Sequence[model.Replica]) -> dict[ReplicaId, tuple[HostId | None, str]]:
        """Per replica: the chosen host (None: none fits) and why, for a person."""
        result = batch.place([request_for(r, service) for r in replicas], self.view, self.profile)
        for outcome in result.outcomes:
            self._decided[outcome.replica] = result
        return {o.replica: (o.host, o.why) for o in result.outcomes}

    def removal_order(self, replicas: Sequence[model.Replica]) -> list[model.Replica]:
        """``replicas`` in the order a scale-down removes them (``removal.rank_for_removal``)."""
        return rank_for_removal(replicas, self.view)

    def explain(self, replica: ReplicaId) -> batch.Explanation | None:
        """What this step's decision for ``replica`` saw (None: it decided nothing about it)."""
        result = self._decided.get(replica)
        return result.explain(replica) if result is not None else None


__all__ = ["ViewPlacer"]
