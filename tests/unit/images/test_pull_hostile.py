"""A registry that stalls or lies about sizes cannot hold local image operations hostage or fill the disk
(issue 12, findings 4 and 5): while a
layer download is stuck, ``image rm`` and ``prune`` finish (no lock is held across network I/O) and keep
what the pull will still need; a second pull of the same layer that is cancelled stops waiting; and
``Puller.close`` (the agent stopping) ends a pull in progress; a manifest declaring a 2^62-byte layer is
refused before any download and a gzip bomb before it is unpacked, leaving nothing behind. Each blocking
step runs in a thread joined with a bound, so a regression fails the test instead of hanging it."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import InvalidArgument
from agent.images import pull as pull_module
from agent.images.abort import Abort, Aborted
from agent.images.layers import UnpackLimits
from agent.images.store import ImageStore
from tests.fixtures.hostile_images import gzip_bomb
from tests.unit.images.test_distribution import FakeRegistry, digest_of
from tests.unit.images.test_pull import REG, make_puller, small_layer

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
BOUND_S = 30.0


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("layer extraction sets ownership and creates devices: needs root")


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


class Background:
    """Runs ``fn`` in a thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc

    def join(self) -> object:
        self._thread.join(BOUND_S)
        assert not self._thread.is_alive(), "still blocked: it waited on a stalled download"
        if self.error is not None:
            raise self.error
        return self.result


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():  # bounded poll of state the code under test exposes no event for
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


class Gated:
    """app:v1 with a quick layer and a layer whose blob GET blocks until ``gate`` is set."""

    def __init__(self, registry: FakeRegistry) -> None:
        quick, stuck = small_layer("quick"), small_layer("stuck", 300_000)
        self.quick_diff_id, self.stuck_diff_id = digest_of(quick), digest_of(stuck)
        registry.add_image("app", "v1", [quick, stuck])
        self.stuck_blob = next(d for d, data in registry.blobs.items() if len(data) > 250_000)
        self.gate = registry.gate[self.stuck_blob] = threading.Event()


def requested(registry: FakeRegistry, digest: str) -> bool:
    return registry.blob_gets(digest) > 0


def test_rm_and_prune_do_not_wait_for_a_stalled_download_and_keep_what_it_needs(
        store: ImageStore, fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image("other", "v1", [small_layer("other")])
    puller = make_puller(store, fake, tmp_path)
    other = puller.pull(f"{REG}/other:v1")
    app = Gated(fake)
    stuck, gate, quick_diff_id = app.stuck_blob, app.gate, app.quick_diff_id
    try:
        pulling = Background(lambda: puller.pull(f"{REG}/app:v1"))
        wait_until(lambda: requested(fake, stuck) and store.has_layer(quick_diff_id))
        removed = Background(lambda: store.remove(f"{REG}/other:v1", in_use=lambda _i: False)).join()
        assert removed == [f"{REG}/other:v1", other.id]
        report = Background(lambda: store.prune(image_in_use=lambda _i: False, layers_in_use=set)).join()
        # the pull's finished layer is unreferenced until its commit, and held meanwhile
        assert quick_diff_id not in report.layers  # type: ignore[attr-defined]
        assert store.has_layer(quick_diff_id)
        assert [p for p in os.listdir(store.root / "tmp") if p.startswith(".blob-")]  # download kept
    finally:
        gate.set()
    image = pulling.join()
    assert store.resolve(f"{REG}/app:v1").id == image.id  # type: ignore[attr-defined]


def test_a_cancelled_pull_stops_waiting_for_another_pulls_download(
        store: ImageStore, fake: FakeRegistry, tmp_path: Path) -> None:
    app = Gated(fake)
    stuck, gate = app.stuck_blob, app.gate
    puller = make_puller(store, fake, tmp_path)
    try:
        first = Background(lambda: puller.pull(f"{REG}/app:v1"))
        wait_until(lambda: requested(fake, stuck))
        abort = Abort()
        second = Background(lambda: puller.pull(f"{REG}/app:v1", abort=abort))
        key = (str(store.root), app.stuck_diff_id)
        wait_until(lambda: (f := pull_module._inflight.get(key)) is not None and f.waiters >= 1)
        abort.set("the caller went away")
        with pytest.raises(Aborted, match="the caller went away"):
            second.join()
    finally:
        gate.set()
    first.join()
    assert fake.blob_gets(stuck) == 1


def test_closing_the_puller_stops_a_pull_in_progress(store: ImageStore, fake: FakeRegistry,
                                                     tmp_path: Path) -> None:
    app = Gated(fake)
    stuck, gate = app.stuck_blob, app.gate
    puller = make_puller(store, fake, tmp_path)
    try:
        pulling = Background(lambda: puller.pull(f"{REG}/app:v1"))
        wait_until(lambda: requested(fake, stuck))
        puller.close()
    finally:
        gate.set()
    with pytest.raises(Aborted, match="the agent is stopping"):
        pulling.join()
    assert store.list_images() == []
    assert [p for p in os.listdir(store.root / "tmp")] == []


def test_a_manifest_declaring_a_huge_layer_is_refused_before_any_download(
        store: ImageStore, fake: FakeRegistry, tmp_path: Path) -> None:
    layer = small_layer("a")
    fake.add_image("app", "v1", [layer])
    data, media = fake.manifests[("app", "v1")]
    doc = json.loads(data)
    doc["layers"][0]["size"] = 1 << 62
    fake.put_manifest("app", "v1", json.dumps(doc).encode(), media)
    puller = make_puller(store, fake, tmp_path, max_layer_size=1 << 30)
    with pytest.raises(InvalidArgument, match=rf"{REG}/app:v1: layer 1/1 \(sha256:[0-9a-f]+\) declares "
                                              rf"{1 << 62} bytes, more than the agent's limit of "
                                              rf"{1 << 30} \(--max-layer-size\)"):
        puller.pull(f"{REG}/app:v1")
    assert not any("/blobs/" in p for _m, p, _h in fake.log)
    assert store.list_images() == [] and os.listdir(store.root / "tmp") == []


def test_a_gzip_bomb_layer_is_refused_and_nothing_is_left(tmp_path: Path, fake: FakeRegistry) -> None:
    bomb = gzip_bomb(64 << 20)
    store = ImageStore(tmp_path / "store", limits=UnpackLimits(max_ratio=100, ratio_floor=4 << 20))
    fake.add_image("app", "v1", [small_layer("a")])
    data, media = fake.manifests[("app", "v1")]
    doc = json.loads(data)
    doc["layers"][0].update(fake.add_blob(bomb.blob))
    config = json.loads(fake.blobs[doc["config"]["digest"]])
    config["rootfs"]["diff_ids"] = [bomb.diff_id]
    doc["config"].update(fake.add_blob(json.dumps(config).encode()))
    fake.put_manifest("app", "v1", json.dumps(doc).encode(), media)
    with pytest.raises(InvalidArgument, match=r"layer 1/1 .*expands more than 100 times"):
        make_puller(store, fake, tmp_path).pull(f"{REG}/app:v1")
    assert store.list_images() == [] and os.listdir(store.root / "tmp") == []
    assert os.listdir(store.root / "layers") == []
