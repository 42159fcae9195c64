"""Through a real agent: its root and what it writes there are private (issue 12, finding 8)."""

from __future__ import annotations

import secrets
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration.agent.conftest import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.integration]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_an_existing_0755_root_becomes_0700(tmp_path: Path, busybox_image: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o755)
    (root / "events.jsonl").write_text("")
    (root / "events.jsonl").chmod(0o644)
    agent = AgentProcess(root=root, socket=tmp_path / "agent.sock",
                         cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=tmp_path / "agent.log")
    agent.start()
    try:
        assert _mode(root) == 0o700
        agent.run("image", "import", str(busybox_image), "--name", "test/private:v1")
        cid = agent.run("run", "-d", "test/private:v1", "sh", "-c", "echo hi; sleep 600").stdout.strip()
        agent.run("logs", cid)
        for path in (root / "images", root / "images" / "layers", root / "containers"):
            assert _mode(path) == 0o700, path
        for path in (root / "events.jsonl", root / "supervisor.log", root / "images" / "tags.json",
                     root / "containers" / cid / "ctr.log", root / "containers" / cid / "config.json"):
            assert _mode(path) == 0o600, path
        # Nothing a host user other than root could read at the top of the root.
        for entry in root.iterdir():
            if not entry.is_symlink():
                assert _mode(entry) & 0o077 == 0, entry
        # An unprivileged host user cannot even list it.
        listing = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                  "ls", str(root)], capture_output=True, text=True)
        assert listing.returncode != 0 and "Permission denied" in listing.stderr
    finally:
        agent.run("rm", "-f", *agent.run("ps", "-aq", "--no-trunc", check=False).stdout.split(), check=False)
        agent.stop()
        for d in Path("/sys/fs/cgroup").glob(f"*/{agent.cgroup_parent}"):
            d.rmdir()


def test_a_root_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "theirs"
    root.mkdir()
    subprocess.run(["chown", "65534:65534", str(root)], check=True)
    agent = AgentProcess(root=root, socket=tmp_path / "agent.sock", cgroup_parent="shoal-test-unused",
                         log=tmp_path / "agent.log")
    with pytest.raises(RuntimeError, match="belongs to uid 65534"):
        agent.start()
