"""unpack_layer: hostile archives are refused without touching anything outside the layer; image
semantics (ownership, setuid, sticky, hard links, devices, xattrs, whiteouts) survive extraction."""

from __future__ import annotations

import errno
import gzip
import io
import os
import shutil
import stat
import tarfile
import uuid
from pathlib import Path

import pytest

from agent.errors import DigestMismatch, HostileArchive, InvalidArgument
from agent.images.layers import UnpackLimits, unpack_layer
from tests.fixtures.hostile_images import gzip_bomb
from tests.fixtures.images import (
    Entry,
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    layer_tar,
    sha256,
    symlink,
)

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("layer extraction creates devices and sets ownership: needs root")


class Box:
    """A store-like sandbox: ``layers/`` holds the result, ``work/`` the temporaries and ``outside/`` a
    sentinel directory an escaping archive would hit."""

    def __init__(self, root: Path) -> None:
        self.layers = root / "layers"
        self.work = root / "work"
        self.outside = root / "outside"
        for d in (self.layers, self.work, self.outside):
            d.mkdir(parents=True)
        (self.outside / "sentinel").write_text("untouched")
        self.dest = self.layers / "L"

    def unpack(self, data: bytes, *, diff_id: str | None = None, compress: bool = False) -> Path:
        blob = gzip.compress(data, mtime=0) if compress else data
        expected = diff_id or sha256(data)
        unpack_layer(io.BytesIO(blob), self.dest, expected_diff_id=expected, work_dir=self.work)
        return self.dest

    def assert_nothing_kept(self) -> None:
        assert not self.dest.exists()
        assert os.listdir(self.work) == [], "temporary directory left behind"
        assert sorted(os.listdir(self.outside)) == ["sentinel"]
        assert (self.outside / "sentinel").read_text() == "untouched"


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def refused(box: Box, data: bytes, match: str) -> None:
    with pytest.raises(HostileArchive, match=match):
        box.unpack(data)
    box.assert_nothing_kept()


# -- hostile archives -----------------------------------------------------------------------------


def test_dotdot_component_is_refused(box: Box) -> None:
    refused(box, layer_tar([file("../outside/escape", b"x")]), r"'\.\./outside/escape'.*'\.\.'")


def test_dotdot_in_the_middle_is_refused(box: Box) -> None:
    refused(box, layer_tar([directory("a"), file("a/../../outside/x", b"x")]), r"contains '\.\.'")


def test_absolute_path_lands_inside_the_layer(box: Box) -> None:
    name = f"shoal-test-{uuid.uuid4().hex}"
    layer = box.unpack(layer_tar([file(f"/tmp/{name}", b"inside")]))
    assert (layer / "tmp" / name).read_bytes() == b"inside"
    assert not Path("/tmp", name).exists()


def test_write_through_symlinked_parent_is_refused(box: Box) -> None:
    data = layer_tar([symlink("a", str(box.outside)), file("a/pwned", b"x")])
    refused(box, data, r"entry 'a/pwned': parent 'a' is a symlink")


def test_write_through_relative_symlinked_parent_is_refused(box: Box) -> None:
    data = layer_tar([directory("d"), symlink("d/up", "../../../outside"), file("d/up/pwned", b"x")])
    refused(box, data, r"parent 'd/up' is a symlink")


def test_directory_entry_through_symlink_is_refused(box: Box) -> None:
    data = layer_tar([symlink("a", str(box.outside)), directory("a/newdir")])
    refused(box, data, r"parent 'a' is a symlink")


def test_hardlink_to_host_file_is_refused(box: Box) -> None:
    refused(box, layer_tar([hardlink("passwd", "/etc/passwd")]), r"hard link target '/etc/passwd' is not an")


def test_hardlink_with_dotdot_is_refused(box: Box) -> None:
    refused(box, layer_tar([hardlink("x", "../outside/sentinel")]), r"'\.\.'")


