"""A hostile registry against a real agent (issue 12, findings 4 and 5): it cannot hang the agent, make
local operations wait, survive the caller going away or SIGTERM, or fill the disk.

The agent runs with a short ``--pull-blob-deadline`` and a small ``--max-unpacked-layer-size``; the
registry is ``tests.fixtures.hostile_registry``. Every wait is bounded (subprocess timeouts, bounded
polls, pytest-timeout), so a regression fails here instead of hanging CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import images as image_fixtures
from tests.fixtures.hostile_images import gzip_bomb
from tests.fixtures.hostile_registry import HostileRegistry
from tests.integration.agent.conftest import AgentProcess, private_agent, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration, pytest.mark.timeout(240)]

DEADLINE_S = 20  # the agent's --pull-blob-deadline here: long next to the local operations it must not block


def small_layer() -> bytes:
    f = image_fixtures
    return f.layer_tar([f.directory("data"), f.file("data/x", os.urandom(50_000))])


@pytest.fixture(scope="module")
def hostile_agent(tmp_path_factory: pytest.TempPathFactory, busybox_image: Path) -> Iterator[AgentProcess]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    with private_agent(tmp_path_factory.mktemp("hostile-agent"), busybox_image,
                       extra_args=["--pull-blob-deadline", f"{DEADLINE_S}s", "--max-unpacked-layer-size",
                                   "64M", "--max-layer-size", "1G"]) as proc:
        yield proc


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    with HostileRegistry() as registry:
        yield registry


def downloads(agent: AgentProcess) -> list[str]:
    return [p for p in os.listdir(agent.root / "images" / "tmp") if p.startswith(".blob-")]


def test_short_bodies_with_range_ignored_fail_after_bounded_retries(hostile_agent: AgentProcess,
                                                                    hostile: HostileRegistry) -> None:
    image = hostile.add_image("short", "v1", layer_tar=small_layer(), behaviour="short")
    result = hostile_agent.run("image", "pull", image.ref, check=False, timeout=120)
    assert result.returncode != 0
    assert "kept failing" in result.stderr and "attempts without progress" in result.stderr, result.stderr
    # one attempt that got half the blob, then the agent's 4 retries that got no further, then one more
    assert hostile.blob_gets(image.layer_blob) == 6
    assert downloads(hostile_agent) == []


def test_a_stalled_download_blocks_no_local_operation_and_ends_at_the_deadline(
        hostile_agent: AgentProcess, hostile: HostileRegistry) -> None:
    agent = hostile_agent
    other = hostile.add_image("other", "v1", layer_tar=small_layer())
    agent.run("image", "pull", other.ref)
    cid = agent.run("create", "test/busybox:v1", "true").stdout.strip()
    image = hostile.add_image("stall", "v1", layer_tar=small_layer(), behaviour="stall")
    pull = agent.popen("image", "pull", image.ref)
    try:
        wait_for(lambda: hostile.blob_gets(image.layer_blob) >= 1 and downloads(agent))
        # Every one of these used to wait behind the download (gc lock, coalescing, worker threads).
        agent.run("image", "rm", other.ref, timeout=30)
        agent.run("image", "prune", timeout=30)
        agent.run("rm", cid, timeout=30)
        assert agent.run("run", "--rm", "test/busybox:v1", "echo", "ok", timeout=30).stdout == "ok\n"
        assert pull.poll() is None, "the pull ended before the local operations were tried"
        assert downloads(agent), "prune removed the download in progress"
        _out, err = pull.communicate(timeout=DEADLINE_S + 60)
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait(timeout=10)
    assert pull.returncode != 0
    assert f"not finished within {DEADLINE_S}s (the agent's --pull-blob-deadline)" in err, err
    assert downloads(agent) == []


def test_a_cancelled_pull_stops_downloading(hostile_agent: AgentProcess, hostile: HostileRegistry) -> None:
    image = hostile.add_image("cancel", "v1", layer_tar=small_layer(), behaviour="stall")
    pull = hostile_agent.popen("image", "pull", image.ref)
    try:
        wait_for(lambda: downloads(hostile_agent))
    finally:
        pull.send_signal(signal.SIGKILL)  # the client goes away: its gRPC call is cancelled
        pull.wait(timeout=10)
    # Long before the deadline: the cancellation reached the blocked read and removed the download.
    wait_for(lambda: not downloads(hostile_agent), timeout=DEADLINE_S / 2)


def test_a_huge_declared_layer_is_refused_before_any_download(hostile_agent: AgentProcess,
                                                              hostile: HostileRegistry) -> None:
    image = hostile.add_image("huge", "v1", layer_tar=small_layer(), behaviour="endless",
                              declared_size=1 << 62)
    result = hostile_agent.run("image", "pull", image.ref, check=False)
    assert result.returncode != 0
    assert f"declares {1 << 62} bytes" in result.stderr and "--max-layer-size" in result.stderr, result.stderr
    assert hostile.blob_gets(image.layer_blob) == 0


def test_a_gzip_bomb_is_refused_and_leaves_nothing(hostile_agent: AgentProcess,
                                                   hostile: HostileRegistry) -> None:
    bomb = gzip_bomb(512 << 20)
    image = hostile.add_image("bomb", "v1", layer_blob=bomb.blob, diff_id=bomb.diff_id)
    layers_before = sorted(os.listdir(hostile_agent.root / "images" / "layers"))
    result = hostile_agent.run("image", "pull", image.ref, check=False, timeout=120)
    assert result.returncode != 0
    assert "unpacks to more than 67108864 bytes" in result.stderr, result.stderr
    assert "--max-unpacked-layer-size" in result.stderr
    assert os.listdir(hostile_agent.root / "images" / "tmp") == []
    assert sorted(os.listdir(hostile_agent.root / "images" / "layers")) == layers_before


def test_sigterm_during_a_stalled_pull_stops_the_agent(hostile_agent: AgentProcess,
                                                       hostile: HostileRegistry) -> None:
    image = hostile.add_image("sigterm", "v1", layer_tar=small_layer(), behaviour="stall")
    pull = hostile_agent.popen("image", "pull", image.ref)
    try:
        wait_for(lambda: downloads(hostile_agent))
        assert hostile_agent.proc is not None
        hostile_agent.proc.terminate()
        # Well before the blob deadline: the download was stopped, not waited for.
        try:
            hostile_agent.proc.wait(timeout=DEADLINE_S / 2)
        except subprocess.TimeoutExpired:
            pytest.fail("the agent survived SIGTERM while a download was stalled")
        hostile_agent.proc = None
    finally:
        pull.kill()
        pull.wait(timeout=10)
    hostile_agent.start()  # for the module's teardown
