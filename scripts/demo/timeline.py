"""The demo's timeline: what the service looked like every half second, the story's events, and the plot.

A ``Sampler`` thread reads the service (declared replicas, ready, pending) and the hosts through the
scheduler's API and the client's answered requests per second from the load generator, every
``INTERVAL`` seconds, until stopped; the story marks its events (``mark``). ``plot()`` draws load,
declared and ready replicas over time with the events as labelled lines (matplotlib, PNG), and
``write_json()`` keeps the numbers behind it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

INTERVAL = 0.5


@dataclass(frozen=True)
class Sample:
    t: float           # seconds since the demo's clock started
    load: float        # requests answered per second (last whole second)
    desired: int       # the service's declared replicas (the autoscaler's decision)
    ready: int         # running and ready
    pending: int       # not placed: no host has room
    hosts: int         # hosts ready


@dataclass(frozen=True)
class Event:
    t: float
    label: str


@dataclass
class Sampler:
    read: Callable[[], tuple[int, int, int, int]]  # → desired, ready, pending, hosts
    load: Callable[[], float]
    started: float
    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def now(self) -> float:
        return time.monotonic() - self.started

    def mark(self, label: str) -> None:
        self.events.append(Event(round(self.now(), 2), label))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def close(self) -> list[str]:
        self.stop()
        return []

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            try:
                desired, ready, pending, hosts = self.read()
            except Exception:  # a scheduler failing over: no sample this time
                continue
            self.samples.append(Sample(round(self.now(), 2), self.load(), desired, ready, pending, hosts))

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps({"samples": [asdict(s) for s in self.samples],
                                    "events": [asdict(e) for e in self.events]}, indent=1))

    def plot(self, path: Path, *, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = [s.t for s in self.samples]
        fig, replicas = plt.subplots(figsize=(11, 5.2), dpi=110)
        # Declared wide and pale underneath, ready narrow on top: where they agree both stay visible.
        replicas.step(t, [s.desired for s in self.samples], where="post", label="declared replicas",
                      color="tab:blue", linewidth=4, alpha=0.45)
        replicas.step(t, [s.ready for s in self.samples], where="post", label="ready replicas",
                      color="tab:green", linewidth=1.6)
        replicas.step(t, [s.pending for s in self.samples], where="post", label="pending replicas",
                      color="tab:orange", linewidth=1, linestyle="--")
        replicas.step(t, [s.hosts for s in self.samples], where="post", label="hosts ready",
                      color="tab:gray", linewidth=1, linestyle=":")
        replicas.set_xlabel("seconds")
        replicas.set_ylabel("replicas / hosts")
        replicas.set_ylim(bottom=0)
        load = replicas.twinx()
        load.fill_between(t, [s.load for s in self.samples], step="post", alpha=0.15, color="tab:red",
                          label="requests answered / s")
        load.set_ylabel("requests answered per second")
        load.set_ylim(bottom=0)
        top = max([s.desired for s in self.samples] + [s.hosts for s in self.samples] + [1])
        for n, event in enumerate(self.events):
            replicas.axvline(event.t, color="black", alpha=0.25, linewidth=1)
            replicas.text(event.t, top * (1.30 - 0.08 * (n % 4)), f" {event.label}", fontsize=7.5,
                          va="bottom", ha="left")
        replicas.set_ylim(top=top * 1.6)
        handles = replicas.get_legend_handles_labels()
        extra = load.get_legend_handles_labels()
        fig.legend(handles[0] + extra[0], handles[1] + extra[1], loc="lower center", ncol=5, fontsize=8,
                   frameon=False)
        replicas.set_title(title)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        fig.savefig(path)
        plt.close(fig)


__all__ = ["Event", "Sample", "Sampler"]
