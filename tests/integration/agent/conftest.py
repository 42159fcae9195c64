"""A real shoal-agent on a private root, socket and cgroup parent, driven through the real CLI.

Every test module gets its own agent; the finalizer removes every container, stops the agent and its
supervisor and checks that nothing of Shoal's is left on the host (mounts, cgroups, processes).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures import images as image_fixtures
from tests.fixtures.registry import (  # noqa: F401 - pytest finds fixtures by name in the conftest
    registry,
    registry_catalogue,
    registry_factory,
    registry_seed,
)

BIN = Path(sys.executable).parent
CGROUP_ROOT = Path("/sys/fs/cgroup")


def shoal_bin(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


@dataclass
class AgentProcess:
    root: Path
    socket: Path
    cgroup_parent: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)  # e.g. nsenter --net=… to run inside a test host

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, shoal_bin("shoal-agent"), "serve", "--root", str(self.root),
             "--listen", self.address, "--cgroup-parent", self.cgroup_parent, "--log-level", "debug",
             *self.extra_args],
            stdout=out, stderr=out, start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited early:\n{self.log.read_text()[-3000:]}")
            if self.run("ps", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"agent did not answer within 30s:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def run(self, *args: str, check: bool = True, timeout: float = 60,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [shoal_bin("shoal"), "--agent", self.address, *args], capture_output=True, text=True,
            timeout=timeout, input=input.decode() if input else None,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"shoal {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([shoal_bin("shoal"), "--agent", self.address, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def supervisor_pid(self) -> int | None:
        try:
            pid = int((self.root / "supervisor.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None


def shoal_cgroup_dirs(parent: str) -> list[Path]:
    return sorted(p for p in CGROUP_ROOT.glob(f"*/{parent}/*") if p.is_dir())


def overlay_mounts_under(root: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(root) in line]


def full_busybox_layer() -> bytes:
    """Every applet this busybox has (mount, mknod, ping, ...), so tests can probe the hardening."""
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    f = image_fixtures
    entries = [f.directory(d) for d in ("bin", "etc", "proc", "sys", "dev", "root", "mnt")]
    entries.append(f.directory("tmp", 0o1777))
    entries.append(f.file("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755))
    entries += [f.symlink(f"bin/{a}", "/bin/busybox") for a in applets if a != "busybox"]
    entries.append(f.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                                        b"nobody:x:65534:65534::/:/bin/false\n"))
    entries.append(f.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n"))
    return f.layer_tar(entries)


@pytest.fixture(scope="module")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = tmp_path_factory.mktemp("img") / "busybox"
    return image_fixtures.build_oci_layout(layout, [full_busybox_layer()], ref_name="v1",
                                           config={"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})


@contextlib.contextmanager
def private_agent(base: Path, busybox_image: Path, *, extra_args: list[str] | None = None,
                  ) -> Iterator[AgentProcess]:
    """An agent of the caller's own under ``base`` with the test image imported; on exit every container
    is removed, the agent and its supervisor stopped, and its cgroup parent checked gone."""
    proc = AgentProcess(root=base / "root", socket=base / "agent.sock",
                        cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=base / "agent.log",
                        extra_args=list(extra_args or []))
    proc.start()
    proc.run("image", "import", str(busybox_image), "--name", "test/busybox:v1")
    try:
        yield proc
    finally:
        if proc.proc is None:
            proc.start()
        ids = proc.run("ps", "-aq", "--no-trunc", check=False).stdout.split()
        if ids:
            proc.run("rm", "-f", *ids, check=False)
        sup = proc.supervisor_pid()
        proc.stop()
        if sup is not None:
            _wait_gone(sup)
        leftover = list(CGROUP_ROOT.glob(f"*/{proc.cgroup_parent}"))
        for d in leftover:
            d.rmdir()
        shutil.rmtree(base, ignore_errors=True)
        assert not leftover, f"the agent left its cgroup parent behind: {leftover}"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, busybox_image: Path) -> Iterator[AgentProcess]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    with private_agent(tmp_path_factory.mktemp("agent"), busybox_image) as proc:
        yield proc


def _wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _gone(pid):
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"supervisor {pid} did not exit after the agent stopped with no containers")


def _gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie (reaped here if it is ours: a test that made this process a
    subreaper inherits the supervisor's keeper when the agent or the old keeper dies)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open or before the read
        return True


def wait_for(predicate, timeout: float = 20, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Bounded poll for a condition the system exposes no event for."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within timeout")
        time.sleep(interval)


@pytest.fixture
def tiny_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """An agent whose root is a 1 MiB tmpfs: any real image fills it."""
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "shoal-test", str(root)], check=True)
    proc = AgentProcess(root=root, socket=tmp_path / "tiny.sock",
                        cgroup_parent=f"shoal-test-{secrets.token_hex(4)}", log=tmp_path / "tiny.log")
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
        subprocess.run(["umount", "-l", str(root)], check=False)
