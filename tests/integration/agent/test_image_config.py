"""Images through the agent: the image config is honoured, bad images and full disks fail cleanly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures import images as image_fixtures
from tests.integration.agent.conftest import AgentProcess, full_busybox_layer

pytestmark = [pytest.mark.root, pytest.mark.integration]


def _image(tmp: Path, name: str, config: dict[str, object], *, extra: list[bytes] | None = None) -> Path:
    layers = [full_busybox_layer(), *(extra or [])]
    return image_fixtures.build_oci_layout(tmp / name, layers, ref_name="v1", config=config)


def test_image_config_is_honoured(agent: AgentProcess, tmp_path: Path) -> None:
    f = image_fixtures
    app_layer = f.layer_tar([
        f.directory("etc"),
        f.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"),
        f.file("etc/group", b"root:x:0:\napp:x:1000:\n"),
        f.directory("srv", 0o777),
    ])
    config = {
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ['echo "$GREETING $(pwd) $(id -u):$(id -g) $HOME $PATH"'],
        "Env": ["PATH=/bin:/usr/bin", "GREETING=hello"],
        "WorkingDir": "/srv",
        "User": "app",
    }
    layout = _image(tmp_path, "configured", config, extra=[app_layer])
    agent.run("image", "import", str(layout), "--name", "test/configured:v1")
    out = agent.run("run", "--rm", "test/configured:v1").stdout.strip()
    assert out == "hello /srv 1000:1000 /home/app /bin:/usr/bin"
    # CMD after the image replaces Cmd but keeps the Entrypoint; -e overrides Env; -u and -w override.
    out = agent.run("run", "--rm", "-e", "GREETING=bye", "-u", "0", "-w", "/", "test/configured:v1",
                    'echo "$GREETING $(pwd) $(id -u)"').stdout.strip()
    assert out == "bye / 0"
    info = json.loads(agent.run("image", "inspect", "test/configured:v1").stdout)[0]
    assert info["config"]["entrypoint"] == ["/bin/sh", "-c"] and info["config"]["user"] == "app"
    agent.run("image", "rm", "test/configured:v1")


def test_image_without_a_command_needs_one(agent: AgentProcess, tmp_path: Path) -> None:
    layout = _image(tmp_path, "nocmd", {"Env": ["PATH=/bin"]})
    agent.run("image", "import", str(layout), "--name", "test/nocmd:v1")
    result = agent.run("run", "--rm", "test/nocmd:v1", check=False)
    assert result.returncode == 125
    assert "no command specified" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert agent.run("run", "--rm", "test/nocmd:v1", "echo", "given").stdout == "given\n"
    agent.run("image", "rm", "test/nocmd:v1")


def test_docker_archive_from_skopeo_runs(agent: AgentProcess, tmp_path: Path, busybox_image: Path) -> None:
    archive = tmp_path / "busybox-docker.tar"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{busybox_image}:v1",
                    f"docker-archive:{archive}:test/dockerfmt:v1"], check=True, capture_output=True)
    agent.run("image", "import", str(archive))
    assert "test/dockerfmt" in agent.run("image", "ls").stdout
    assert agent.run("run", "--rm", "test/dockerfmt:v1", "echo", "ok").stdout == "ok\n"
    agent.run("image", "rm", "test/dockerfmt:v1")


def test_hostile_archive_is_refused_with_one_line(agent: AgentProcess, tmp_path: Path) -> None:
    f = image_fixtures
    evil = f.layer_tar([f.file("../../escaped", b"pwned")])
    layout = image_fixtures.build_oci_layout(tmp_path / "evil", [evil], ref_name="v1")
    result = agent.run("image", "import", str(layout), "--name", "test/evil:v1", check=False)
    assert result.returncode != 0 and ".." in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "test/evil" not in agent.run("image", "ls").stdout
    assert not (agent.root.parent / "escaped").exists() and not Path("/escaped").exists()


def test_full_disk_while_unpacking(tiny_agent: AgentProcess, busybox_image: Path) -> None:
    result = tiny_agent.run("image", "import", str(busybox_image), "--name", "test/big:v1", check=False)
    assert result.returncode != 0
    assert "no space left" in result.stderr.lower(), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "test/big" not in tiny_agent.run("image", "ls").stdout
    layers = tiny_agent.root / "images" / "layers"
    assert not layers.exists() or not any(layers.iterdir())
