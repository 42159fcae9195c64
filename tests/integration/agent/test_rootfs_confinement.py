"""Through the agent: an image's symlinks never make ``--user`` or ``exec -u`` read a host file (issue 12,
finding 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import images as image_fixtures
from tests.integration.agent.conftest import AgentProcess, full_busybox_layer

pytestmark = [pytest.mark.root, pytest.mark.integration]


def test_user_names_are_looked_up_inside_the_image(agent: AgentProcess, tmp_path: Path) -> None:
    f = image_fixtures
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "passwd").write_text("hostonly:x:4242:4242:host:/secret:/bin/sh\n")
    (host / "group").write_text("hostgrp:x:4343:\n")
    hostile = f.layer_tar([
        f.directory("etc"),
        f.symlink("etc/passwd", str(host / "passwd")),  # absolute, to the host file
        f.symlink("etc/group", "../" * 20 + str(host / "group").lstrip("/")),  # a `..` chain
    ])
    layout = image_fixtures.build_oci_layout(tmp_path / "hostile", [full_busybox_layer(), hostile],
                                             ref_name="v1", config={"Env": ["PATH=/bin"]})
    agent.run("image", "import", str(layout), "--name", "test/hostile-passwd:v1")
    try:
        result = agent.run("run", "--rm", "-u", "hostonly", "test/hostile-passwd:v1", "id", "-u", check=False)
        assert result.returncode == 125, result
        assert "unable to find user hostonly" in result.stderr
        result = agent.run("run", "--rm", "-u", "0:hostgrp", "test/hostile-passwd:v1", "id", check=False)
        assert result.returncode == 125 and "unable to find group hostgrp" in result.stderr
        # Numeric ids need no lookup, and the container starts: the image itself is usable.
        assert agent.run("run", "--rm", "-u", "7:7", "test/hostile-passwd:v1", "id", "-u").stdout == "7\n"

        agent.run("run", "-d", "--name", "hostile-exec", "test/hostile-passwd:v1", "sleep", "600")
        result = agent.run("exec", "-u", "hostonly", "hostile-exec", "id", "-u", check=False)
        assert result.returncode != 0 and "unable to find user hostonly" in result.stderr
        assert agent.run("exec", "-u", "9", "hostile-exec", "id", "-u").stdout == "9\n"
    finally:
        agent.run("rm", "-f", "hostile-exec", check=False)
        agent.run("image", "rm", "test/hostile-passwd:v1", check=False)


def test_exec_user_reads_what_the_container_wrote_inside(agent: AgentProcess, tmp_path: Path) -> None:
    host = tmp_path / "host-passwd"
    host.write_text("hostonly:x:4242:4242:host:/secret:/bin/sh\n")
    cid = agent.run("run", "-d", "test/busybox:v1", "sleep", "600").stdout.strip()
    try:
        # Like docker exec -u: a user the container added since it started is found...
        agent.run("exec", cid, "sh", "-c", "echo 'late:x:5555:5555::/:/bin/sh' >> /etc/passwd")
        assert agent.run("exec", "-u", "late", cid, "id", "-u").stdout == "5555\n"
        # ...and a container that turns its passwd into a symlink to a host path gets nothing from the host.
        agent.run("exec", cid, "ln", "-sf", str(host), "/etc/passwd")
        result = agent.run("exec", "-u", "hostonly", cid, "id", "-u", check=False)
        assert result.returncode != 0 and "unable to find user hostonly" in result.stderr
    finally:
        agent.run("rm", "-f", cid, check=False)


def test_a_symlinked_working_dir_is_created_inside_the_container(agent: AgentProcess, tmp_path: Path) -> None:
    f = image_fixtures
    host_target = tmp_path / "host-wd" / "created"
    layer = f.layer_tar([f.symlink("srv", str(host_target))])  # absolute, to a host path that does not exist
    layout = image_fixtures.build_oci_layout(tmp_path / "wd", [full_busybox_layer(), layer], ref_name="v1",
                                             config={"Env": ["PATH=/bin"], "WorkingDir": "/srv"})
    agent.run("image", "import", str(layout), "--name", "test/hostile-wd:v1")
    try:
        # Docker's behaviour: the link is followed inside the container and its target created there.
        out = agent.run("run", "--rm", "test/hostile-wd:v1", "pwd", "-P").stdout
        assert out == f"{host_target}\n"
        out = agent.run("run", "--rm", "-w", "/srv/deeper", "test/hostile-wd:v1", "pwd", "-P").stdout
        assert out == f"{host_target}/deeper\n"
        assert not (tmp_path / "host-wd").exists()
    finally:
        agent.run("image", "rm", "test/hostile-wd:v1", check=False)
