"""``--storage-size`` through a real agent and CLI (issue 12, finding 1): a container writing past its
writable-layer limit is stopped with the reason recorded and shown, one under its limit keeps running,
and the agent reports how it enforces the limit on this host.

This kernel has no project quotas (ext4 needs CONFIG_QFMT_V2, xfs CONFIG_XFS_QUOTA), so the agent
measures; ``test_project_quota_on_a_loop_mounted_ext4`` exercises the quota path where the kernel
allows it and says why not otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent.conftest import AgentProcess, wait_for
from tests.integration.agent.test_restart_policy import events, of

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"


def inspect(agent: AgentProcess, ref: str) -> dict[str, Any]:
    return json.loads(agent.run("inspect", ref).stdout)[0]  # type: ignore[no-any-return]


def host(agent: AgentProcess) -> dict[str, Any]:
    return json.loads(agent.run("host", "--json").stdout)  # type: ignore[no-any-return]


def test_the_agent_reports_how_it_enforces_storage_limits(agent: AgentProcess) -> None:
    info = host(agent)
    assert info["storage_limit_enforcement"] in ("project-quota", "measured")
    assert info["storage_limit_detail"]
    assert f"--storage-size is enforced by {info['storage_limit_enforcement']}" in agent.log.read_text()


def test_a_container_past_its_limit_is_evicted_and_one_under_it_keeps_running(agent: AgentProcess) -> None:
    if host(agent)["storage_limit_enforcement"] != "measured":
        pytest.skip("project quotas enforce the limit here: the write fails instead (quota test below)")
    agent.run("run", "-d", "--name", "modest", "--storage-size", "16M", IMAGE, "sh", "-c",
              "dd if=/dev/zero of=/small bs=1M count=2 && sleep 600")
    agent.run("run", "-d", "--name", "hog", "--storage-opt", "size=8M", IMAGE, "sh", "-c",
              "dd if=/dev/zero of=/big bs=1M count=40; sync; sleep 600")
    assert inspect(agent, "hog")["spec"]["resources"]["storage_bytes"] == str(8 << 20)

    info = wait_for(lambda: (i := inspect(agent, "hog"))["state"] == "exited" and i, timeout=30)
    assert info["reason"] == "Evicted" and info["exit_code"] == 137
    assert "over its 8M storage limit" in info["error"] and info["error"].startswith("writable layer ")
    ps = agent.run("ps", "-a", "--filter", "name=hog").stdout
    assert "Exited (137) Evicted" in ps

    evts = events(agent, until=lambda es: "exited" in of(es, "hog"))
    assert of(evts, "hog")[-2:] == ["evicted", "exited"]
    evicted = next(e for e in evts if e.get("container_name") == "hog" and e["type"] == "EVENT_TYPE_EVICTED")
    assert "storage limit" in evicted["message"]

    # The modest one was measured in the same samples (every limited layer, every interval) and stays.
    modest = inspect(agent, "modest")
    assert modest["state"] == "running" and not modest["reason"]
    agent.run("rm", "-f", "hog", "modest")


def test_the_restart_policy_applies_after_an_eviction(agent: AgentProcess) -> None:
    if host(agent)["storage_limit_enforcement"] != "measured":
        pytest.skip("project quotas enforce the limit here")
    # The layer survives a restart, so the container is evicted again on its first measurement.
    agent.run("run", "-d", "--name", "relapse", "--restart", "on-failure:1", "--storage-size", "4M", IMAGE,
              "sh", "-c", "[ -e /big ] || dd if=/dev/zero of=/big bs=1M count=12; sleep 600")
    info = wait_for(lambda: (i := inspect(agent, "relapse"))["restart_count"] == 1 and i["state"] == "exited"
                    and not i.get("next_restart_at") and i, timeout=40)
    assert info["reason"] == "Evicted" and "over its 4M storage limit" in info["error"]
    agent.run("rm", "-f", "relapse")


def test_bad_storage_sizes_are_refused_at_create(agent: AgentProcess) -> None:
    for args, message in ((["--storage-size", "12"], "is too small: the minimum is 1M"),
                          (["--storage-size", "1Q"], "invalid storage size"),
                          (["--storage-opt", "inodes=5"], "unsupported storage option")):
        result = agent.run("create", *args, IMAGE, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    assert agent.run("ps", "-a", "-q").stdout.strip() == ""


@pytest.fixture
def loop_ext4(tmp_path: Path) -> Path:
    """An ext4 image made for project quotas (``-O quota,project``), loop-mounted ``prjquota``."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    image, mnt = tmp_path / "quota.img", tmp_path / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "quota,project", "-E", "quotatype=prjquota", str(image)],
                   check=True)
    mounted = subprocess.run(["mount", "-o", "loop,prjquota", str(image), str(mnt)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip("this kernel cannot mount ext4 with project quotas (needs CONFIG_QUOTA and "
                    f"CONFIG_QFMT_V2): {mounted.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_project_quota_on_a_loop_mounted_ext4(loop_ext4: Path) -> None:
    from agent.rootfs import storage_limit

    choice = storage_limit.choose_enforcement(loop_ext4)
    assert choice.mode is storage_limit.Enforcement.PROJECT_QUOTA, choice.detail
    upper, work = loop_ext4 / "upper", loop_ext4 / "work"
    upper.mkdir()
    work.mkdir()
    quotas = storage_limit.ProjectQuotas(loop_ext4)
    project = quotas.apply(upper=upper, work=work, limit_bytes=4 << 20)
    assert quotas.apply(upper=upper, work=work, limit_bytes=4 << 20) == project  # idempotent
    # Written by a process without CAP_SYS_RESOURCE, as a container is (root would ignore the limit).
    script = (f"import os\nfd = os.open({str(upper / 'f')!r}, os.O_WRONLY | os.O_CREAT)\n"
              "try:\n    [os.write(fd, b'x' * (1 << 20)) for _ in range(8)]\n    os.fsync(fd)\n"
              "except OSError as e:\n    print(e.errno)\n")
    result = subprocess.run(["capsh", "--drop=cap_sys_resource", "--", "-c", f"python3 -c {script!r}"],
                            capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "122", result  # EDQUOT
    quotas.release(upper)
