"""``python -m scripts.demo [--hosts N] [--profile full|short] [--out DIR]``: the cluster demo (run as root).

``scripts/demo.sh`` installs everything, then runs this. Exit status: 0 when every step's expectation
held and nothing was left behind, 1 when a step failed (it says which and why) or something had to be
cleaned up by force, 130 when interrupted (Ctrl-C or SIGTERM: the clean-up runs either way).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Protocol

from scripts.demo.cluster import PREFIX, PROVIDER_PORT, DemoCluster
from scripts.demo.image import build_image
from scripts.demo.leftovers import Snapshot, differences
from scripts.demo.live import cluster_view
from scripts.demo.load import LoadGenerator
from scripts.demo.machines import DemoMachines
from scripts.demo.story import PROFILES, Reader, Story, write_outputs
from scripts.demo.timeline import Sampler
from scripts.demo.view import DemoFailed, Narrator
from tests.fixtures.elastic_provider import ProviderWebhook

HOSTS_ENV = "SHOAL_DEMO_HOSTS"
PROFILE_ENV = "SHOAL_DEMO_PROFILE"
MIN_HOSTS, MAX_HOSTS = 3, 12


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo.sh",
        description="A whole Shoal cluster on this machine: etcd, two schedulers, agent hosts in network "
                    "namespaces, Prometheus, a load generator and a host provider; each step measured.")
    parser.add_argument("--hosts", type=int, default=None, metavar="N",
                        help=f"agent hosts, one zone each ({MIN_HOSTS}-{MAX_HOSTS}; default "
                             f"${HOSTS_ENV} or 3)")
    parser.add_argument("--profile", choices=("full", "short"), default=None,
                        help=f"full: paced for a person to watch; short: no pauses, for CI (default "
                             f"${PROFILE_ENV} or full)")
    parser.add_argument("--out", type=Path, default=Path("shoal-demo"), metavar="DIR",
                        help="where the timeline plot and its numbers are written (default ./shoal-demo)")
    args = parser.parse_args(argv)
    if args.hosts is None:
        raw = os.environ.get(HOSTS_ENV, "3")
        try:
            args.hosts = int(raw)
        except ValueError:
            parser.error(f"{HOSTS_ENV}={raw!r}: a whole number of hosts, {MIN_HOSTS} to {MAX_HOSTS}")
    if not MIN_HOSTS <= args.hosts <= MAX_HOSTS:
        parser.error(f"--hosts {args.hosts}: from {MIN_HOSTS} (one per zone the service spreads over) "
                     f"to {MAX_HOSTS} (this machine's cpu)")
    if args.profile is None:
        args.profile = os.environ.get(PROFILE_ENV, "full")
        if args.profile not in ("full", "short"):
            parser.error(f"{PROFILE_ENV}={args.profile!r}: full or short")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces, mounts, cgroups)", file=sys.stderr)
        return 1
    say = Narrator()
    tag = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix="shoal-demo."))
    work.chmod(0o711)  # the agents' roots below are 0700 themselves
    signal.signal(signal.SIGTERM, _interrupt)
    before = Snapshot.take(work, f"{PREFIX}-{tag}")
    cluster = DemoCluster(work=work, tag=tag, hosts_wanted=args.hosts)
    closers: list[Closer] = []
    status = 0
    try:
        status = _run(args, say, cluster, closers)
    except DemoFailed as err:
        say.console.print(f"\n[bold red]demo failed:[/] {err}")
        status = 1
    except KeyboardInterrupt:
        say.console.print("\n[bold]interrupted[/]: cleaning up")
        status = 130
    except Exception:
        say.console.print("\n[bold red]demo failed with an unexpected error:[/]")
        say.console.print(traceback.format_exc())
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up is bounded: let it finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        problems = _clean_up(say, cluster, closers)
        if problems or status not in (0, 130):
            say.console.print(f"    the logs are kept in {_keep_logs(work, args.out)}")
        shutil.rmtree(work, ignore_errors=True)
        left = differences(before, Snapshot.take(work, f"{PREFIX}-{tag}"))
        if problems or left:
            for line in problems + left:
                say.console.print(f"    [yellow]! {line}[/]")
            status = status or 1
        else:
            say.console.print("    [green]✓[/] nothing left behind: no process, namespace, mount, cgroup or "
                              "file of the demo; the machine's own network namespace untouched")
    return status


class Closer(Protocol):
    def close(self) -> list[str]: ...


def _run(args: argparse.Namespace, say: Narrator, cluster: DemoCluster, closers: list[Closer]) -> int:
    profile = PROFILES[args.profile]
    say.step(f"A Shoal cluster on this machine: {args.hosts} hosts, profile {profile.name} "
             f"(work directory {cluster.work})")
    started = time.monotonic()
    layout = build_image(cluster.work)
    say.progress("the demo image (busybox httpd and a cgi script), built with umoci",
                 time.monotonic() - started)
    closers.append(cluster)
    cluster.start(say.progress)
    cluster.start_hosts(layout, say.progress)
    machines = DemoMachines(cluster, layout)
    provider = ProviderWebhook(cluster.ctl.name, str(cluster.ctl.address), PROVIDER_PORT, machines)
    closers.append(provider)
    say.progress(f"the host provider: a webhook at {provider.url}", 0.0)
    say.say(f"try it from another terminal:  SHOAL_SCHEDULER={cluster.scheduler_sockets} "
            f"{Path(sys.executable).parent / 'shoal'} top")

    clock = time.monotonic()
    load = LoadGenerator(cluster.client.name, Reader(cluster.connect()).endpoints, started=clock)
    load.__enter__()
    closers.append(load)
    timeline = Sampler(Reader(cluster.connect()).sample, load.answered_per_second, started=clock)
    timeline.start()
    closers.append(timeline)
    story = Story(cluster=cluster, read=Reader(cluster.connect()), machines=machines, provider=provider,
                  load=load, timeline=timeline, say=say, profile=profile, started=clock)
    with say.live(cluster_view(cluster.connect())):
        story.run()
    timeline.stop()
    paths = write_outputs(timeline, args.out, hosts=args.hosts)
    say.summary()
    say.console.print(f"\n    timeline: [bold]{paths[0]}[/] (numbers in {paths[1]})")
    return 0


def _keep_logs(work: Path, out: Path) -> Path:
    """A failed demo's logs (every daemon's), for whoever finds out why."""
    kept = out / "logs"
    kept.mkdir(parents=True, exist_ok=True)
    for log in work.rglob("*.log"):
        if "containers" in log.parts:
            continue
        shutil.copy(log, kept / "-".join(log.relative_to(work).parts))
    return kept


def _clean_up(say: Narrator, cluster: DemoCluster, closers: list[Closer]) -> list[str]:
    say.step("Clean up")
    started = time.monotonic()
    problems: list[str] = []
    for thing in reversed(closers):  # the load and the timeline, the provider's hosts, then everything
        try:
            problems += thing.close()
        except Exception as err:
            problems.append(f"closing {type(thing).__name__}: {err}")
    if cluster not in closers:  # it failed before the cluster was started: namespaces may exist
        problems += cluster.close()
    say.progress("every process stopped, every container, namespace, cgroup and file removed",
                 time.monotonic() - started)
    return problems


if __name__ == "__main__":
    sys.exit(main())
