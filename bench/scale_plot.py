"""Draw and tabulate ``bench/scale.py`` results against the number of hosts: how each cost grows.

Input: result JSONs of ``bench/scale.py`` (one per size) or a sweep file of ``bench/scale_sweep.py``
(``{"runs": [result, …]}``), in any mix. ``figures`` reads from one result the numbers issue 15 asks for
(placement throughput, time to all running, the leader's cpu and RSS in the steady state, ``get
services`` p50/p99, mass failure p50/p99, failover time); a figure the run did not reach is None, drawn
as a gap and printed as "—". ``table`` prints them as a markdown table for docs/benchmarks.md; ``plot``
draws one panel per figure against hosts on a log x axis, with a dotted line of slope 1 from the
smallest size (what linear growth would look like) where growth is the question::

    .venv/bin/python bench/scale_plot.py bench/results/scale-sweep.json --png docs/img/scale-growth.png
    .venv/bin/python bench/scale_plot.py bench/results/scale-*.json --table
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def _get(result: dict[str, Any], *path: str) -> Any:
    """``result[path[0]][path[1]]…``, or None where any step is missing or null."""
    value: Any = result
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _scaled(value: Any, factor: float) -> float | None:
    return None if value is None else float(value) * factor


def figures(result: dict[str, Any]) -> dict[str, float | None]:
    """The plotted and tabulated numbers of one run (None: not measured, or not reached)."""
    cores = _get(result, "steady_cpu_cores", "leader")
    leader = _get(result, "steady_leader_rss_bytes")
    per_worker = _get(result, "steady_session_workers_rss_bytes")
    workers = sum(per_worker) if per_worker else None  # None: sessions in the leader's own process
    return {
        "hosts": float(result["hosts"]),
        "replicas": float(result["replicas"]),
        "replicas_per_s": _get(result, "placement_replicas_per_s"),
        "running_s": _get(result, "running_s"),
        "leader_cores": None if cores is None else float(cores),
        "leader_rss_mib": _scaled(_get(result, "steady_leader_rss_bytes"), 1 / (1 << 20)),
        "workers_rss_mib": _scaled(workers, 1 / (1 << 20)),
        "instance_rss_mib": _scaled(None if leader is None or workers is None else leader + workers,
                                    1 / (1 << 20)),
        "get_services_p50_ms": _scaled(_get(result, "get_services_s", "p50"), 1000),
        "get_services_p99_ms": _scaled(_get(result, "get_services_s", "p99"), 1000),
        "mass_failure_p50_s": _get(result, "mass_failure", "replaced_s", "p50"),
        "mass_failure_p99_s": _get(result, "mass_failure", "replaced_s", "p99"),
        "failover_acts_s": _get(result, "failover", "first_pass_s"),
        "failover_elected_s": _get(result, "failover", "elected_s"),
    }


def load(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every run in these files (a result, or a sweep's ``runs``), ordered by hosts."""
    runs: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(path.read_text())
        runs += data.get("runs", [data])
    return sorted(runs, key=lambda r: (r["hosts"], r["replicas"]))


def _cell(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _checks(result: dict[str, Any]) -> str:
    """Whether the disruptions left the cluster as declared: the audits and the failover's re-placements."""
    notes = []
    for name, path in (("mass failure", ("mass_failure", "audit_after_recovery", "ok")),
                       ("failover", ("failover", "audit", "ok"))):
        ok = _get(result, *path)
        if ok is not None:
            notes.append(f"{name} audit {'ok' if ok else 'FAILED'}")
    moved = _get(result, "failover", "replicas_moved_or_replaced")
    creates = _get(result, "failover", "creates_after_kill")
    if moved is not None:
        notes.append(f"failover moved {moved}, created {creates}")
    for phase in result.get("phase_errors") or {}:
        notes.append(f"{phase} failed")
    if result.get("error"):
        notes.append(f"ended: {' '.join(str(result['error']).split())[:60]}")
    return "; ".join(notes).replace("|", "/") or "—"  # one line, no column breaks


COLUMNS = (  # (header, figure, digits)
    ("hosts", "hosts", 0), ("replicas", "replicas", 0), ("replicas/s", "replicas_per_s", 0),
    ("all running (s)", "running_s", 1), ("leader cores", "leader_cores", 2),
    ("leader RSS (MiB)", "leader_rss_mib", 0), ("session workers RSS (MiB)", "workers_rss_mib", 0),
    ("get services p50 / p99 (ms)", "", 0),
    ("mass failure p50 / p99 (s)", "", 1), ("failover: elected / acts (s)", "", 2),
)


def table(runs: Sequence[dict[str, Any]]) -> str:
    """A markdown table, one row per run."""
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " | checks |",
             "|" + "---:|" * len(COLUMNS) + "---|"]
    for run in runs:
        f = figures(run)
        cells = [_cell(f[key], digits) for _, key, digits in COLUMNS if key]
        cells += [f"{_cell(f['get_services_p50_ms'], 0)} / {_cell(f['get_services_p99_ms'], 0)}",
                  f"{_cell(f['mass_failure_p50_s'], 1)} / {_cell(f['mass_failure_p99_s'], 1)}",
                  f"{_cell(f['failover_elected_s'], 2)} / {_cell(f['failover_acts_s'], 2)}"]
        lines.append("| " + " | ".join(cells) + f" | {_checks(run)} |")
    return "\n".join(lines) + "\n"


