"""The image store against images built by real tools (umoci, skopeo) and the real overlayfs:
whiteouts and opaque directories behave in a mounted overlay, all three archive formats import, layers
are shared, and a full disk fails cleanly."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import FailedPrecondition, ResourceExhausted
from agent.images.store import ImageStore
from tests.fixtures.images import (
    build_oci_layout,
    build_umoci_layout,
    busybox_layer,
    file,
    layer_tar,
    tar_directory,
    to_docker_archive,
)

pytestmark = [pytest.mark.root, pytest.mark.integration]

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MNT_DETACH = 2


@pytest.fixture(autouse=True)
def _need_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, device nodes)")
    for tool in ("umoci", "skopeo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_umoci_layout(tmp_path_factory.mktemp("umoci"))


def mount(source: str, target: Path, fstype: str, options: str) -> None:
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def umount(target: Path) -> None:
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[object]:
    mounted: list[Path] = []

    def mount_layers(lower: list[Path]) -> Path:
        upper, work, merged = (tmp_path / n for n in ("upper", "work", "merged"))
        for d in (upper, work, merged):
            d.mkdir()
        options = f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}"
        mount("overlay", merged, "overlay", options)
        mounted.append(merged)
        return merged

    yield mount_layers
    for target in mounted:
        umount(target)


def test_umoci_whiteouts_in_a_real_overlay(umoci_layout: Path, tmp_path: Path, overlay: object) -> None:
    store = ImageStore(tmp_path / "store")
    v3 = store.import_archive(umoci_layout, select="v3")
    assert v3.repo_tags == ("oci:v3",)
    assert v3.config.cmd == ("/bin/sh",)
    lower = store.layer_paths(v3)
    assert len(lower) == 3
    merged = overlay(lower)  # type: ignore[operator]
    assert not (merged / "etc" / "motd").exists()  # deleted in v2 via .wh.motd
    assert (merged / "etc" / "passwd").is_file()
    assert sorted(os.listdir(merged / "data" / "keep")) == ["upper.txt"]  # opaque: lower.txt hidden
    assert (merged / "data" / "keep" / "upper.txt").read_text() == "from v3\n"
    out = subprocess.run(["chroot", str(merged), "/bin/sh", "-c", "echo hi; ls /etc"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["hi", "passwd"]


def test_three_formats_share_layers(umoci_layout: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    via_dir = store.import_archive(umoci_layout, select="v1", name="fmt/dir:v1")
    oci_tar = tar_directory(umoci_layout, tmp_path / "layout.tar")
    via_tar = store.import_archive(oci_tar, select="v2")
    assert via_tar.repo_tags == ("layout:v2",)
    docker = to_docker_archive(umoci_layout, "v2", tmp_path / "v2-docker.tar", name="fmt/docker:v2")
    via_docker = store.import_archive(docker)
    assert via_docker.id == via_tar.id  # same config blob → same image, now with both names
    assert via_docker.repo_tags == ("fmt/docker:v2", "layout:v2")  # skopeo's docker.io/ prefix dropped
    assert via_docker.layers == via_tar.layers  # skopeo decompresses; the diff_ids stay the same
    assert via_tar.layers[0] == via_dir.layers[0]
    assert len(os.listdir(store.root / "layers")) == 2  # v1's layer + v2's whiteout layer, each once

    store.remove("fmt/dir:v1", in_use=lambda _id: False)
    assert store.layer_paths(via_tar)[-1].is_dir()  # base layer still used by the v2 images


def test_two_images_share_one_base_layer_dir(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    base = busybox_layer()
    one = store.import_archive(build_oci_layout(tmp_path / "one", [base, layer_tar([file("1", b"1")])]))
    two = store.import_archive(build_oci_layout(tmp_path / "two", [base, layer_tar([file("2", b"2")])]))
    assert store.layer_paths(one)[-1] == store.layer_paths(two)[-1]
    assert os.stat(store.layer_paths(one)[-1]).st_ino == os.stat(store.layer_paths(two)[-1]).st_ino


def test_rm_refused_while_in_use(umoci_layout: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    image = store.import_archive(umoci_layout, select="v1", name="busy:v1")
    with pytest.raises(FailedPrecondition, match="image busy:v1 is in use by a container"):
        store.remove("busy:v1", in_use=lambda image_id: image_id == image.id)
    assert all(p.is_dir() for p in store.layer_paths(image))


def test_enospc_on_small_tmpfs(tmp_path: Path) -> None:
    root = tmp_path / "small"
    root.mkdir()
    mount("tmpfs", root, "tmpfs", "size=2m")
    try:
        store = ImageStore(root / "images")
        big = layer_tar([file("big.bin", os.urandom(3 << 20))])
        layout = build_oci_layout(tmp_path / "big", [big])
        with pytest.raises(ResourceExhausted, match=r"no space left on device while unpacking layer sha256:"):
            store.import_archive(layout, name="big")
        assert os.listdir(root / "images" / "layers") == []
        assert os.listdir(root / "images" / "tmp") == []
        assert store.list_images() == []
    finally:
        umount(root)
