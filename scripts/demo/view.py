"""What the demo shows: the narration, the commands it runs, what each step measured, and the live view.

On a terminal the cluster's live view (``shoal top``'s own rendering: ``agent.cli.top``) stays pinned at
the bottom and redraws every second while the narration scrolls above it. Without a terminal (CI, a pipe)
the narration is plain text, and the view is printed as a frame at the moments worth seeing. Every
measurement is kept for the closing table, with whether its expectation held.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

REFRESH = 1.0


@dataclass(frozen=True)
class Measured:
    step: str
    what: str
    value: str
    ok: bool


@dataclass
class Narrator:
    # Not a terminal (CI, a pipe): wide lines rather than wrapped ones.
    console: Console = field(default_factory=lambda: Console(
        highlight=False, width=None if sys.stdout.isatty() else 130))
    results: list[Measured] = field(default_factory=list)
    _frame: RenderableType | None = None
    _live: Live | None = None
    _step: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def step(self, title: str, *, short: str = "") -> None:
        """A new step; ``short`` names it in the closing table."""
        self._step = short or title
        self.console.print()
        self.console.print(Text(f"==> {title}", style="bold"))

    def say(self, text: str) -> None:
        self.console.print(Text(f"    {text}"))

    def progress(self, what: str, seconds: float) -> None:
        self.console.print(Text.assemble(("    ✓ ", "green"), what, (f"  ({seconds:.1f} s)", "dim")))

    def run(self, argv: list[str], *, shown: list[str], env: dict[str, str], check: bool = True,
            input: str | None = None, quiet: bool = False) -> str:
        """Run a command as a user would type it (``shown``), print it and its output."""
        self.console.print(Text(f"    $ {shlex.join(shown)}", style="dim"))
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, input=input,
                                check=False)
        if not quiet:
            for line in (result.stdout + result.stderr).rstrip("\n").splitlines():
                self.console.print(Text(f"      {line}"))
        if check and result.returncode != 0:
            raise DemoFailed(f"`{shlex.join(shown)}` exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def measured(self, what: str, value: str, *, ok: bool = True, expected: str = "") -> None:
        self.results.append(Measured(self._step, what, value, ok))
        mark, style = ("✓", "green") if ok else ("✗", "bold red")
        tail = f"  (expected {expected})" if expected and not ok else ""
        self.console.print(Text.assemble((f"    {mark} ", style), f"{what}: ", (value, "bold"), tail))
        if not ok:
            raise DemoFailed(f"{self._step}: {what} was {value}; expected {expected}")

    # -- the live view -------------------------------------------------------------------------------

    @contextmanager
    def live(self, snapshot: Callable[[], RenderableType]) -> Iterator[None]:
        """Keep ``snapshot()`` fresh in a background thread; pin it at the bottom on a terminal."""
        stop = threading.Event()

        def refresh() -> None:
            while True:
                try:
                    frame = snapshot()
                except Exception as err:  # the view must never end the demo
                    frame = Text(f"(live view unavailable: {err})", style="dim")
                with self._lock:
                    self._frame = frame
                if self._live is not None:
                    self._live.update(frame, refresh=True)
                if stop.wait(REFRESH):
                    return

        thread = threading.Thread(target=refresh, name="live-view", daemon=True)
        if self.interactive:
            self._live = Live(Text("…"), console=self.console, auto_refresh=False, transient=True,
                              vertical_overflow="crop")
            self._live.start()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)
            if self._live is not None:
                self._live.stop()
                self._live = None

    def frame(self) -> None:
        """Without a terminal: print the view as it is now (on a terminal it is on screen already)."""
        if self.interactive:
            return
        with self._lock:
            frame = self._frame
        if frame is not None:
            self.console.print(frame)

    # -- the end -------------------------------------------------------------------------------------

    def summary(self) -> None:
        table = Table(title="What the demo measured", title_justify="left", show_lines=False)
        for column in ("step", "measure", "value", ""):
            table.add_column(column)
        for m in self.results:
            table.add_row(m.step, m.what, m.value, Text("✓", "green") if m.ok else Text("✗", "bold red"))
        self.console.print()
        self.console.print(table)


class DemoFailed(Exception):
    """A step's expectation was not met: the demo stops, cleans up and exits non-zero."""


__all__ = ["DemoFailed", "Measured", "Narrator"]