GOALS = {  # issue 15's goals, drawn where they apply: (value, label)
    "placement throughput": (5000.0, "goal: 5,000/s"),
    "RSS, steady state": (1024.0, "goal: 1 GiB"),
}

PANELS = (  # (title, unit, [(figure, label)], draw the linear guide)
    ("placement throughput", "replicas/s", [("replicas_per_s", "apply → all assigned")], False),
    ("time to all running", "s", [("running_s", "apply → all running")], True),
    ("leader cpu, steady state", "cores", [("leader_cores", "leader")], True),
    ("RSS, steady state", "MiB", [("leader_rss_mib", "leader"),
                                  ("instance_rss_mib", "leader + session workers")], True),
    ("get services", "ms", [("get_services_p50_ms", "p50"), ("get_services_p99_ms", "p99")], True),
    ("mass failure: replaced elsewhere", "s", [("mass_failure_p50_s", "p50"), ("mass_failure_p99_s", "p99")],
     False),
    ("leader failover", "s", [("failover_elected_s", "leader key taken"),
                              ("failover_acts_s", "first pass (acts)")], False),
)


def plot(runs: Sequence[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write a file
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [figures(r) for r in runs]
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(PANELS) / cols), cols, figsize=(4.2 * cols, 7.2), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (title, unit, series, guide) in zip(flat, PANELS, strict=False):
        for key, label in series:
            points = [(x, y) for r in rows if (x := r["hosts"]) is not None and (y := r[key]) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=label)
            for r in rows:
                if r[key] is None and r["hosts"] is not None:  # not reached at this size
                    ax.axvline(r["hosts"], color="#cccccc", linestyle=":", linewidth=1)
            if guide and len(points) > 1 and series.index((key, label)) == 0:
                x0, y0 = points[0]
                xs_all = [p[0] for p in points]
                ax.plot(xs_all, [y0 * x / x0 for x in xs_all], color="#999999", linestyle="--",
                        linewidth=1, label="linear from the smallest")
        if title in GOALS:
            value, label = GOALS[title]
            ax.axhline(value, color="#d62728", linestyle="-.", linewidth=1, label=label)
        ax.set_xscale("log")
        sizes_run = sorted({r["hosts"] for r in rows if r["hosts"] is not None})
        ax.set_xticks(sizes_run, [f"{int(x):,}" for x in sizes_run])  # the sizes run, not powers of ten
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("hosts")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in flat[len(PANELS):]:
        ax.axis("off")
    sizes = ", ".join(f"{int(r['hosts'] or 0):,}" for r in rows)
    ratios = {round((r["replicas"] or 0) / (r["hosts"] or 1), 1) for r in rows}
    per_host = f" ({ratios.pop():g} replicas per host)" if len(ratios) == 1 else ""
    fig.suptitle(f"Shoal scheduler with simulated hosts{per_host}: {sizes} hosts; "
                 "a dotted line: not reached", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="scale result or sweep JSON files")
    parser.add_argument("--png", type=Path, default=None, help="draw the growth plot here")
    parser.add_argument("--table", action="store_true", help="print the markdown table")
    args = parser.parse_args(argv)
    missing = [p for p in args.results if not p.exists()]
    if missing:
        raise SystemExit(f"bench/scale_plot.py: no such file: {', '.join(map(str, missing))}")
    runs = load(args.results)
    if not runs:
        raise SystemExit("bench/scale_plot.py: no runs in those files")
    if args.png is not None:
        plot(runs, args.png)
        print(f"written: {args.png}", file=sys.stderr)
    if args.table or args.png is None:
        sys.stdout.write(table(runs))


if __name__ == "__main__":
    main()
