"""Draw ``bench/cluster_scale.py``'s JSON: seconds to N replicas running, Shoal beside Docker Swarm.

One panel per mode (``apply``, ``scale``); each peer's median over the rounds with its min-max range, and
the speedup (swarm / shoal medians) written above each N. Also runnable on a saved result::

    .venv/bin/python bench/cluster_plot.py bench/results/cluster_scale.json docs/img/cluster_scale.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLOURS = {"shoal": "#1f77b4", "swarm": "#d62728"}
LABELS = {"shoal": "Shoal", "swarm": "Docker Swarm"}


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write a file
    import matplotlib.pyplot as plt

    rows: list[dict[str, Any]] = result["summary"]
    modes = sorted({r["mode"] for r in rows}, key=["apply", "scale"].index)
    peers = [p for p in ("shoal", "swarm") if any(p in r for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["n"])
        ns = [r["n"] for r in mine]
        for peer in peers:
            cells = [r.get(peer) or {} for r in mine]
            med = [c.get("median_s") or float("nan") for c in cells]
            low = [m - (c.get("min_s") or m) for m, c in zip(med, cells, strict=True)]
            high = [(c.get("max_s") or m) - m for m, c in zip(med, cells, strict=True)]
            ax.errorbar(
                ns, med, yerr=[low, high], marker="o", capsize=4, color=COLOURS[peer], label=LABELS[peer]
            )
        for r in mine:
            if r.get("speedup"):
                top = max((r.get(p) or {}).get("median_s") or 0 for p in peers)
                ax.annotate(
                    f"{r['speedup']:.1f}x",
                    (r["n"], top),
                    textcoords="offset points",
                    xytext=(0, 8),
                    ha="center",
                    fontsize=9,
                )
        ax.set_title(f"{mode}: time to N replicas running")
        ax.set_xlabel("replicas (N)")
        ax.set_ylabel("seconds (median, min-max)")
        ax.set_xticks(ns)
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.1)  # room for the speedup labels
        ax.grid(alpha=0.3)
        ax.legend()
    hosts = result.get("hosts_per_peer", "?")
    fig.suptitle(
        f"Shoal vs Docker Swarm, {hosts} hosts each, {result.get('machine', {}).get('cpus', '?')} cpus"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: cluster_plot.py RESULT.json OUT.png")
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
