"""ImageStore with pure-Python archives: import formats, naming, resolve, remove/GC, shared layers,
concurrent imports, and failed imports leaving nothing behind."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from agent.errors import DigestMismatch, FailedPrecondition, HostileArchive, InvalidArgument, NotFound
from agent.images.store import ImageStore, ImportProgress
from tests.fixtures.images import (
    build_busybox_oci,
    build_busybox_oci_tar,
    build_oci_layout,
    busybox_layer,
    directory,
    file,
    layer_tar,
    sha256,
    symlink,
    tar_directory,
)

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("layer extraction sets ownership and creates devices: needs root")


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def never_in_use(_image_id: str) -> bool:
    return False


def visible_state(store: ImageStore) -> dict[str, list[str]]:
    subs = ("blobs/sha256", "layers", "layerdb", "images", "tmp")
    return {sub: sorted(os.listdir(store.root / sub)) for sub in subs}


def test_import_oci_dir_named_by_annotation_and_basename(store: ImageStore, tmp_path: Path) -> None:
    layout = build_busybox_oci(tmp_path)
    events: list[ImportProgress] = []
    image = store.import_archive(layout, progress=events.append)
    assert image.repo_tags == ("busybox:v1",)
    assert image.config.cmd == ("/bin/sh",) and image.config.env == ("PATH=/bin",)
    assert (image.architecture, image.os) == ("amd64", "linux")
    assert image.layers == (sha256(busybox_layer()),)
    assert image.size == len(busybox_layer())
    assert image.manifest_digest is not None and store.blob_path(image.manifest_digest).is_file()
    assert store.blob_path(image.id).is_file()
    [layer] = store.layer_paths(image)
    assert os.readlink(layer / "bin" / "sh") == "/bin/busybox"
    assert events[0].phase == "resolving" and events[-1].phase == "done"
    assert any(e.phase == "unpacking" and e.bytes > 0 for e in events)
    assert store.resolve("busybox:v1") == image


def test_import_oci_tar_and_name_override(store: ImageStore, tmp_path: Path) -> None:
    archive = build_busybox_oci_tar(tmp_path)
    assert store.import_archive(archive).repo_tags == ("busybox:v1",)
    image = store.import_archive(archive, name="mine/box")
    assert set(image.repo_tags) == {"busybox:v1", "mine/box:latest"}
    assert len(store.list_images()) == 1  # same config → same image id


def test_docker_archive(store: ImageStore, tmp_path: Path) -> None:
    raw = busybox_layer()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/echo"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha256(raw)]}}).encode()
    manifest = json.dumps([{"Config": "cfg.json", "RepoTags": ["dock/er:v9"], "Layers": ["l1/layer.tar"]}])
    out = tmp_path / "docker.tar"
    with tarfile.open(out, "w") as tf:
        for name, data in (("manifest.json", manifest.encode()), ("cfg.json", config), ("l1/layer.tar", raw)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    image = store.import_archive(out)
    assert image.repo_tags == ("dock/er:v9",)
    assert image.id == sha256(config)
    assert image.manifest_digest is None
    assert image.config.entrypoint == ("/bin/echo",)


def test_shared_layer_unpacked_once(store: ImageStore, tmp_path: Path) -> None:
    base = busybox_layer()
    top_a = layer_tar([file("a.txt", b"a")])
    top_b = layer_tar([file("b.txt", b"b")])
    a = store.import_archive(build_oci_layout(tmp_path / "a", [base, top_a]), name="a")
    b = store.import_archive(build_oci_layout(tmp_path / "b", [base, top_b]), name="b")
    assert store.layer_paths(a)[-1] == store.layer_paths(b)[-1]  # bottom layer shared
    assert store.layer_paths(a)[0].name == sha256(top_a).split(":")[1]  # top-most first
    assert len(os.listdir(store.root / "layers")) == 3

    assert store.remove("a", in_use=never_in_use) == ["a:latest", a.id]
    assert store.layer_paths(b)[-1].is_dir()  # still used by b
    assert not store.layer_dir(sha256(top_a)).exists()
    store.remove("b", in_use=never_in_use)
    assert visible_state(store) == {"blobs/sha256": [], "layers": [], "layerdb": [], "images": [], "tmp": []}


def test_resolve_by_id_prefix_and_digest(store: ImageStore, tmp_path: Path) -> None:
    image = store.import_archive(build_busybox_oci(tmp_path))
    hexid = image.id.split(":")[1]
    assert store.resolve(image.id) == image
    assert store.resolve(hexid[:6]) == image
    assert store.resolve(f"busybox@{image.manifest_digest}") == image
    with pytest.raises(NotFound, match="no such image: foo:latest"):
        store.resolve("foo")
    with pytest.raises(InvalidArgument, match="invalid image reference"):
        store.resolve("Not Valid")


def test_remove_untags_then_refuses_while_in_use(store: ImageStore, tmp_path: Path) -> None:
    layout = build_busybox_oci(tmp_path)
    store.import_archive(layout)
    image = store.import_archive(layout, name="foo:v1")
    assert store.remove("busybox:v1", in_use=lambda _id: True) == ["busybox:v1"]  # only untagged
    with pytest.raises(FailedPrecondition, match="image foo:v1 is in use by a container; remove the"):
        store.remove("foo:v1", in_use=lambda image_id: image_id == image.id)
    assert store.resolve("foo:v1").id == image.id
    assert store.remove(image.id[7:13], in_use=never_in_use) == ["foo:v1", image.id]
    with pytest.raises(NotFound):
        store.resolve(image.id)


def test_several_images_need_a_choice(store: ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "multi"
    build_oci_layout(layout, [busybox_layer()], ref_name="v1")
    build_oci_layout(layout, [layer_tar([file("only-v2", b"2")])], ref_name="v2")
    with pytest.raises(InvalidArgument, match=r"holds several images \(v1, v2\); choose one by tag"):
        store.import_archive(layout)
    assert store.import_archive(layout, select="v2").repo_tags == ("multi:v2",)


def test_platform_selection_in_nested_index(store: ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "plat"
    build_oci_layout(layout, [layer_tar([file("arch", b"arm")])], ref_name=None, architecture="arm64")
    build_oci_layout(layout, [layer_tar([file("arch", b"amd")])], ref_name=None, architecture="amd64")
    index = json.loads((layout / "index.json").read_text())
    for desc, arch in zip(index["manifests"], ("arm64", "amd64"), strict=True):
        desc["platform"] = {"os": "linux", "architecture": arch}
    nested = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                         "manifests": index["manifests"]}).encode()
    digest = sha256(nested)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(nested)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": len(nested),
         "annotations": {"org.opencontainers.image.ref.name": "v5"}}]}))
    image = store.import_archive(layout)
    assert image.repo_tags == ("plat:v5",)
    assert (store.layer_paths(image)[0] / "arch").read_bytes() == b"amd"


def test_corrupt_blob_fails_and_leaves_nothing(store: ImageStore, tmp_path: Path) -> None:
    good = layer_tar([file("ok", b"ok")])
    layout = build_oci_layout(tmp_path / "bad", [good, layer_tar([file("x", b"x" * 1000)])])
    manifest = json.loads((layout / "blobs/sha256" / json.loads((layout / "index.json").read_text())
                           ["manifests"][0]["digest"].split(":")[1]).read_text())
    blob = layout / "blobs/sha256" / manifest["layers"][1]["digest"].split(":")[1]
    blob.write_bytes(gzip.compress(layer_tar([file("x", b"y" * 1000)]), mtime=0))  # same size? no matter
    with pytest.raises(DigestMismatch):
        store.import_archive(layout)
    # the first layer unpacked fine but belongs to no image: it must be gone too
    assert visible_state(store) == {"blobs/sha256": [], "layers": [], "layerdb": [], "images": [], "tmp": []}
    assert store.list_images() == []


def test_hostile_layer_fails_import_cleanly(store: ImageStore, tmp_path: Path) -> None:
    hostile = layer_tar([symlink("etc", "/etc"), file("etc/evil", b"x")])
    layout = build_oci_layout(tmp_path / "evil", [busybox_layer(), hostile])
    with pytest.raises(HostileArchive, match="parent 'etc' is a symlink"):
        store.import_archive(tar_directory(layout, tmp_path / "evil.tar"))
    assert not Path("/etc/evil").exists()
    assert visible_state(store) == {"blobs/sha256": [], "layers": [], "layerdb": [], "images": [], "tmp": []}


def test_diff_id_count_must_match_layers(store: ImageStore, tmp_path: Path) -> None:
    layout = build_oci_layout(tmp_path / "c", [busybox_layer()],
                              config={"Cmd": ["/bin/sh"]})
    # rewrite the config with an extra diff_id, and re-point the manifest/index at the new blobs
    index = json.loads((layout / "index.json").read_text())
    mpath = layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(mpath.read_text())
    cpath = layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]
    config = json.loads(cpath.read_text())
    config["rootfs"]["diff_ids"].append("sha256:" + "1" * 64)
    cbytes = json.dumps(config).encode()
    (layout / "blobs/sha256" / sha256(cbytes).split(":")[1]).write_bytes(cbytes)
    manifest["config"].update(digest=sha256(cbytes), size=len(cbytes))
    mbytes = json.dumps(manifest).encode()
    (layout / "blobs/sha256" / sha256(mbytes).split(":")[1]).write_bytes(mbytes)
    index["manifests"][0].update(digest=sha256(mbytes), size=len(mbytes))
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidArgument, match="manifest lists 1 layers but the config has 2 diff_ids"):
        store.import_archive(layout)


def test_concurrent_imports_of_the_same_layers(store: ImageStore, tmp_path: Path) -> None:
    base = busybox_layer()  # the shared layer
    tops = [layer_tar([directory("d"), file(f"d/{i}", b"i")]) for i in range(4)]
    layouts = [build_oci_layout(tmp_path / f"img{i}", [base, top]) for i, top in enumerate(tops)]
    errors: list[BaseException] = []
    unpacked: list[str] = []
    start = threading.Barrier(len(layouts))

    def run(i: int) -> None:
        def progress(event: ImportProgress) -> None:
            if event.phase == "layer-done":
                unpacked.append(str(event.layer))
        try:
            start.wait()
            store.import_archive(layouts[i], name=f"img{i}", progress=progress)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(layouts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert unpacked.count(sha256(base)) == 1  # unpacked once, the others found it present
    assert len(store.list_images()) == 4
    assert len(os.listdir(store.root / "layers")) == 5
    assert os.listdir(store.root / "tmp") == []
