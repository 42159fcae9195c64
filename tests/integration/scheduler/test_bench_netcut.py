"""bench/scale.py's mass failure as a dead machine: ``fail … cut`` drops a simulated host's packets
(nftables, in a network namespace of the test's own: ``unshare --net``), the scheduler's session notices
by its keepalive alone (heartbeat and usage interval far longer than the bounds), and ``recover`` mends
the cut so the session follows the host again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[3]


def test_a_cut_host_is_noticed_by_keepalive_and_followed_again_once_mended() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nft") is None:
        pytest.skip("needs root, unshare and nft")
    result = subprocess.run(["unshare", "--net", "--", sys.executable, "-m",
                             "tests.integration.scheduler.netcut_scenario"],
                            cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["cut"] == {"ok": True, "hosts": ["sim-00000"]}
    assert out["listed"] is True and out["after"] is False
    assert out["error"].startswith("UNAVAILABLE") and "ping" in out["error"], out
    assert out["mended"] == {"ok": True, "hosts": ["sim-00000"]}
