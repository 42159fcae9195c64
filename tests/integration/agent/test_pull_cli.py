"""Registry pulls end to end through the CLI: pull with progress, run pulling a missing image, prune, df."""

from __future__ import annotations

import re

import pytest

from tests.fixtures.registry import Catalogue, Registry
from tests.integration.agent.conftest import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.integration]


def test_pull_then_run(agent: AgentProcess, registry: Registry, registry_catalogue: Catalogue) -> None:
    ref = f"{registry.host}/busybox:oci"
    result = agent.run("image", "pull", ref)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", result.stdout), result.stdout
    assert result.stdout.strip() == registry_catalogue.busybox_oci.digest
    assert f"Pulled {ref}: 1 layer(s) downloaded, 0 already present" in result.stderr
    assert re.search(rf"^{re.escape(registry.host)}/busybox\s+oci\s", agent.run("image", "ls").stdout, re.M)
    # The same image as a Docker v2 manifest shares every layer: nothing is downloaded again.
    again = agent.run("image", "pull", f"{registry.host}/busybox:v2s2")
    assert "0 layer(s) downloaded, 1 already present" in again.stderr
    assert agent.run("run", "--rm", "--pull", "never", ref, "echo", "pulled").stdout == "pulled\n"
    quiet = agent.run("image", "pull", "-q", ref)
    assert quiet.stdout.strip() == registry_catalogue.busybox_oci.digest and quiet.stderr == ""
    agent.run("image", "rm", ref, f"{registry.host}/busybox:v2s2")


def test_run_pulls_a_missing_image(agent: AgentProcess, registry: Registry) -> None:
    ref = f"{registry.host}/umoci:v3"
    never = agent.run("run", "--rm", "--pull", "never", ref, "true", check=False)
    assert never.returncode == 125 and "no such image" in never.stderr
    result = agent.run("run", "--rm", ref, "sh", "-c", "test ! -e /etc/motd && echo whiteout-held")
    assert "Unable to find image" in result.stderr
    assert result.stdout == "whiteout-held\n"
    agent.run("image", "rm", ref)


def test_pull_errors_are_clear(agent: AgentProcess, registry: Registry) -> None:
    missing = agent.run("image", "pull", f"{registry.host}/busybox:nope", check=False)
    assert missing.returncode != 0 and "busybox:nope" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    no_registry = agent.run("image", "pull", "busybox:latest", check=False)
    assert no_registry.returncode != 0 and "needs a registry" in no_registry.stderr
    registry.stop()
    down = agent.run("image", "pull", f"{registry.host}/busybox:oci", check=False)
    assert down.returncode != 0 and "cannot reach the agent" not in down.stderr


def test_prune_and_system_df(agent: AgentProcess, registry: Registry) -> None:
    ref = f"{registry.host}/multi:oci"
    agent.run("image", "pull", ref)
    cid = agent.run("run", "-d", ref, "sh", "-c", "head -c 300000 /dev/zero > /big; sleep 300").stdout.strip()
    df = agent.run("system", "df", "-v").stdout
    assert re.search(r"^Images\s+\d+\s+1\s", df, re.M), df
    assert re.search(r"^Containers\s+\d+\s+1\s", df, re.M), df
    assert cid[:12] in df
    # Untag while the container runs: prune must keep what the container uses.
    assert agent.run("image", "rm", ref, check=False).returncode != 0  # in use
    pruned = agent.run("image", "prune").stdout
    assert "Removed" in pruned
    assert agent.run("exec", cid, "cat", "/etc/shoal-arch").stdout.strip() == "amd64"
    agent.run("rm", "-f", cid)
    agent.run("image", "rm", ref)
    final = agent.run("image", "prune").stdout
    assert "freed" in final


def test_full_disk_during_a_pull(tiny_agent: AgentProcess, registry: Registry) -> None:
    result = tiny_agent.run("image", "pull", f"{registry.host}/busybox:oci", check=False)
    assert result.returncode != 0
    assert "no space left" in result.stderr.lower() and "layer 1/1" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    images = tiny_agent.root / "images"
    assert not any((images / "layers").iterdir()) and not any((images / "tmp").iterdir())
    assert "busybox" not in tiny_agent.run("image", "ls").stdout
