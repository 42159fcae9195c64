from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.errors import InvalidArgument
from agent.rootfs import initlayer, inroot, overlay, users


def _layer(root: Path, name: str, files: dict[str, str]) -> Path:
    layer = root / name
    for rel, text in files.items():
        path = layer / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    layer.mkdir(exist_ok=True)
    return layer


PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nwheel:x:10:app\n"


def test_resolve_user_by_name_number_and_group(tmp_path: Path) -> None:
    layers = [_layer(tmp_path, "l1", {"etc/passwd": PASSWD, "etc/group": GROUP})]
    assert users.resolve_user("", layers=layers) == users.Credentials(0, 0, (), "/root")
    assert users.resolve_user("app", layers=layers) == users.Credentials(1000, 1000, (10,), "/home/app")
    assert users.resolve_user("1000:10", layers=layers).gid == 10
    assert users.resolve_user("4242", layers=layers) == users.Credentials(4242, 0, (), "/")
    assert users.resolve_user("app:wheel", layers=layers).gid == 10
    with pytest.raises(InvalidArgument, match="unable to find user nosuch"):
        users.resolve_user("nosuch", layers=layers)
    with pytest.raises(InvalidArgument, match="unable to find group nogroup"):
        users.resolve_user("app:nogroup", layers=layers)


def test_lookup_honours_upper_layers_and_whiteouts(tmp_path: Path) -> None:
    bottom = _layer(tmp_path, "bottom", {"etc/passwd": "root:x:0:0::/:/bin/sh\n"})
    top = _layer(tmp_path, "top", {"etc/passwd": PASSWD})
    assert inroot.read_file([top, bottom], "etc/passwd") == PASSWD.encode()
    white = tmp_path / "white"
    (white / "etc").mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("whiteouts are device nodes: needs root")
    os.mknod(white / "etc/passwd", stat.S_IFCHR, os.makedev(0, 0))
    assert inroot.read_file([white, bottom], "etc/passwd") is None


def test_init_layer_files(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 9.9.9.9\nsearch example\n")
    init = tmp_path / "init"
    init.mkdir()
    initlayer.write_init_layer(init, hostname="web-1", host_network=False, host_resolv_conf=resolv)
    assert (init / "etc/hostname").read_text() == "web-1\n"
    assert "web-1" in (init / "etc/hosts").read_text()
    assert (init / "etc/resolv.conf").read_text() == "nameserver 9.9.9.9\nsearch example\n"
    for d in ("proc", "sys", "dev"):
        assert (init / d).is_dir()
    assert stat.S_IMODE((init / "tmp").stat().st_mode) == 0o1777
    host = tmp_path / "init2"
    host.mkdir()
    initlayer.write_init_layer(host, hostname="h", host_network=True, host_resolv_conf=resolv)
    assert "127.0.0.53" in (host / "etc/resolv.conf").read_text()


def test_describe_rootfs_puts_init_layer_on_top(tmp_path: Path) -> None:
    dirs = overlay.ContainerDirs(tmp_path / "c")
    desc = overlay.describe_rootfs(image_layers=[tmp_path / "top", tmp_path / "base"], dirs=dirs)
    assert desc.lower == (str(dirs.init), str(tmp_path / "top"), str(tmp_path / "base"))
    assert desc.upper == str(dirs.upper) and desc.target == str(dirs.rootfs)


def test_init_layer_hosts_names_the_bridge_address(tmp_path: Path) -> None:
    init = tmp_path / "init"
    init.mkdir()
    initlayer.write_init_layer(init, hostname="web", host_network=False, address="10.88.0.7",
                               host_resolv_conf=tmp_path / "none")
    assert "10.88.0.7\tweb\n" in (init / "etc/hosts").read_text()
    assert "127.0.1.1" not in (init / "etc/hosts").read_text()


def test_init_layer_writes_never_follow_a_symlink(tmp_path: Path) -> None:
    init = tmp_path / "init"
    (init / "etc").mkdir(parents=True)
    victim = tmp_path / "host-hosts"
    victim.write_text("host file\n")
    (init / "etc" / "hosts").symlink_to(victim)
    with pytest.raises(OSError):
        initlayer.write_hosts(init, hostname="h", address=None)
    assert victim.read_text() == "host file\n"


def test_upper_size_counts_the_layer_only(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d" / "f").write_bytes(b"x" * 8192)
    host = tmp_path / "host"
    host.mkdir()
    (host / "big").write_bytes(b"y" * (1 << 20))
    (upper / "link").symlink_to(host)
    size = overlay.upper_size_bytes(upper)
    assert 8192 <= size < (1 << 20)
