"""The committed generated code under proto/ must match what scripts/gen-proto.sh makes now."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(["bash", str(REPO / "scripts/gen-proto.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "gen-proto.sh produced nothing"
    stale = [str(rel) for rel in generated
             if not (REPO / rel).exists() or not filecmp.cmp(tmp_path / rel, REPO / rel, shallow=False)]
    assert not stale, f"stale generated code, run scripts/gen-proto.sh: {stale}"
