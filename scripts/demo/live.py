"""The live view of the demo: ``shoal top``'s own snapshot and rendering, on a connection of its own."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import RenderableType

from agent.cli.scheduler_client import Scheduler

SERVICES = ("web",)


def cluster_view(api: Scheduler) -> Callable[[], RenderableType]:
    def frame() -> RenderableType:
        try:
            from agent.cli.top import render, take_snapshot
        except ImportError:  # TODO(top): until shoal top lands
            from rich.text import Text

            return Text("(shoal top not available yet)")
        return render(take_snapshot(api, services=SERVICES))

    return frame


__all__ = ["cluster_view"]
