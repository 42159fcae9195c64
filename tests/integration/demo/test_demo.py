"""The README's main command, run as CI runs it: the cluster demo with its short profile.

``python -m scripts.demo --profile short`` is what ``scripts/demo.sh`` runs after installing. It must
exit 0 only when every step's expectation held (the demo checks each one and stops with status 1
otherwise), print what each step measured, write the timeline plot, and leave the machine as it found
it: no network namespace, cgroup, mount or process of its own, the machine's own network namespace
unchanged, and nothing in the temp directory. Interrupted (SIGINT, as Ctrl-C sends it) in the middle, it
cleans up the same way and exits 130.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.netns import root_netns_snapshot

pytestmark = [pytest.mark.root, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[3]
STEPS = ("declare", "serve", "load", "host bought", "load gone", "host dies", "leader dies")


@dataclass(frozen=True)
class Machine:
    """What the demo could leave behind, seen from outside it."""

    netns: frozenset[str]
    cgroups: frozenset[str]
    mounts: frozenset[str]
    processes: frozenset[str]
    temp: frozenset[str]
    root_netns: str

    @classmethod
    def now(cls) -> Machine:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        processes = set()
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"shoal-demo." in cmdline:
                text = cmdline.replace(b"\0", b" ").decode(errors="replace")
                processes.add(f"{proc.name}: {text[:150]}")
        return cls(
            netns=frozenset(line.split()[0] for line in listed.splitlines() if line.startswith("shoal-demo")),
            cgroups=frozenset(str(p) for p in Path("/sys/fs/cgroup").glob("*/shoal-demo*")),
            mounts=frozenset(line.split()[4] for line in mounts if "shoal-demo." in line.split()[4]),
            processes=frozenset(processes),
            temp=frozenset(p.name for p in Path(tempfile.gettempdir()).glob("shoal-demo.*")),
            root_netns=root_netns_snapshot(),
        )


def demo(out: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "scripts.demo", "--profile", "short", "--out", str(out),
                             *args], cwd=out.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.fixture
def untouched() -> Iterator[Machine]:
    if os.geteuid() != 0:
        pytest.skip("the demo needs root")
    before = Machine.now()
    yield before
    after = Machine.now()
    assert after == before, {k: (getattr(before, k), getattr(after, k)) for k in Machine.__dataclass_fields__
                             if getattr(before, k) != getattr(after, k)}


def test_the_demo_meets_every_expectation_and_leaves_nothing(untouched: Machine, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = demo(out)
    try:
        output, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # let it clean up before the fixture looks
        output, _ = proc.communicate(timeout=180)
        pytest.fail(f"the demo took more than 10 minutes:\n{output[-6000:]}")
    assert proc.returncode == 0, output[-8000:]
    table = output[output.index("What the demo measured"):]
    for step in STEPS:
        assert step in table, (step, table)
    assert not re.search(r"^\s+✗ ", output, re.M)  # no measurement missed its expectation
    assert not re.search(r"│ ✗ │", table)
    assert "requests failed during the failover and the rollout: 0 of" in output
    assert "nothing left behind" in output
    plot = out / "shoal-demo-timeline.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "shoal-demo-timeline.json").stat().st_size > 0


def test_an_interrupted_demo_cleans_up_and_says_so(untouched: Machine, tmp_path: Path) -> None:
    proc = demo(tmp_path / "out")
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # bounded: the demo ends by itself, and the deadline interrupts it anyway
        seen.append(line)
        if "==> Requests through the endpoints" in line or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
    rest, _ = proc.communicate(timeout=180)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output[-6000:]
    assert "interrupted" in output and "nothing left behind" in output, output[-4000:]
    assert not (tmp_path / "out" / "shoal-demo-timeline.png").exists()


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--hosts", "2"], {}, "--hosts 2: from 3"),
    ([], {"SHOAL_DEMO_HOSTS": "many"}, "SHOAL_DEMO_HOSTS='many'"),
    ([], {"SHOAL_DEMO_PROFILE": "slow"}, "SHOAL_DEMO_PROFILE='slow': full or short"),
])
def test_bad_flags_are_refused_before_anything_starts(args: list[str], env: dict[str, str], message: str,
                                                      untouched: Machine) -> None:
    result = subprocess.run([sys.executable, "-m", "scripts.demo", *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env}, timeout=60, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
