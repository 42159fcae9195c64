"""Run ``bench/scale.py`` at several sizes, one after the other, and collect the results for the plot.

``--sizes 500,1000,2000,5000`` runs ``bench/scale.py --hosts N --replicas (--per-host * N)`` per size with
``--budget`` seconds each (the run tears itself down and records what it measured when its budget runs
out; this driver sends SIGTERM a minute past it and SIGKILL later, as a last resort). Each run's JSON
goes to ``--out-dir`` (``scale-N-R[-LABEL].json``), and all of them, with the command lines, to
``scale-sweep[-LABEL].json``, which ``bench/scale_plot.py`` draws and tabulates (``--png`` here does it
at the end). Arguments after ``--`` go to every run (e.g. ``-- --election-ttl 10``)::

    .venv/bin/python bench/scale_sweep.py --sizes 500,1000,2000,5000 --png docs/img/scale-growth.png
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GRACE_S = 60.0  # past the run's own budget before it is stopped from outside


def budget_for(hosts: int, per_host_s: float, floor_s: float) -> float:
    """A size's budget: ``per_host_s`` a host, at least ``floor_s`` (registration, placement, the steady
    state, the two disruptions and the etcd ceiling all grow with the hosts)."""
    return max(floor_s, per_host_s * hosts)


def run_one(command: list[str], budget: float) -> int:
    """Run one ``bench/scale.py``; its exit status (or -signal when it had to be stopped)."""
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    try:
        return proc.wait(timeout=budget + GRACE_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # it tears down and writes what it has
        try:
            return proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -signal.SIGKILL
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=GRACE_S)
        raise


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="500,1000,2000,5000", help="host counts, comma-separated")
    parser.add_argument("--per-host", type=int, default=20, help="replicas per host")
    parser.add_argument("--budget-per-host", type=float, default=0.5,
                        help="seconds of budget per host for each size (see --min-budget)")
    parser.add_argument("--min-budget", type=float, default=900.0, help="seconds, the least budget of a size")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--label", default="", help="suffix of the JSON files' names")
    parser.add_argument("--png", type=Path, default=None, help="draw the growth plot here at the end")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"bench/scale_sweep.py: --sizes {args.sizes!r}: expected numbers like 500,1000") \
            from None
    if not sizes or min(sizes) < 2 or args.per_host < 1:
        raise SystemExit("bench/scale_sweep.py: --sizes must be host counts of at least 2, --per-host >= 1")
    suffix = f"-{args.label}" if args.label else ""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    sweep: dict[str, Any] = {"sizes": sizes, "per_host": args.per_host, "extra_args": extra, "runs": [],
                             "commands": [], "exit_codes": [],
                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    sweep_file = args.out_dir / f"scale-sweep{suffix}.json"
    for hosts in sizes:
        replicas = hosts * args.per_host
        budget = budget_for(hosts, args.budget_per_host, args.min_budget)
        out = args.out_dir / f"scale-{hosts}-{replicas}{suffix}.json"
        command = [sys.executable, str(ROOT / "bench" / "scale.py"), "--hosts", str(hosts),
                   "--replicas", str(replicas), "--budget", str(budget), "--out", str(out), *extra]
        print(f"[{time.strftime('%H:%M:%S')}] sweep: {hosts} hosts, {replicas} replicas, budget {budget:g} s",
              file=sys.stderr, flush=True)
        out.unlink(missing_ok=True)
        code = run_one(command, budget)
        sweep["commands"].append(command[1:])
        sweep["exit_codes"].append(code)
        if out.exists():
            sweep["runs"].append(json.loads(out.read_text()))
        else:
            sweep["runs"].append({"hosts": hosts, "replicas": replicas, "error": f"no result (exit {code})"})
        sweep_file.write_text(json.dumps(sweep, indent=2) + "\n")  # after every size: a partial sweep counts
    print(f"written: {sweep_file}", file=sys.stderr)
    if args.png is not None:
        from bench import scale_plot  # matplotlib only when drawing

        scale_plot.plot(scale_plot.load([sweep_file]), args.png)
        print(f"written: {args.png}", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
