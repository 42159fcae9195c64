"""Draw ``bench/failover.py``'s JSON: seconds to recover from each failure, Shoal beside Docker Swarm.

One panel per scenario (``host-death``, ``leader-kill``); per peer a box of the reps' recovery times
(whiskers at min and max) with every rep drawn as a dot over it, and the p50/p99 written under the box.
Also runnable on a saved result::

    .venv/bin/python bench/failover_plot.py bench/results/failover.json docs/img/failover.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLOURS = {"shoal": "#1f77b4", "swarm": "#d62728"}
LABELS = {"shoal": "Shoal", "swarm": "Docker Swarm"}
TITLES = {
    "host-death": "host death: replicas running elsewhere",
    "leader-kill": "scheduler leader SIGKILL: new replica running",
}


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write a file
    import matplotlib.pyplot as plt

    reps: list[dict[str, Any]] = result["reps"]
    scenarios = [s for s in TITLES if any(r["scenario"] == s for r in reps)]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.8 * len(scenarios), 4.4), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        peers = [p for p in COLOURS if any(r["scenario"] == scenario and r["peer"] == p for r in reps)]
        for x, peer in enumerate(peers, start=1):
            mine = [r for r in reps if r["scenario"] == scenario and r["peer"] == peer]
            times = [r["recovered_s"] for r in mine if r["recovered_s"] is not None]
            if not times:
                ax.annotate("timed out", (x, 0), ha="center", va="bottom", fontsize=9)
                continue
            box = ax.boxplot([times], positions=[x], widths=0.5, whis=(0, 100), patch_artist=True)
            box["boxes"][0].set_facecolor(COLOURS[peer])
            box["boxes"][0].set_alpha(0.3)
            ax.scatter([x] * len(times), times, s=12, color=COLOURS[peer], zorder=3)
            row = next(
                (r for r in result["summary"] if r["scenario"] == scenario and r["peer"] == peer), None
            )
            if row is not None and row["recovered"]["p50_s"] is not None:
                rec = row["recovered"]
                timed_out = f", {row['timed_out']} t/o" if row["timed_out"] else ""
                ax.annotate(
                    f"p50 {rec['p50_s']:.1f} s\np99 {rec['p99_s']:.1f} s{timed_out}",
                    (x, row["recovered"]["max_s"]),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=8,
                )
        ax.set_xticks(range(1, len(peers) + 1), [LABELS[p] for p in peers])
        ax.set_xlim(0.4, len(peers) + 0.6)
        ax.set_title(TITLES[scenario], fontsize=10)
        ax.set_ylabel("seconds from the kill")
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.2)  # room for the labels
        ax.grid(alpha=0.3, axis="y")
    hosts = result.get("hosts_per_peer", "?")
    n = max((r["rep"] for r in reps), default=0)
    fig.suptitle(
        f"Failover, {hosts} hosts each, {n} reps, {result.get('machine', {}).get('cpus', '?')} cpus"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: failover_plot.py RESULT.json OUT.png")
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
