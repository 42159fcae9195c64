"""The host runtime end to end: a real agent, real containers, driven through the shoal CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent.conftest import AgentProcess, overlay_mounts_under, shoal_cgroup_dirs, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"


def inspect(agent: AgentProcess, ref: str) -> dict[str, Any]:
    data = json.loads(agent.run("inspect", ref).stdout)
    assert isinstance(data, list) and len(data) == 1
    return data[0]  # type: ignore[no-any-return]


def run_out(agent: AgentProcess, *args: str) -> str:
    return agent.run("run", "--rm", *args).stdout


# -- running and output --------------------------------------------------------------------------

def test_socket_is_root_only(agent: AgentProcess) -> None:
    assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o600


def test_foreground_streams_stdout_and_stderr_separately(agent: AgentProcess) -> None:
    result = agent.run("run", "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; echo out2")
    assert result.stdout == "out\nout2\n"
    assert result.stderr == "err\n"


@pytest.mark.parametrize("code", [0, 3, 42])
def test_exit_code_propagates(agent: AgentProcess, code: int) -> None:
    assert agent.run("run", "--rm", IMAGE, "sh", "-c", f"exit {code}", check=False).returncode == code


def test_detached_run_ps_logs_stop_rm(agent: AgentProcess) -> None:
    cid = agent.run("run", "-d", "--name", "web", IMAGE, "sh", "-c",
                    "echo started; while true; do sleep 0.1; done").stdout.strip()
    assert len(cid) == 64
    assert "web" in agent.run("ps").stdout
    wait_for(lambda: "started" in agent.run("logs", "web").stdout)
    # names and unique id prefixes work wherever an id does
    assert inspect(agent, cid[:8])["name"] == "web"
    info = inspect(agent, "web")
    assert info["state"] == "running" and info["pid"] > 0
    assert agent.run("stop", "-t", "1", "web").returncode == 0
    info = inspect(agent, "web")
    assert info["state"] == "exited"
    assert info["exit_code"] == 137  # sh as pid 1 ignores SIGTERM: SIGKILL after the grace
    assert "web" not in agent.run("ps").stdout
    assert "web" in agent.run("ps", "-a").stdout
    agent.run("rm", "web")
    assert "web" not in agent.run("ps", "-a").stdout
    assert agent.run("inspect", cid, check=False).returncode != 0


def test_stop_uses_sigterm_first(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "polite", IMAGE, "sh", "-c",
              "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done")
    wait_for(lambda: "ready" in agent.run("logs", "polite").stdout)
    agent.run("stop", "-t", "10", "polite")
    info = inspect(agent, "polite")
    assert info["exit_code"] == 0 and info["reason"] == "Completed"
    assert "bye" in agent.run("logs", "polite").stdout
    agent.run("rm", "polite")


def test_kill_with_signal(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "victim", IMAGE, "sh", "-c",
              "trap 'exit 5' USR1; echo ready; while true; do sleep 0.1; done")
    wait_for(lambda: "ready" in agent.run("logs", "victim").stdout)
    agent.run("kill", "-s", "USR1", "victim")
    wait_for(lambda: inspect(agent, "victim")["state"] == "exited")
    assert inspect(agent, "victim")["exit_code"] == 5
    agent.run("rm", "victim")


def test_rm_refuses_running_container_without_force(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "busy", IMAGE, "sleep", "300")
    result = agent.run("rm", "busy", check=False)
    assert result.returncode != 0 and "rm -f" in result.stderr
    agent.run("rm", "-f", "busy")
    assert "busy" not in agent.run("ps", "-a").stdout


def test_detached_rm_removes_itself_on_exit(agent: AgentProcess) -> None:
    cid = agent.run("run", "-d", "--rm", IMAGE, "true").stdout.strip()
    wait_for(lambda: cid[:12] not in agent.run("ps", "-a").stdout)


def test_exec_joins_the_container(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "target", "--hostname", "inside", IMAGE, "sleep", "300")
    assert agent.run("exec", "target", "hostname").stdout.strip() == "inside"
    ps = agent.run("exec", "target", "ps", "-o", "pid,comm").stdout
    assert "1 sleep" in " ".join(ps.split()), ps
    assert agent.run("exec", "target", "sh", "-c", "exit 7", check=False).returncode == 7
    # Same cgroup as pid 1: inside the container's cgroup namespace both read as the namespace root.
    mine = agent.run("exec", "target", "cat", "/proc/self/cgroup").stdout
    init = agent.run("exec", "target", "cat", "/proc/1/cgroup").stdout
    assert mine == init and ":/\n" in mine and ".." not in mine
    assert agent.run("exec", "target", "nosuch", check=False).returncode == 127
    agent.run("rm", "-f", "target")


def test_inspect_shows_the_whole_record(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "rec", "--memory", "64M", "--cpus", "0.5", "--pids", "50",
              "-l", "app=web", IMAGE, "sleep", "300")
    info = inspect(agent, "rec")
    for key in ("id", "state", "pid", "created_at", "started_at", "layers", "cgroup_paths", "log_path",
                "argv", "upper_dir", "spec"):
        assert key in info, key
    assert info["spec"]["resources"] == {"memory_bytes": str(64 << 20), "cpu_millis": "500",
                                         "pids_max": "50", "memory_request_bytes": "0",
                                         "cpu_request_millis": "0", "storage_bytes": "0"}
    assert info["spec"]["labels"] == {"app": "web"}
    assert Path(info["log_path"]).exists()
    assert len(info["layers"]) >= 2  # init layer + image layer(s)
    cg = info["cgroup_paths"]
    assert int(Path(cg["memory"], "memory.limit_in_bytes").read_text()) == 64 << 20
    assert Path(cg["cpu"], "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert Path(cg["pids"], "pids.max").read_text().strip() == "50"
    assert "rec" in agent.run("ps", "--filter", "label=app=web").stdout
    assert "rec" not in agent.run("ps", "--filter", "label=app=db").stdout
    agent.run("rm", "-f", "rec")


# -- limits --------------------------------------------------------------------------------------

def test_memory_limit_oom_kill_is_reported(agent: AgentProcess) -> None:
    # Grow a shell variable far past the limit; the kernel OOM-kills the container.
    result = agent.run("run", "--name", "hog", "--memory", "16M", IMAGE, "sh", "-c",
                       "x=a; while true; do x=$x$x; done", check=False, timeout=120)
    assert result.returncode == 137
    info = inspect(agent, "hog")
    assert info["reason"] == "OOMKilled" and info["exit_code"] == 137
    agent.run("rm", "hog")


def test_pids_limit(agent: AgentProcess) -> None:
    result = agent.run("run", "--rm", "--pids", "5", IMAGE, "sh", "-c",
                       "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait", check=False)
    err = result.stderr.lower()
    assert "can't fork" in err or "resource temporarily unavailable" in err, result.stderr


# -- isolation and hardening ---------------------------------------------------------------------

def test_pid_namespace_hides_host_processes(agent: AgentProcess) -> None:
    assert run_out(agent, IMAGE, "sh", "-c", "echo $$").strip() == "1"
    pids = run_out(agent, IMAGE, "sh", "-c", "ls /proc | grep -E '^[0-9]+$'").split()
    assert len(pids) <= 3 and "1" in pids


def test_namespaces_differ_from_the_host(agent: AgentProcess) -> None:
    out = run_out(agent, IMAGE, "sh", "-c",
                  "for n in pid mnt uts ipc net cgroup; do readlink /proc/1/ns/$n; done").split()
    host = [os.readlink(f"/proc/self/ns/{n}") for n in ("pid", "mnt", "uts", "ipc", "net", "cgroup")]
    assert len(out) == 6
    assert all(c != h for c, h in zip(out, host, strict=True)), (out, host)


def test_own_network_has_loopback_up(agent: AgentProcess) -> None:
    # IFF_UP|IFF_LOOPBACK: a program can reach itself on 127.0.0.1, as under Docker.
    assert run_out(agent, IMAGE, "cat", "/sys/class/net/lo/flags").strip() == "0x9"
    out = run_out(agent, IMAGE, "sh", "-c", "nc -l -p 7000 -e echo hi & sleep 0.2; nc 127.0.0.1 7000")
    assert out.strip() == "hi"


def test_host_network_shares_the_host_netns(agent: AgentProcess) -> None:
    out = run_out(agent, "--network", "host", IMAGE, "readlink", "/proc/1/ns/net").strip()
    assert out == os.readlink("/proc/self/ns/net")


@pytest.mark.parametrize(("what", "script", "error"), [
    ("mount", "mount -t tmpfs none /mnt", "permission denied"),
    ("write /proc/sys", "echo 1 > /proc/sys/kernel/domainname", "read-only file system"),
    ("sysrq", "echo h > /proc/sysrq-trigger", "read-only file system"),
    ("mknod host disk", "mknod /tmp/sda b 8 0 && cat /tmp/sda > /dev/null", "operation not permitted"),
    ("write /sys", "echo x > /sys/kernel/uevent_helper", "read-only file system"),
    ("hostname change", "hostname other", "operation not permitted"),
])
def test_hardening_refuses(agent: AgentProcess, what: str, script: str, error: str) -> None:
    if what == "sysrq" and not Path("/proc/sysrq-trigger").exists():
        pytest.skip("this kernel has no /proc/sysrq-trigger")
    result = agent.run("run", "--rm", IMAGE, "sh", "-c", script, check=False)
    assert result.returncode != 0, f"{what} succeeded inside a container"
    assert error in result.stderr.lower(), result.stderr


def test_raw_sockets_refused_on_host_network(agent: AgentProcess) -> None:
    result = agent.run("run", "--rm", "--network", "host", IMAGE, "ping", "-c", "1", "127.0.0.1",
                       check=False)
    assert result.returncode != 0 and "permission denied" in result.stderr.lower(), result.stderr


def test_masked_and_minimal_dev(agent: AgentProcess) -> None:
    assert run_out(agent, IMAGE, "sh", "-c", "cat /proc/kcore | wc -c").strip() == "0"
    devs = set(run_out(agent, IMAGE, "ls", "/dev").split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx"} <= devs
    assert not devs & {"sda", "vda", "mem", "kmsg", "port"}
    status = run_out(agent, IMAGE, "cat", "/proc/self/status")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert int(fields["CapEff"], 16) == 0xA80425FB  # Docker's default capability set
    assert int(fields["CapBnd"], 16) == 0xA80425FB


# -- filesystem ----------------------------------------------------------------------------------

def test_writes_are_copy_on_write_and_private(agent: AgentProcess) -> None:
    agent.run("run", "--name", "writer", IMAGE, "sh", "-c", "echo mine > /etc/passwd; echo new > /new")
    info = inspect(agent, "writer")
    image_layer = Path(info["layers"][-1])
    assert "mine" not in (image_layer / "etc/passwd").read_text()
    assert (Path(info["upper_dir"]) / "new").read_text() == "new\n"
    other = run_out(agent, IMAGE, "sh", "-c", "cat /etc/passwd; ls /new 2>&1 || true")
    assert "mine" not in other and "root:" in other and "No such file" in other
    agent.run("rm", "writer")


def test_read_only_root(agent: AgentProcess) -> None:
    result = agent.run("run", "--rm", "--read-only", IMAGE, "touch", "/x", check=False)
    assert result.returncode != 0 and "Read-only file system" in result.stderr


def test_flags_for_user_workdir_env_hostname(agent: AgentProcess) -> None:
    out = run_out(agent, "-u", "1000:1000", "-w", "/tmp", "-e", "GREETING=hi", "--hostname", "box",
                  IMAGE, "sh", "-c", 'echo "$(id -u):$(id -g) $(pwd) $GREETING $(hostname)"')
    assert out.strip() == "1000:1000 /tmp hi box"


def test_init_layer_identity_files(agent: AgentProcess) -> None:
    out = run_out(agent, "--hostname", "idfiles", IMAGE, "sh", "-c",
                  "cat /etc/hostname; grep idfiles /etc/hosts; test -f /etc/resolv.conf && echo ok")
    assert out.split("\n")[0] == "idfiles" and out.strip().endswith("ok")


# -- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["run", "--rm", "no/such:image", "true"], "no such image"),
    (["run", "--rm", "--memory", "12Q", IMAGE, "true"], "invalid memory limit"),
    (["inspect", "no-such-container"], "no such container"),
    (["stop", "no-such-container"], "no such container"),
    (["logs", "no-such-container"], "no such container"),
    (["image", "rm", "no/such:image"], "no such image"),
])
def test_errors_are_one_clear_line(agent: AgentProcess, args: list[str], message: str) -> None:
    result = agent.run(*args, check=False)
    assert result.returncode != 0
    assert message in result.stderr.lower(), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_command_is_127_and_leaves_nothing(agent: AgentProcess) -> None:
    before = set(agent.run("ps", "-aq").stdout.split())
    result = agent.run("run", IMAGE, "/no/such/binary", check=False)
    assert result.returncode == 127
    assert "no/such/binary" in result.stderr
    assert set(agent.run("ps", "-aq").stdout.split()) == before


def test_image_rm_refused_while_in_use(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "user", IMAGE, "sleep", "300")
    result = agent.run("image", "rm", IMAGE, check=False)
    assert result.returncode != 0 and "in use" in result.stderr
    agent.run("rm", "-f", "user")


def test_name_conflict(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "dup", IMAGE, "sleep", "300")
    result = agent.run("run", "-d", "--name", "dup", IMAGE, "sleep", "300", check=False)
    assert result.returncode != 0 and "already in use" in result.stderr
    agent.run("rm", "-f", "dup")


# -- cleanliness ---------------------------------------------------------------------------------

def test_nothing_left_after_success_failure_and_rm(agent: AgentProcess) -> None:
    def counts() -> tuple[int, int, int]:
        return (len(shoal_cgroup_dirs(agent.cgroup_parent)),
                len(list((agent.root / "containers").iterdir())),
                len(overlay_mounts_under(agent.root)))

    before = counts()
    agent.run("run", "--rm", IMAGE, "true")
    agent.run("run", "--rm", IMAGE, "sh", "-c", "exit 1", check=False)
    agent.run("run", "--rm", IMAGE, "/no/such", check=False)
    agent.run("run", "--rm", "--memory", "12Q", IMAGE, "true", check=False)
    cid = agent.run("run", "-d", IMAGE, "sleep", "300").stdout.strip()
    pid = inspect(agent, cid)["pid"]
    agent.run("rm", "-f", cid)
    assert not Path(f"/proc/{pid}").exists()
    assert counts() == before
