"""Pure parts of the kernel edge: overlay options, capability masks, namespace flags, command lookup."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent.linux import capabilities, executable, mounts, namespaces, syscalls
from agent.runtime.plan import DEFAULT_CAPABILITIES


def test_overlay_options_short_paths_stay_absolute() -> None:
    opts = mounts.overlay_options(["/l/a", "/l/b"], upper="/c/up", work="/c/work")
    assert opts == mounts.OverlayOptions("lowerdir=/l/a:/l/b,upperdir=/c/up,workdir=/c/work", None)


def test_overlay_options_many_layers_become_relative_to_common_parent() -> None:
    base = "/var/lib/shoal/layers"
    lower = [f"{base}/{i:064x}/fs" for i in range(50)]
    opts = mounts.overlay_options(lower, upper="/c/up", work="/c/work")
    assert opts.chdir == base
    assert opts.data.startswith(f"lowerdir={0:064x}/fs:{1:064x}/fs:")
    assert opts.data.endswith(",upperdir=/c/up,workdir=/c/work")
    assert len(opts.data) <= mounts.OVERLAY_MAX_OPTIONS


def test_overlay_options_too_long_even_relative_is_refused() -> None:
    lower = [f"/x/{i:0200x}" for i in range(40)]
    with pytest.raises(ValueError, match="keep layer paths short"):
        mounts.overlay_options(lower, upper="/u", work="/w")


@pytest.mark.parametrize("bad", ["/l/a,b", "/l/a:b", "relative"])
def test_overlay_options_reject_unrepresentable_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        mounts.overlay_options([bad], upper="/u", work="/w")


def test_docker_default_capability_mask() -> None:
    assert capabilities.mask(DEFAULT_CAPABILITIES) == 0xA80425FB


def test_capability_names_accept_prefix_and_case_and_reject_unknown() -> None:
    assert capabilities.mask(["cap_sys_admin", "NET_ADMIN"]) == (1 << 21) | (1 << 12)
    with pytest.raises(ValueError, match="SYS_WIZARD"):
        capabilities.mask(["SYS_WIZARD"])


def test_namespace_flags() -> None:
    assert namespaces.flags_for(["pid", "mount"]) == syscalls.CLONE_NEWPID | syscalls.CLONE_NEWNS
    with pytest.raises(ValueError, match="user"):
        namespaces.flags_for(["user"])
    assert namespaces.JOIN_ORDER[-1] == "mount"


def test_syscall_errors_name_the_call_and_keep_errno() -> None:
    exc = syscalls.error(errno.EINVAL, "mount overlay on /t")
    assert exc.errno == errno.EINVAL and exc.strerror == "mount overlay on /t: Invalid argument"
    with pytest.raises(FileNotFoundError, match="umount /definitely/not/here"):
        syscalls.umount2("/definitely/not/here")


def test_env_to_mapping_last_wins() -> None:
    assert executable.env_to_mapping(("A=1", "B=x=y", "A=2", "C")) == {"A": "2", "B": "x=y", "C": ""}


def test_resolve_searches_path_in_order_and_skips_non_executables(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "tool").write_text("not executable")
    (second / "tool").write_text("#!/bin/sh\n")
    os.chmod(second / "tool", 0o755)
    (first / "dir").mkdir()
    env = {"PATH": f"{first}:{second}"}
    assert executable.resolve("tool", env=env) == f"{second}/tool"
    assert executable.resolve("./x/y", env=env) == "./x/y"
    with pytest.raises(executable.CommandNotFound) as info:
        executable.resolve("dir", env=env)
    failure = executable.classify("dir", info.value)
    assert failure == executable.ExecFailure("not-found", 127, 'executable file not found in $PATH: "dir"')


def test_classify_exec_errors() -> None:
    assert executable.classify("/x", OSError(errno.EACCES, "denied")).kind == "not-executable"
    assert executable.classify("/x", OSError(errno.ENOEXEC, "fmt")).exit_code == 126
    missing = executable.classify("/x", OSError(errno.ENOENT, "gone"))
    assert (missing.kind, missing.exit_code) == ("not-found", 127)
    assert missing.message == 'exec "/x": No such file or directory'
