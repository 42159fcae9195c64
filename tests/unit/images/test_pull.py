"""Puller against the in-process fake registry, into a real store: media types and platform choice,
pull by digest, layers already present, coalescing of concurrent pulls, clean failure and retry, two
registries sharing layers, prune and disk usage."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from agent.errors import DigestMismatch, InvalidArgument, NotFound, Unauthenticated, Unavailable
from agent.images import pull as pull_module
from agent.images.pull import Platform, Puller, RegistrySettings, parse_pull_reference, select_platform
from agent.images.store import ImageStore, ImportProgress
from tests.fixtures.images import busybox_layer, directory, file, layer_tar
from tests.unit.images.test_distribution import FakeRegistry, digest_of

pytestmark = pytest.mark.root

REG = "reg.test:5000"


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("layer extraction sets ownership and creates devices: needs root")


def small_layer(name: str, size: int = 20_000) -> bytes:
    return layer_tar([directory("data"), file(f"data/{name}", os.urandom(size))])


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


def make_puller(store: ImageStore, fake: FakeRegistry, tmp_path: Path, **kw: object) -> Puller:
    settings = RegistrySettings(auth_file=tmp_path / "auth.json", retries=2, **kw)  # type: ignore[arg-type]
    return Puller(store, settings, transport=fake.transport(), sleep=lambda _s: None)


def visible(store: ImageStore) -> dict[str, list[str]]:
    subs = ("images", "tmp")
    state = {sub: sorted(os.listdir(store.root / sub)) for sub in subs}
    # a layer directory without its metadata would be a half-committed layer
    state["half_layers"] = sorted(set(os.listdir(store.root / "layers"))
                                  - {p.removesuffix(".json") for p in os.listdir(store.root / "layerdb")})
    state["tags"] = sorted((store.root / "tags.json").read_text().splitlines()) \
        if (store.root / "tags.json").exists() else []
    return state


# -- pure parts ----------------------------------------------------------------------------------------


def test_reference_needs_a_registry() -> None:
    with pytest.raises(InvalidArgument, match=r"pull needs a registry: use HOST\[:PORT\]/REPO\[:TAG\]"):
        parse_pull_reference("busybox:v1")
    target = parse_pull_reference("127.0.0.1:5000/team/app@sha256:" + "a" * 64)
    assert (target.registry, target.path, target.tag) == ("127.0.0.1:5000", "team/app", None)
    assert parse_pull_reference("localhost/app").reference == "latest"


def test_platform_selection_lists_what_is_available() -> None:
    index = {"manifests": [
        {"digest": "d1", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "d2", "platform": {"os": "linux", "architecture": "amd64"}},
    ]}
    assert select_platform(index, Platform("linux", "amd64"), what="x")["digest"] == "d2"
    with pytest.raises(NotFound, match=r"linux/s390x \(available: linux/arm64/v8, linux/amd64\)"):
        select_platform(index, Platform("linux", "s390x"), what="x")


# -- pulls ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("docker", [False, True])
def test_pull_by_tag_oci_and_docker(store: ImageStore, fake: FakeRegistry, tmp_path: Path,
                                    docker: bool) -> None:
    manifest_digest, config_digest = fake.add_image("app", "v1", [busybox_layer(), small_layer("a")],
                                                    docker=docker)
    events: list[ImportProgress] = []
    image = make_puller(store, fake, tmp_path).pull(f"{REG}/app:v1", progress=events.append)
    assert image.id == config_digest and image.manifest_digest == manifest_digest
    assert image.repo_tags == (f"{REG}/app:v1",)
    assert image.config.cmd == ("/bin/sh",)
    assert all(store.has_layer(d) for d in image.layers)
    assert (store.layer_paths(image)[-1] / "bin" / "busybox").is_file()
    phases = [e.phase for e in events]
    assert phases[0] == "resolving" and phases[-1] == "done"
    assert {"downloading", "unpacking", "layer-done"} <= set(phases)
    assert os.listdir(store.root / "tmp") == []
    assert store.resolve(f"{REG}/app:v1").id == image.id


@pytest.mark.parametrize("docker", [False, True])
def test_index_resolves_to_amd64(store: ImageStore, fake: FakeRegistry, tmp_path: Path, docker: bool) -> None:
    arm, _ = fake.add_image("app", None, [small_layer("arm")], docker=docker, arch="arm64")
    amd, amd_config = fake.add_image("app", None, [small_layer("amd")], docker=docker, arch="amd64")
    fake.add_index("app", "multi", [(arm, "linux", "arm64"), (amd, "linux", "amd64")], docker=docker)
    puller = make_puller(store, fake, tmp_path)
    puller.platform = Platform("linux", "amd64")
    image = puller.pull(f"{REG}/app:multi")
    assert image.id == amd_config and image.architecture == "amd64"
    assert not any(p.endswith(f"/manifests/{arm}") for _m, p, _h in fake.log)


def test_pull_by_digest_and_wrong_digest(store: ImageStore, fake: FakeRegistry, tmp_path: Path) -> None:
    digest, _ = fake.add_image("app", "v1", [small_layer("a")])
    puller = make_puller(store, fake, tmp_path)
    image = puller.pull(f"{REG}/app@{digest}")
    assert image.repo_tags == () and image.repo_digests == (f"{REG}/app@{digest}",)
    assert store.resolve(f"{REG}/app@{digest}").id == image.id
    wrong = "sha256:" + "1" * 64
    fake.manifests[("app", wrong)] = fake.manifests[("app", digest)]
    with pytest.raises(DigestMismatch, match="not the requested digest"):
        puller.pull(f"{REG}/app@{wrong}")


def test_layers_already_present_are_not_downloaded(store: ImageStore, fake: FakeRegistry,
                                                    tmp_path: Path) -> None:
    base = busybox_layer()
    fake.add_image("app", "v1", [base])
    fake.add_image("app", "v2", [base, small_layer("top")])
    puller = make_puller(store, fake, tmp_path)
    puller.pull(f"{REG}/app:v1")
    events: list[ImportProgress] = []
    image = puller.pull(f"{REG}/app:v2", progress=events.append)
    base_blob = next(d for d, data in fake.blobs.items() if len(data) > 100_000 and d != digest_of(base))
    assert fake.blob_gets(base_blob) == 1
    assert [e.layer for e in events if e.phase == "layer-exists"] == [image.layers[0]]


def test_two_registries_share_layers_and_one_image_id(store: ImageStore, fake: FakeRegistry,
                                                      tmp_path: Path) -> None:
    fake.add_image("app", "v1", [small_layer("a"), small_layer("b")])
    puller = make_puller(store, fake, tmp_path)
    first = puller.pull(f"{REG}/app:v1")
    before = len(fake.log)
    second = puller.pull("mirror.test:6000/app:v1")
    assert second.id == first.id
    assert set(second.repo_tags) == {f"{REG}/app:v1", "mirror.test:6000/app:v1"}
    assert not any("/blobs/" in p for _m, p, _h in fake.log[before:])  # config and layers all present
    assert len(store.list_images()) == 1


def test_concurrent_pulls_sharing_a_layer_fetch_it_once(store: ImageStore, fake: FakeRegistry,
                                                        tmp_path: Path) -> None:
    shared = small_layer("shared", 200_000)
    fake.add_image("one", "v1", [shared, small_layer("one")])
    fake.add_image("two", "v1", [shared, small_layer("two")])
    shared_blob = next(d for d, data in fake.blobs.items() if len(data) > 150_000)
    gate = fake.gate[shared_blob] = threading.Event()
    puller = make_puller(store, fake, tmp_path)
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = puller.pull(f"{REG}/{name}:v1")
        except Exception as exc:
            results[name] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in ("one", "two", "one")]
    for t in threads:
        t.start()
    key = (str(store.root), digest_of(shared))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # bounded poll: both other pulls wait on the first one's fetch
        flight = pull_module._inflight.get(key)
        if flight is not None and flight.waiters >= 2:
            break
        time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join(timeout=60)
    assert all(not isinstance(r, Exception) for r in results.values()), results
    assert fake.blob_gets(shared_blob) == 1
    config_gets = [p for _m, p, _h in fake.log
                   if "/blobs/" in p and fake.blobs[p.rsplit("/", 1)[1]][:1] == b"{"]
    assert len(config_gets) == 2  # one per distinct image, though "one" was pulled twice


def test_corrupt_layer_fails_cleanly_then_retry_succeeds(store: ImageStore, fake: FakeRegistry,
                                                         tmp_path: Path) -> None:
    fake.add_image("app", "v1", [small_layer("a"), small_layer("b")])
    bad = next(d for d, data in fake.blobs.items() if data[:2] == b"\x1f\x8b")
    fake.faults[bad] = ["corrupt"]
    puller = make_puller(store, fake, tmp_path)
    before = visible(store)
    with pytest.raises(DigestMismatch, match=rf"layer [12]/2 \({bad}\) of {REG}/app:v1: blob {bad}"):
        puller.pull(f"{REG}/app:v1")
    assert visible(store) == before
    image = puller.pull(f"{REG}/app:v1")
    assert image.repo_tags == (f"{REG}/app:v1",)


def test_registry_down_mid_pull_names_the_layer_and_retry_finishes(store: ImageStore, fake: FakeRegistry,
                                                                   tmp_path: Path) -> None:
    fake.add_image("app", "v1", [small_layer("a")])
    layer_blob = next(d for d, data in fake.blobs.items() if data[:2] == b"\x1f\x8b")
    fake.faults[layer_blob] = ["cut"] + ["down"] * 10
    puller = make_puller(store, fake, tmp_path)
    with pytest.raises(Unavailable, match=rf"layer 1/1 \({layer_blob}\) of {REG}/app:v1"):
        puller.pull(f"{REG}/app:v1")
    assert store.list_images() == [] and os.listdir(store.root / "tmp") == []
    assert os.listdir(store.root / "layers") == []
    fake.faults.clear()
    assert puller.pull(f"{REG}/app:v1").repo_tags == (f"{REG}/app:v1",)


def test_cut_and_ignored_range_and_503_still_succeed(store: ImageStore, fake: FakeRegistry,
                                                     tmp_path: Path) -> None:
    fake.add_image("app", "v1", [small_layer("a"), small_layer("b"), small_layer("c")])
    layer_blobs = [d for d, data in fake.blobs.items() if data[:2] == b"\x1f\x8b"]
    for blob, faults in zip(layer_blobs, (["cut"], ["cut", "ignore_range"], ["503", "503"]), strict=True):
        fake.faults[blob] = faults
    image = make_puller(store, fake, tmp_path).pull(f"{REG}/app:v1")
    assert len(image.layers) == 3 and all(store.has_layer(d) for d in image.layers)
    assert all(not q for q in fake.faults.values())


def test_unknown_tag_and_auth_required(store: ImageStore, fake: FakeRegistry, tmp_path: Path) -> None:
    puller = make_puller(store, fake, tmp_path)
    with pytest.raises(NotFound, match=rf"{REG}/app:nope"):
        puller.pull(f"{REG}/app:nope")
    fake.add_image("app", "v1", [small_layer("a")])
    fake.auth_mode = "bearer"
    with pytest.raises(Unauthenticated, match=f"add credentials to {tmp_path}/auth.json"):
        puller.pull(f"{REG}/app:v1")
    # the same puller picks up credentials added afterwards
    (tmp_path / "auth.json").write_text(json.dumps({"auths": {REG: {"username": fake.user,
                                                                    "password": fake.password}}}))
    (tmp_path / "auth.json").chmod(0o600)
    assert puller.pull(f"{REG}/app:v1").repo_tags == (f"{REG}/app:v1",)


# -- prune and disk usage ------------------------------------------------------------------------------


def test_prune_keeps_tagged_images_and_clears_tmp(store: ImageStore, fake: FakeRegistry,
                                                  tmp_path: Path) -> None:
    fake.add_image("app", "v1", [small_layer("a")])
    fake.add_image("app", "v2", [small_layer("b")])
    puller = make_puller(store, fake, tmp_path)
    v1 = puller.pull(f"{REG}/app:v1")
    puller.pull(f"{REG}/app:v2")
    store.remove(f"{REG}/app:v2", in_use=lambda _i: False)
    usage = store.disk_usage()
    assert usage.layer_count == 1 and [u.id for u in usage.images] == [v1.id]
    (store.root / "tmp" / "leftover").write_bytes(b"x" * 10)
    report = store.prune(image_in_use=lambda _i: False, layers_in_use=set)
    assert report.layers == [] and report.images == []
    assert os.listdir(store.root / "tmp") == [] and report.freed_bytes > 0
    assert store.has_layer(v1.layers[0])


def test_prune_removes_unreferenced_layers_but_not_in_use(store: ImageStore, fake: FakeRegistry,
                                                          tmp_path: Path) -> None:
    fake.add_image("app", "v1", [small_layer("a")])
    fake.add_image("app", "v2", [small_layer("b")])
    fake.add_image("app", "v3", [small_layer("c")])
    puller = make_puller(store, fake, tmp_path)
    v1, v2, v3 = (puller.pull(f"{REG}/app:{t}") for t in ("v1", "v2", "v3"))
    v3_bytes = store.layer_size(v3.layers[0])
    for image in (v2, v3):  # records gone but layers left behind, as after a crash
        (store.root / "images" / f"{image.id.removeprefix('sha256:')}.json").unlink()
    report = store.prune(image_in_use=lambda _i: False, layers_in_use=lambda: {v2.layers[0]})
    assert report.layers == [v3.layers[0]]
    assert report.freed_bytes >= v3_bytes
    assert store.has_layer(v1.layers[0]) and store.has_layer(v2.layers[0])
    assert not store.has_layer(v3.layers[0])
    assert v3.id in report.blobs and v1.id not in report.blobs


def test_untagged_image_is_pruned_unless_in_use(store: ImageStore, fake: FakeRegistry,
                                                tmp_path: Path) -> None:
    fake.add_image("app", "v1", [small_layer("a")])
    image = make_puller(store, fake, tmp_path).pull(f"{REG}/app:v1")
    # Untag it the way a newer pull of the same tag would leave it: no tag, no pulled-by digest.
    (store.root / "tags.json").write_text("{}")
    record = store.root / "images" / f"{image.id.removeprefix('sha256:')}.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "repo_digests": []}))
    assert store.prune(image_in_use=lambda i: i == image.id, layers_in_use=set).images == []
    report = store.prune(image_in_use=lambda _i: False, layers_in_use=set)
    assert report.images == [image.id] and report.layers == list(image.layers)
    assert store.list_images() == [] and os.listdir(store.root / "layers") == []


def test_disk_usage_counts_shared_layers(store: ImageStore, fake: FakeRegistry, tmp_path: Path) -> None:
    base = small_layer("base", 50_000)
    fake.add_image("app", "v1", [base])
    fake.add_image("app", "v2", [base, small_layer("top")])
    puller = make_puller(store, fake, tmp_path)
    v1 = puller.pull(f"{REG}/app:v1")
    v2 = puller.pull(f"{REG}/app:v2")
    usage = {u.id: u for u in store.disk_usage().images}
    base_size = store.layer_size(v1.layers[0])
    assert usage[v1.id].shared_size == base_size == usage[v2.id].shared_size
    assert usage[v2.id].size == v2.size
    assert store.disk_usage().layer_count == 2
