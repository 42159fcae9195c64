"""Draw ``bench/autoscale.py``'s JSON: one rep of each scenario as load, declared and ready replicas over
time, seconds from the load step.

One panel per scenario. The replicas (left axis) are step lines: the count the service declares (the
autoscaler's decision) and the replicas running and ready. The load (right axis: the queue's depth, or
the cpu cores the service's containers used, read from the kernel) is drawn on a scale where one
replica's worth of load at the target (2 queued items; 50 % of a 0.1 cpu request) sits at the height
of one replica, so the load line shows the count the rules should reach. Dotted lines mark the
decision and the target count running at the run's p50 (figures in the corner); the shaded span is after
the step down. Also runnable on a saved result::

    .venv/bin/python bench/autoscale_plot.py bench/results/autoscale.json docs/img/autoscale.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TITLES = {
    "queue": "queue: Prometheus sum(bench_queue_depth), target 2 per replica",
    "cpu": "cpu: 50 % of a 0.1 cpu request",
}
COLOURS = {"declared": "#1f77b4", "ready": "#2ca02c", "load": "#d62728"}


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write a file
    import matplotlib.pyplot as plt

    timelines: dict[str, dict[str, Any]] = result["timelines"]
    shown = [s for s in TITLES if s in timelines and timelines[s].get("replicas")]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(6.4 * max(1, len(shown)), 4.6), squeeze=False)
    for ax, scenario in zip(axes[0], shown, strict=False):
        line = timelines[scenario]
        points = line["replicas"]
        times = [p["t"] for p in points]
        end = max(times[-1], line["step_down_s"]) + 1.0
        for key, label in (("declared", "declared (the decision)"), ("ready", "running and ready")):
            ax.step([*times, end], [*(p[key] for p in points), points[-1][key]], where="post",
                    color=COLOURS[key], label=label, linewidth=2 if key == "declared" else 1.5)
        load = line["load"]
        per = line["load_per_replica"]
        top = max(line["target"], max(p["declared"] for p in points)) + 1
        ax.set_ylim(0, top)
        ax.set_ylabel("replicas")
        ax.set_xlabel("seconds from the load step")
        load_ax = ax.twinx()
        if load:
            xs = [t for t, _ in load]
            ys = [v for _, v in load]
            if scenario == "queue":  # a value that is set: a step line to the end
                load_ax.step([*xs, end], [*ys, ys[-1]], where="post", color=COLOURS["load"],
                             linestyle="--", label=line["load_unit"])
            else:  # cores measured over each 0.1 s
                load_ax.plot(xs, ys, color=COLOURS["load"], linestyle="--", linewidth=1,
                             label=line["load_unit"])
        load_ax.set_ylim(0, top * per)  # one replica's worth of load at the height of one replica
        peak = max((v for _, v in load), default=0.0)
        if peak > top * per:  # a short burst (an exec's helper runs in the container's cgroup)
            load_ax.annotate(f"peak {peak:.2g} off the scale", (1, 1), xycoords="axes fraction", fontsize=7,
                             ha="right", va="bottom", color=COLOURS["load"])
        load_ax.set_ylabel(f"{line['load_unit']} (1 replica = {per:g})")
        _marks(ax, result, scenario)
        ax.axvspan(line["step_down_s"], end, color="#999999", alpha=0.12, lw=0)
        ax.annotate("step down", (line["step_down_s"], top * 0.03), fontsize=8, va="bottom", ha="left",
                    xytext=(3, 0), textcoords="offset points")
        ax.set_xlim(times[0], end)
        ax.set_title(f"{TITLES[scenario]} (rep {line.get('rep', '?')})", fontsize=10)
        ax.grid(alpha=0.3)
        handles = ax.get_legend_handles_labels()
        more = load_ax.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], loc="center right", fontsize=8)
    machine = result.get("machine", {})
    path = result.get("path", {})
    fig.suptitle(
        f"Autoscaling, {result.get('hosts', '?')} hosts, {machine.get('cpus', '?')} cpus: scrape every "
        f"{path.get('scrape_interval_s', '?')} s, usage every {path.get('usage_interval_s', '?')} s, "
        f"decision every {path.get('autoscale_interval_s', '?')} s"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _marks(ax: Any, result: dict[str, Any], scenario: str) -> None:
    """Dotted lines at this run's p50 decision and running times, and the run's figures in a corner."""
    row = next((r for r in result.get("summary", []) if r["scenario"] == scenario), None)
    if row is None:
        return
    lines = [f"{row['reps']} reps, seconds from the step:"]
    for key, colour in (("decision", COLOURS["declared"]), ("running", COLOURS["ready"])):
        figures = row[key]
        if figures["p50_s"] is None:
            continue
        ax.axvline(figures["p50_s"], color=colour, linestyle=":", linewidth=1)
        lines.append(f"{key} p50 {figures['p50_s']:.2f}, p99 {figures['p99_s']:.2f}")
    ax.text(0.02, 0.97, "\n".join(lines), transform=ax.transAxes, fontsize=8, va="top", ha="left",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "edgecolor": "#cccccc"})


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: autoscale_plot.py RESULT.json OUT.png")
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
