"""Real containers through ``agent.runtime.launch``: isolation, filesystem, credentials and errors."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.linux import capabilities, mounts
from agent.runtime.plan import DEFAULT_CAPABILITIES

from .busybox_rootfs import build_busybox_rootfs
from .conftest import Launcher, Outcome, host_mountinfo

pytestmark = [pytest.mark.root, pytest.mark.integration]

Run = Callable[..., Outcome]


def ok(outcome: Outcome) -> str:
    assert outcome.error_kind is None, outcome.error_message
    assert outcome.exit == 0, outcome.output
    return outcome.output


def test_init_is_pid_1_and_only_container_processes_are_visible(run_in_container: Run) -> None:
    out = ok(run_in_container("echo pid=$$; sleep 30 & ps -o pid,comm; kill %1"))
    assert "pid=1\n" in out
    rows = [line.split() for line in out.splitlines()[1:] if line.strip() and line.split()[0].isdigit()]
    # sh (pid 1), the background child (possibly not yet exec'd into sleep) and ps: nothing of the host.
    assert len(rows) == 3, out
    assert ["1", "sh"] in rows and "ps" in {comm for _, comm in rows}


def test_hostname_is_set_in_new_uts_namespace(run_in_container: Run) -> None:
    assert ok(run_in_container("hostname")).strip() == "shoaltest"
    assert os.uname().nodename != "shoaltest"


def test_all_requested_namespaces_differ_from_host(run_in_container: Run) -> None:
    names = ["uts", "ipc", "net", "mnt", "cgroup", "pid"]
    out = ok(run_in_container("for n in " + " ".join(names) + "; do readlink /proc/self/ns/$n; done"))
    inside = out.split()
    host = [os.readlink(f"/proc/self/ns/{n}") for n in names]
    assert len(inside) == len(names)
    for name, theirs, ours in zip(names, inside, host, strict=True):
        assert theirs != ours, name


def test_host_network_keeps_host_net_namespace_and_sys_is_still_read_only(run_in_container: Run) -> None:
    out = ok(run_in_container(
        "readlink /proc/self/ns/net; touch /sys/x 2>/dev/null && echo sys-writable; echo done",
        namespaces=("pid", "mount", "uts", "ipc", "cgroup"),
    ))
    lines = out.split()
    assert lines[0] == os.readlink("/proc/self/ns/net")
    assert "sys-writable" not in out and lines[-1] == "done"


def test_writes_go_to_upper_only_and_containers_do_not_share_them(launcher: Launcher) -> None:
    first = launcher.plan(["/bin/sh", "-c", "echo one > /etc/lower-marker; echo new > /etc/created"])
    second = launcher.plan(["/bin/sh", "-c", "cat /etc/lower-marker; ls /etc"])
    ok(launcher.run(first))
    out = ok(launcher.run(second))
    assert (launcher.lower / "etc" / "lower-marker").read_text() == "from lower\n"
    assert not (launcher.lower / "etc" / "created").exists()
    assert Path(first.rootfs.upper, "etc", "created").read_text() == "new\n"
    assert "from lower" in out and "created" not in out


def test_read_only_root_refuses_writes(run_in_container: Run) -> None:
    script = "touch /etc/x; echo rc=$?; echo t > /tmp/x; echo rc=$?"
    out = ok(run_in_container(script, read_only=True))
    assert out.count("Read-only file system") == 2
    assert "rc=0" not in out


def test_masked_paths_read_empty(run_in_container: Run) -> None:
    # /proc/kcore is masked by default but absent on some kernels; /proc/keys and timer_list exist here.
    probe = "/proc/keys" if os.path.exists("/proc/keys") else "/proc/timer_list"
    assert Path(probe).read_bytes()  # non-empty on the host
    script = f"wc -c < {probe}; ls -A /sys/firmware | wc -l"
    if os.path.exists("/proc/kcore"):
        script += "; wc -c < /proc/kcore"
    out = ok(run_in_container(script))
    assert all(value == "0" for value in out.split()), out


def test_readonly_proc_paths_refuse_writes(run_in_container: Run) -> None:
    script = "echo shoal > /proc/sys/kernel/domainname && echo wrote-sys"
    if os.path.exists("/proc/sysrq-trigger"):
        script += "; echo h > /proc/sysrq-trigger && echo wrote-sysrq"
    out = run_in_container(script + "; true").output
    assert "wrote" not in out
    assert "Read-only file system" in out


def test_dev_holds_only_allowed_nodes(run_in_container: Run) -> None:
    out = ok(run_in_container("ls -A /dev; echo ---; ls -A /dev/pts; readlink /dev/ptmx; readlink /dev/fd"))
    listing, rest = out.split("---")
    expected = {
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "ptmx", "fd",
        "stdin", "stdout", "stderr",
    }
    assert set(listing.split()) == expected
    assert rest.split() == ["ptmx", "pts/ptmx", "/proc/self/fd"]  # a private devpts: no host ptys


def test_sys_is_read_only(run_in_container: Run) -> None:
    out = run_in_container("touch /sys/kernel/x; echo 1 > /sys/kernel/profiling; true").output
    assert out.count("Read-only file system") == 2


def test_no_sys_admin_means_no_mounts(run_in_container: Run) -> None:
    out = run_in_container("mount -t tmpfs none /mnt && echo mounted; true").output
    assert "mounted" not in out
    assert "permission denied" in out.lower()


def test_mknod_depends_on_cap_mknod(run_in_container: Run) -> None:
    script = "mknod /tmp/sda b 8 0 && echo made"
    assert "made" in run_in_container(script).output
    without = tuple(c for c in DEFAULT_CAPABILITIES if c != "MKNOD")
    assert "made" not in run_in_container(script + "; true", capabilities=without).output


def _status_field(out: str, field: str) -> str:
    for line in out.splitlines():
        if line.startswith(field + ":"):
            return line.split()[1]
    raise AssertionError(f"{field} not in {out!r}")


def test_root_gets_docker_default_capabilities_and_no_new_privs(run_in_container: Run) -> None:
    out = ok(run_in_container("cat /proc/self/status"))
    docker_mask = capabilities.mask(DEFAULT_CAPABILITIES)
    assert docker_mask == 0xA80425FB
    assert int(_status_field(out, "CapEff"), 16) == docker_mask
    assert int(_status_field(out, "CapBnd"), 16) == docker_mask
    assert int(_status_field(out, "CapInh"), 16) == 0
    assert int(_status_field(out, "CapAmb"), 16) == 0
    assert _status_field(out, "NoNewPrivs") == "1"


def test_no_new_privs_can_be_off(run_in_container: Run) -> None:
    out = ok(run_in_container("cat /proc/self/status", no_new_privileges=False))
    assert _status_field(out, "NoNewPrivs") == "0"


def test_non_root_user_switch_has_empty_effective_set(run_in_container: Run) -> None:
    out = ok(run_in_container("id -u; id -g; id -G; cat /proc/self/status", uid=1000, gid=1000,
                              additional_gids=(1000, 27)))
    lines = out.splitlines()
    assert lines[0] == "1000" and lines[1] == "1000"
    assert set(lines[2].split()) == {"1000", "27"}
    assert int(_status_field(out, "CapEff"), 16) == 0
    assert int(_status_field(out, "CapPrm"), 16) == 0
    assert int(_status_field(out, "CapBnd"), 16) == capabilities.mask(DEFAULT_CAPABILITIES)


def test_env_and_cwd_are_honoured_and_missing_cwd_is_created(run_in_container: Run) -> None:
    out = ok(run_in_container('echo "$GREETING"; pwd; ls -ld /work/dir | cut -c1-10',
                              env=("PATH=/bin", "GREETING=hello there"), cwd="/work/dir"))
    assert out.splitlines() == ["hello there", "/work/dir", "drwxr-xr-x"]


def test_path_lookup_uses_the_container_path(run_in_container: Run, launcher: Launcher) -> None:
    out = ok(launcher.run(launcher.plan(["busybox", "echo", "found"], env=("PATH=/nowhere:/bin",))))
    assert out == "found\n"


def test_command_not_found(launcher: Launcher) -> None:
    outcome = launcher.run(launcher.plan(["nosuch"]))
    assert outcome.error_kind == "not-found"
    assert outcome.error_message == 'executable file not found in $PATH: "nosuch"'
    assert not outcome.children_left


def test_command_not_executable(launcher: Launcher) -> None:
    outcome = launcher.run(launcher.plan(["/etc/passwd"]))
    assert outcome.error_kind == "not-executable"
    assert not outcome.children_left


def test_failing_overlay_mount_is_a_setup_error_with_nothing_left(launcher: Launcher, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-lower")
    outcome = launcher.run(launcher.plan(["/bin/true"], lower=(missing,)))
    assert outcome.error_kind == "setup"
    assert outcome.error_message is not None
    assert outcome.error_message.startswith("mount overlay on ")
    assert "No such file or directory" in outcome.error_message
    assert not outcome.children_left


def test_exit_code_and_output_propagate(run_in_container: Run) -> None:
    outcome = run_in_container("echo out; echo err >&2; exit 3")
    assert outcome.exit == 3
    assert outcome.output == "out\nerr\n"


def test_no_mount_survives_on_host(launcher: Launcher) -> None:
    plan = launcher.plan(["/bin/true"])
    ok(launcher.run(plan))
    assert f" {plan.rootfs.target} " not in host_mountinfo()
    assert os.listdir(plan.rootfs.target) == []


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    path = Path("/sys/fs/cgroup/pids") / f"shoal-launch-test-{uuid.uuid4().hex[:8]}"
    if not path.parent.is_dir():
        pytest.skip("no v1 pids hierarchy")
    path.mkdir()
    yield path
    path.rmdir()


def test_container_joins_cgroups_and_gets_own_cgroup_namespace(launcher: Launcher, pids_cgroup: Path) -> None:
    plan = launcher.plan(["/bin/sh", "-c", "cat /proc/self/cgroup; exec sleep 30"],
                         cgroup_procs=(str(pids_cgroup / "cgroup.procs"),))
    container = launcher.start(plan)
    try:
        members = (pids_cgroup / "cgroup.procs").read_text().split()
        assert str(container.pid) in members
        output = container.wait_for_output(":pids:")
    finally:
        container.stop()
    pids_line = next(line for line in output.splitlines() if ":pids:" in line)
    assert pids_line.endswith(":pids:/")  # the cgroup namespace is rooted at the container's cgroup
    assert (pids_cgroup / "cgroup.procs").read_text().split() == []


def test_setup_timeout_kills_and_reports(launcher: Launcher, tmp_path: Path) -> None:
    # Opening a FIFO for writing blocks until a reader appears: the intermediate hangs "joining a cgroup".
    fifo = tmp_path / "stuck.procs"
    os.mkfifo(fifo)
    plan = launcher.plan(["/bin/true"], cgroup_procs=(str(fifo),))
    outcome = launcher.run_with_timeout(plan, timeout=0.3)
    assert outcome.error_kind == "setup"
    assert outcome.error_message is not None and "did not finish within 0.3s" in outcome.error_message
    assert not outcome.children_left


def test_many_long_lower_paths_use_relative_overlay_options(launcher: Launcher, tmp_path: Path) -> None:
    base = tmp_path / ("a" * 200) / ("b" * 200) / ("c" * 200)
    layers = [base / f"L{i:02d}" for i in range(8)]
    for layer in layers:
        layer.mkdir(parents=True)
    build_busybox_rootfs(layers[-1])
    (layers[0] / "top").write_text("top layer\n")
    assert len(":".join(map(str, layers))) > mounts.OVERLAY_RELATIVE_THRESHOLD
    out = ok(launcher.run(launcher.plan(["cat", "/top"], lower=tuple(map(str, layers)))))
    assert out == "top layer\n"


def test_only_stdio_is_inherited_and_no_signal_is_ignored(launcher: Launcher) -> None:
    listing = ok(launcher.run(launcher.plan(["ls", "/proc/self/fd"])))
    assert set(listing.split()) == {"0", "1", "2", "3"}  # 3 is ls's own handle; harness fd 50 is gone
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive execve: the container must not.
    status = ok(launcher.run(launcher.plan(["cat", "/proc/self/status"])))
    assert int(_status_field(status, "SigIgn"), 16) == 0
    assert int(_status_field(status, "SigBlk"), 16) == 0