def test_hardlink_through_symlink_is_refused(box: Box) -> None:
    data = layer_tar([symlink("a", str(box.outside)), hardlink("stolen", "a/sentinel")])
    refused(box, data, r"entry 'stolen': parent 'a' is a symlink")


def test_char_device_0_0_is_refused(box: Box) -> None:
    refused(box, layer_tar([chardev("fake-whiteout", 0, 0)]), r"'fake-whiteout'.*character device 0/0")


def test_trusted_overlay_xattr_is_refused(box: Box) -> None:
    entry = Entry("d", tarfile.DIRTYPE, mode=0o755, pax={"SCHILY.xattr.trusted.overlay.opaque": "y"})
    refused(box, layer_tar([entry]), r"entry 'd/': refusing overlayfs xattr 'trusted.overlay.opaque'")


def test_truncated_tar_is_refused(box: Box) -> None:
    data = layer_tar([file("big", b"x" * 5000), file("after", b"y")])
    cut = data[:1500]  # inside "big"'s data
    with pytest.raises(HostileArchive, match="truncated"):
        box.unpack(cut, diff_id=sha256(data))
    box.assert_nothing_kept()


def test_tar_without_end_marker_is_refused(box: Box) -> None:
    data = layer_tar([file("f", b"x" * 10)])
    cut = data[:1024]  # header + data block, then nothing: no end-of-archive blocks
    with pytest.raises(HostileArchive, match="without an end-of-archive marker"):
        box.unpack(cut, diff_id=sha256(data))
    box.assert_nothing_kept()


