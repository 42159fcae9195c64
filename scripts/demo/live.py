"""The live view of the demo: ``shoal top``'s own snapshot and rendering, on a connection of its own.

A look that fails (a scheduler failing over) keeps the last answer on screen, marked, as ``shoal top``
itself does.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import RenderableType

from agent.cli.scheduler_client import Scheduler
from agent.cli.top import TopSnapshot, render, take_snapshot, with_last_known

SERVICES = ("web",)


def cluster_view(api: Scheduler) -> Callable[[], RenderableType]:
    last: list[TopSnapshot] = []

    def frame() -> RenderableType:
        snapshot = with_last_known(take_snapshot(api, services=SERVICES), last[0] if last else None)
        last[:] = [snapshot]
        return render(snapshot)

    return frame


__all__ = ["cluster_view"]
