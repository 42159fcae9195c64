"""Device nodes from image layers: the container sees them, no unprivileged host user can use them
(issue 12, finding 8)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures import images as image_fixtures
from tests.integration.agent.conftest import AgentProcess, full_busybox_layer, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

# Major 1, minor 3 is /dev/null: harmless if a check ever fails open, and allowed by the device cgroup.
MAJOR, MINOR = 1, 3


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30)


def _nobody_can_open(path: Path) -> bool:
    # `exec 3<>PATH` opens read-write without reading or writing anything.
    return _as_nobody("/bin/sh", "-c", f'exec 3<>"{path}"').returncode == 0


@pytest.fixture
def device_image(agent: AgentProcess, tmp_path: Path) -> str:
    f = image_fixtures
    layer = f.layer_tar([f.directory("probe", 0o755), f.chardev("probe/null", MAJOR, MINOR, 0o666)])
    layout = image_fixtures.build_oci_layout(tmp_path / "devices", [full_busybox_layer(), layer],
                                             ref_name="v1", config={"Env": ["PATH=/bin"]})
    agent.run("image", "import", str(layout), "--name", "test/devices:v1")
    return "test/devices:v1"


def test_layer_device_nodes_are_unusable_from_the_host(agent: AgentProcess, device_image: str) -> None:
    nodes = [p for p in (agent.root / "images" / "layers").glob("*/probe/null")]
    assert len(nodes) == 1
    st = nodes[0].lstat()
    assert (st.st_mode & 0o777, st.st_rdev) == (0o666, os.makedev(MAJOR, MINOR))
    # Root can (the check can succeed); nobody cannot reach it through the store.
    assert subprocess.run(["/bin/sh", "-c", f'exec 3<>"{nodes[0]}"']).returncode == 0
    assert not _nobody_can_open(nodes[0])

    # The container sees the node as the image made it; the root is mounted nodev, so nobody opens it
    # there (the container's own /dev/null, on its /dev tmpfs, works).
    out = agent.run("run", "--rm", "-u", "65534", device_image, "sh", "-c",
                    "stat -c '%F %t:%T %a' /probe/null; echo x > /probe/null || echo refused;"
                    " echo x > /dev/null && echo dev-ok").stdout
    assert out.splitlines() == ["character special file 1:3 666", "refused", "dev-ok"]

    # While a container runs as uid 65534, host uid 65534 cannot reach the node through its /proc root.
    cid = agent.run("run", "-d", "-u", "65534", device_image, "sleep", "600").stdout.strip()
    try:
        pid = json.loads(agent.run("inspect", cid).stdout)[0]["pid"]
        wait_for(lambda: Path(f"/proc/{pid}/root/probe/null").exists())
        assert not _nobody_can_open(Path(f"/proc/{pid}/root/probe/null"))
    finally:
        agent.run("rm", "-f", cid)
        agent.run("image", "rm", device_image, check=False)
