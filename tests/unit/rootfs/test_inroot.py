"""Lookups in an image's layers stay inside the image (issue 12, finding 6).

Each hostile layer here is unpacked by the product's own ``unpack_layer`` from a tar built with
``tests/fixtures/images.py``, and points somewhere on the *host* that the test created first: a file that
looks like a passwd with a host-only user. Resolving ``--user`` must never see that user.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from agent.errors import InvalidArgument
from agent.images.layers import unpack_layer
from agent.rootfs import inroot, users
from tests.fixtures import images as f

IMAGE_PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
HOST_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nhostonly:x:4242:4242:host:/secret:/bin/sh\n"


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """A directory on the host, outside every layer, holding a passwd/group/shadow-like file."""
    host = tmp_path / "host" / "etc"
    host.mkdir(parents=True)
    (host / "passwd").write_bytes(HOST_PASSWD)
    (host / "group").write_bytes(b"hostgrp:x:4343:hostonly\n")
    (host / "shadow").write_bytes(b"root:$6$hostsecret:19000:0:99999:7:::\n")
    return host


def _unpack(tmp_path: Path, name: str, entries: list[f.Entry]) -> Path:
    raw = f.layer_tar(entries)
    dest = tmp_path / "layers" / name
    dest.parent.mkdir(exist_ok=True)
    unpack_layer(io.BytesIO(raw), dest, expected_diff_id=f.sha256(raw))
    return dest


def _host_only_user_is_not_found(layers: list[Path]) -> None:
    with pytest.raises(InvalidArgument, match="unable to find user hostonly"):
        users.resolve_user("hostonly", layers=layers)


def test_absolute_symlink_to_a_host_file_resolves_inside_the_image(tmp_path: Path, host_dir: Path) -> None:
    layer = _unpack(tmp_path, "abs", [f.directory("etc"), f.symlink("etc/passwd", str(host_dir / "passwd"))])
    _host_only_user_is_not_found([layer])
    assert inroot.read_file([layer], "/etc/passwd") is None
    # The same absolute target, present inside the image, is what the container sees: it is used.
    inner = _unpack(tmp_path, "inner", [f.directory("etc"), f.symlink("etc/passwd", "/usr/lib/passwd"),
                                         f.directory("usr"), f.directory("usr/lib"),
                                         f.file("usr/lib/passwd", IMAGE_PASSWD)])
    assert users.resolve_user("app", layers=[inner]).uid == 1000


def test_dotdot_chain_stops_at_the_image_root(tmp_path: Path, host_dir: Path) -> None:
    up = "../" * 30 + str(host_dir / "passwd").lstrip("/")
    layer = _unpack(tmp_path, "dots", [f.directory("etc"), f.symlink("etc/passwd", up)])
    _host_only_user_is_not_found([layer])
    # `..` past the root is the root, as in the container: a target that exists there is found.
    inner = _unpack(tmp_path, "dots-in", [f.directory("etc"), f.symlink("etc/passwd", "../../../../real"),
                                           f.file("real", IMAGE_PASSWD)])
    assert users.resolve_user("app", layers=[inner]).uid == 1000


def test_symlinked_directory_to_the_host_is_not_followed(tmp_path: Path, host_dir: Path) -> None:
    layer = _unpack(tmp_path, "dir", [f.symlink("etc", str(host_dir))])
    _host_only_user_is_not_found([layer])
    with pytest.raises(InvalidArgument, match="unable to find group hostgrp"):
        users.resolve_user("0:hostgrp", layers=[layer])
    assert inroot.read_file([layer], "etc/shadow") is None


def test_relative_symlink_out_of_a_directory_symlink(tmp_path: Path, host_dir: Path) -> None:
    # /etc -> /x/y, and /x/y/passwd -> ../../../<host path>: every hop is resolved from the image root.
    up = "../" * 3 + str(host_dir / "passwd").lstrip("/")
    layer = _unpack(tmp_path, "hops", [f.symlink("etc", "/x/y"), f.directory("x"), f.directory("x/y"),
                                       f.symlink("x/y/passwd", up)])
    _host_only_user_is_not_found([layer])


def test_symlink_loops_fail_with_a_clear_error(tmp_path: Path) -> None:
    layer = _unpack(tmp_path, "loop", [f.directory("etc"), f.symlink("etc/passwd", "passwd2"),
                                       f.symlink("etc/passwd2", "/etc/passwd")])
    with pytest.raises(InvalidArgument, match="too many levels of symbolic links"):
        users.resolve_user("app", layers=[layer])
    selfloop = _unpack(tmp_path, "self", [f.symlink("etc", "etc")])
    with pytest.raises(InvalidArgument, match=r"/etc/passwd.*too many levels of symbolic links"):
        inroot.read_file([selfloop], "/etc/passwd")


def test_symlinks_resolve_across_layers_like_the_merged_view(tmp_path: Path) -> None:
    bottom = _unpack(tmp_path, "bottom", [f.directory("usr"), f.file("usr/passwd", IMAGE_PASSWD)])
    top = _unpack(tmp_path, "top", [f.directory("etc"), f.symlink("etc/passwd", "../usr/passwd")])
    assert users.resolve_user("app", layers=[top, bottom]).uid == 1000
    # A symlinked directory in one layer, its target's contents in another.
    link = _unpack(tmp_path, "link", [f.symlink("etc", "usr")])
    assert inroot.read_file([link, bottom], "/etc/passwd") == IMAGE_PASSWD


def test_whiteouts_and_opaque_directories_hide_lower_layers(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("whiteouts are device nodes and opaque dirs trusted xattrs: needs root")
    bottom = _unpack(tmp_path, "bottom", [f.directory("etc"), f.file("etc/passwd", IMAGE_PASSWD),
                                          f.directory("usr"), f.file("usr/passwd", IMAGE_PASSWD)])
    white = _unpack(tmp_path, "white", [f.directory("etc"), f.file("etc/.wh.passwd")])
    assert inroot.read_file([white, bottom], "etc/passwd") is None
    opaque = _unpack(tmp_path, "opaque", [f.directory("etc"), f.file("etc/.wh..wh..opq"),
                                          f.file("etc/group", b"g:x:1:\n")])
    assert inroot.read_file([opaque, bottom], "etc/passwd") is None
    assert inroot.read_file([opaque, bottom], "etc/group") == b"g:x:1:\n"
    # A symlink whose target was deleted in a higher layer finds nothing, not the lower copy.
    via = _unpack(tmp_path, "via", [f.directory("etc"), f.symlink("etc/passwd", "/usr/passwd"),
                                    f.directory("usr"), f.file("usr/.wh.passwd")])
    assert inroot.read_file([via, bottom], "etc/passwd") is None
    # A file in a higher layer hides a whole directory below it.
    flat = _unpack(tmp_path, "flat", [f.file("etc", b"not a dir")])
    assert inroot.read_file([flat, bottom], "etc/passwd") is None


def test_special_files_are_refused_not_opened(tmp_path: Path) -> None:
    layer = _unpack(tmp_path, "fifo", [f.directory("etc"), f.fifo("etc/passwd")])
    # Opening a FIFO for reading would block the agent until someone writes to it.
    with pytest.raises(InvalidArgument, match="/etc/passwd is not a regular file"):
        users.resolve_user("app", layers=[layer])
    if os.geteuid() == 0:
        dev = _unpack(tmp_path, "dev", [f.directory("etc"), f.chardev("etc/passwd", 1, 3)])  # /dev/null
        with pytest.raises(InvalidArgument, match="is not a regular file"):
            users.resolve_user("app", layers=[dev])
    big = tmp_path / "big"
    (big / "etc").mkdir(parents=True)
    with open(big / "etc/passwd", "wb") as out:
        out.truncate(inroot.MAX_FILE_BYTES + 1)
    with pytest.raises(InvalidArgument, match="larger than"):
        users.resolve_user("app", layers=[big])


def test_resolve_reports_the_layer_and_real_path(tmp_path: Path) -> None:
    bottom = _unpack(tmp_path, "b", [f.directory("usr"), f.file("usr/passwd", IMAGE_PASSWD)])
    top = _unpack(tmp_path, "t", [f.directory("etc"), f.symlink("etc/passwd", "/usr/passwd")])
    found = inroot.resolve([top, bottom], "/etc/passwd")
    assert found is not None and found.layer == bottom and found.parts == ("usr", "passwd")
    assert stat.S_ISREG(found.mode)
    assert inroot.resolve([top, bottom], "/nope/passwd") is None
    assert inroot.resolve([top, bottom], "/usr/passwd/more") is None  # a file is not a directory