def test_truncated_gzip_is_refused(box: Box) -> None:
    data = layer_tar([file("f", os.urandom(100_000))])
    blob = gzip.compress(data, mtime=0)
    with pytest.raises(HostileArchive, match="gzip stream ends"):
        unpack_layer(io.BytesIO(blob[: len(blob) // 2]), box.dest, expected_diff_id=sha256(data),
                     work_dir=box.work)
    box.assert_nothing_kept()


def test_digest_mismatch(box: Box) -> None:
    data = layer_tar([file("f", b"content")])
    with pytest.raises(DigestMismatch, match=r"hashes to sha256:.* but the image config says sha256:0000"):
        box.unpack(data, diff_id="sha256:" + "0" * 64)
    box.assert_nothing_kept()


def test_corrupt_header_is_refused(box: Box) -> None:
    data = bytearray(layer_tar([file("f", b"content")]))
    data[0] ^= 0xFF
    refused(box, bytes(data), "checksum mismatch")


def test_zstd_is_reported_as_unsupported(box: Box) -> None:
    with pytest.raises(InvalidArgument, match="zstd"):
        unpack_layer(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 100), box.dest,
                     expected_diff_id="sha256:" + "0" * 64, work_dir=box.work)
    box.assert_nothing_kept()


# -- image semantics ------------------------------------------------------------------------------


def test_gzip_and_plain_give_the_same_tree(box: Box, tmp_path: Path) -> None:
    data = layer_tar([directory("etc"), file("etc/hosts", b"127.0.0.1 localhost\n")])
    layer = box.unpack(data, compress=True)
    assert (layer / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    other = Box(tmp_path / "second")
    assert other.unpack(data).joinpath("etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"


def test_modes_ownership_setuid_sticky(box: Box) -> None:
    data = layer_tar([
        directory("tmp", 0o1777),
        file("bin/su", b"\x7fELF", 0o4755, uid=0, gid=0),
        file("bin/wall", b"\x7fELF", 0o2755, uid=1000, gid=5),
        file("home/user/notes", b"hi", 0o600, uid=1000, gid=1000),
        directory("srv", 0o750, uid=33, gid=33),
    ])
    layer = box.unpack(data)
    st = os.lstat(layer / "tmp")
    assert stat.S_IMODE(st.st_mode) == 0o1777
    su = os.lstat(layer / "bin" / "su")
    assert stat.S_IMODE(su.st_mode) == 0o4755
    wall = os.lstat(layer / "bin" / "wall")
    assert (stat.S_IMODE(wall.st_mode), wall.st_uid, wall.st_gid) == (0o2755, 1000, 5)
    notes = os.lstat(layer / "home" / "user" / "notes")
    assert (stat.S_IMODE(notes.st_mode), notes.st_uid, notes.st_gid) == (0o600, 1000, 1000)
    srv = os.lstat(layer / "srv")
    assert (stat.S_IMODE(srv.st_mode), srv.st_uid, srv.st_gid) == (0o750, 33, 33)
    assert stat.S_IMODE(os.lstat(layer).st_mode) == 0o755  # layer root becomes the container's /
    assert stat.S_IMODE(os.lstat(layer / "home").st_mode) == 0o755  # implicit parent


def test_mtimes_including_directories(box: Box) -> None:
    data = layer_tar([
        Entry("d", tarfile.DIRTYPE, mode=0o755, mtime=1_000_000),
        Entry("d/f", tarfile.REGTYPE, b"x", mtime=2_000_000),
        Entry("d/l", tarfile.SYMTYPE, mode=0o777, link="f", mtime=3_000_000),
    ])
    layer = box.unpack(data)
    assert os.lstat(layer / "d").st_mtime == 1_000_000  # set after its children were created
    assert os.lstat(layer / "d" / "f").st_mtime == 2_000_000
    assert os.lstat(layer / "d" / "l").st_mtime == 3_000_000


def test_symlinks_keep_absolute_targets(box: Box) -> None:
    layer = box.unpack(layer_tar([directory("bin"), symlink("bin/sh", "/bin/busybox", uid=7, gid=8)]))
    assert os.readlink(layer / "bin" / "sh") == "/bin/busybox"
    st = os.lstat(layer / "bin" / "sh")
    assert (st.st_uid, st.st_gid) == (7, 8)


def test_hardlinks_within_layer(box: Box) -> None:
    layer = box.unpack(layer_tar([file("a", b"same", 0o755), directory("d"), hardlink("d/b", "a"),
                                  hardlink("c", "/a")]))
    assert os.lstat(layer / "a").st_ino == os.lstat(layer / "d" / "b").st_ino == os.lstat(layer / "c").st_ino
    assert os.lstat(layer / "a").st_nlink == 3


def test_devices_and_fifos(box: Box) -> None:
    layer = box.unpack(layer_tar([directory("dev"), chardev("dev/null", 1, 3), fifo("dev/pipe", 0o620),
                                  Entry("dev/loop0", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=0)]))
    null = os.lstat(layer / "dev" / "null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_IMODE(null.st_mode) == 0o666
    pipe = os.lstat(layer / "dev" / "pipe")
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o620
    assert stat.S_ISBLK(os.lstat(layer / "dev" / "loop0").st_mode)


def test_xattrs_kept_capability_survives_chown(box: Box) -> None:
    # security.capability v2 for cap_net_raw (bit 13), effective: dropped by chown if set before it.
    cap = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")
    entry = Entry("bin/ping", tarfile.REGTYPE, b"\x7fELF", 0o755, uid=0, gid=0,
                  pax={"SCHILY.xattr.security.capability": cap.decode("latin-1"),
                       "SCHILY.xattr.user.note": "kept"})
    # tarfile encodes PAX values as UTF-8; the capability bytes must round-trip exactly, so patch them.
    data = layer_tar([entry]).replace(cap.decode("latin-1").encode("utf-8"), cap)
    layer = box.unpack(data)
    assert os.getxattr(layer / "bin" / "ping", "user.note") == b"kept"
    assert os.getxattr(layer / "bin" / "ping", "security.capability") == cap


def test_whiteout_becomes_char_0_0(box: Box) -> None:
    layer = box.unpack(layer_tar([directory("etc"), file("etc/.wh.motd")]))
    st = os.lstat(layer / "etc" / "motd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert not (layer / "etc" / ".wh.motd").exists()


def test_opaque_whiteout_sets_xattr(box: Box) -> None:
    layer = box.unpack(layer_tar([directory("data"), file("data/.wh..wh..opq"), file("data/new", b"n")]))
    assert os.getxattr(layer / "data", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(layer / "data")) == ["new"]


def test_file_and_its_whiteout_keep_the_file(box: Box) -> None:
    for order in ([file("f", b"keep"), file(".wh.f")], [file(".wh.f"), file("f", b"keep")]):
        layer = box.unpack(layer_tar(order))
        assert (layer / "f").read_bytes() == b"keep"
        shutil.rmtree(layer)


def test_later_entry_replaces_earlier(box: Box) -> None:
    data = layer_tar([
        file("f", b"old"), file("f", b"new"),
        directory("d"), file("d/inner", b"x"), symlink("d", "/elsewhere"),
        symlink("s", "/x"), directory("s"), file("s/ok", b"ok"),
    ])
    layer = box.unpack(data)
    assert (layer / "f").read_bytes() == b"new"
    assert os.readlink(layer / "d") == "/elsewhere"
    assert (layer / "s" / "ok").read_bytes() == b"ok"


def test_gnu_long_names_and_pax_paths(box: Box) -> None:
    long = "a" * 120 + "/" + "b" * 120
    layer = box.unpack(layer_tar([file(long, b"gnu")], fmt=tarfile.GNU_FORMAT))
    assert (layer / long).read_bytes() == b"gnu"
    other = Box(box.layers.parent / "pax")
    assert other.unpack(layer_tar([file(long, b"pax")])).joinpath(long).read_bytes() == b"pax"


def test_enospc_is_resource_exhausted(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.errors import ResourceExhausted

    real_write = os.write

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    data = layer_tar([file("small", b"s"), file("big", b"x" * 10_000)])
    with pytest.raises(ResourceExhausted, match=r"no space left on device while unpacking layer sha256:\w+"):
        box.unpack(data)
    box.assert_nothing_kept()


# -- size caps (issue 12, finding 5) ----------------------------------------------------------------


def test_a_gzip_bomb_is_refused_by_ratio_before_it_fills_the_disk(box: Box) -> None:
    bomb = gzip_bomb(64 << 20)
    assert bomb.unpacked > 500 * len(bomb.blob)  # the bomb really is one
    limits = UnpackLimits(max_bytes=1 << 40, max_ratio=100, ratio_floor=4 << 20)
    with pytest.raises(HostileArchive, match=r"expands more than 100 times .*--max-compression-ratio"):
        unpack_layer(io.BytesIO(bomb.blob), box.dest, expected_diff_id=bomb.diff_id, work_dir=box.work,
                     limits=limits)
    box.assert_nothing_kept()


def test_a_layer_past_the_unpacked_size_limit_is_refused(box: Box) -> None:
    bomb = gzip_bomb(64 << 20)
    limits = UnpackLimits(max_bytes=8 << 20, max_ratio=1e9, ratio_floor=0)
    with pytest.raises(HostileArchive, match=r"unpacks to more than 8388608 bytes.*--max-unpacked-layer"):
        unpack_layer(io.BytesIO(bomb.blob), box.dest, expected_diff_id=bomb.diff_id, work_dir=box.work,
                     limits=limits)
    box.assert_nothing_kept()


def test_the_same_layer_within_the_limits_unpacks(box: Box) -> None:
    bomb = gzip_bomb(8 << 20)
    info = unpack_layer(io.BytesIO(bomb.blob), box.dest, expected_diff_id=bomb.diff_id, work_dir=box.work,
                        limits=UnpackLimits(max_bytes=16 << 20, max_ratio=100, ratio_floor=16 << 20))
    assert info.size == bomb.unpacked and (box.dest / "zeros").stat().st_size == 8 << 20
