"""Import/pull progress for the CLI: rich per-layer bars on a terminal, one plain line per layer otherwise.

rich is imported only to draw bars (a terminal, not ``-q``): it costs a process ≈ 50 ms.
"""

from __future__ import annotations

import os
import sys

from agent.cli.output import short_id

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from types import TracebackType

    from rich.progress import Progress, TaskID

    from proto.agent.v1 import agent_lite as pb


class LayerProgress:
    """Feed it ``ImportImageProgress`` messages; it draws them."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.layers_present = 0
        self.layers_fetched = 0
        self.live = not quiet and os.isatty(sys.stderr.fileno())
        self.progress: Progress | None = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                console=Console(stderr=True), transient=False,
            )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> LayerProgress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, msg: pb.ImportImageProgress) -> None:
        if msg.phase == "layer-exists":
            self.layers_present += 1
        elif msg.phase == "layer-done":
            self.layers_fetched += 1
        if self.quiet or not msg.layer:
            return
        label = f"layer {msg.index}/{msg.total} {short_id(msg.layer)}"
        if self.progress is None:
            if msg.phase == "layer-exists":
                print(f"{label}: already exists", file=sys.stderr)
            elif msg.phase == "layer-done":
                print(f"{label}: unpacked", file=sys.stderr)
            return
        task = self.tasks.get(msg.layer)
        if task is None:
            task = self.progress.add_task(label, total=msg.bytes_total or None)
            self.tasks[msg.layer] = task
        if msg.phase == "layer-exists":
            self.progress.update(task, description=f"{label} already exists", total=1, completed=1)
        elif msg.phase == "layer-done":
            total = msg.bytes_total or msg.bytes
            self.progress.update(task, description=f"{label} unpacked", total=total, completed=total)
        elif msg.phase == "unpacking" and msg.bytes_total and msg.bytes >= msg.bytes_total:
            self.progress.update(task, description=f"{label} unpacking", completed=msg.bytes)
        else:
            verb = "downloading" if msg.phase == "downloading" else msg.phase
            self.progress.update(task, description=f"{label} {verb}", completed=msg.bytes,
                                 total=msg.bytes_total or None)
