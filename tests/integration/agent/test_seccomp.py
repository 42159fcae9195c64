"""Through the agent: containers run under Docker's default seccomp profile and a session keyring of their
own (issue 12, finding 3); ``--security-opt seccomp=unconfined`` and ``seccomp=FILE`` work like Docker's.

What a container may do is measured from *inside* it, by a static probe (``tests/fixtures/
syscall_probe.c``) in the test image, for the container's init, ``shoal exec`` and an exec health probe.
"""

from __future__ import annotations

import ctypes
import errno
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import images as image_fixtures
from tests.fixtures import syscall_probe
from tests.integration.agent.conftest import AgentProcess, full_busybox_layer, private_agent, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "test/busybox:v1"
# The finding's calls: each must be refused with EPERM under the default profile.
DENIED = ("keyctl", "add_key", "unshare_user", "userns_chain", "mount", "io_uring", "perf_event",
          "personality_rie", "af_vsock")


@pytest.fixture(scope="module")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest's busybox image plus ``/bin/probe`` (overrides the conftest fixture for this module)."""
    work = tmp_path_factory.mktemp("probe")
    binary = syscall_probe.build(work)
    if binary is None:
        pytest.skip("gcc with a static libc is needed to build the system-call probe")
    layers = [full_busybox_layer(), syscall_probe.layer(binary)]
    return image_fixtures.build_oci_layout(work / "busybox", layers, ref_name="v1",
                                           config={"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})


def probe(agent: AgentProcess, *probes: str, options: tuple[str, ...] = ()) -> dict[str, str]:
    result = agent.run("run", "--rm", *options, IMAGE, "/bin/probe", *probes)
    return syscall_probe.parse(result.stdout)


def seccomp_status(text: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith("Seccomp:"))


def test_the_default_profile_refuses_the_findings_calls(agent: AgentProcess) -> None:
    results = probe(agent, *DENIED, "personality_query", "clone3", "af_inet")
    assert {p: results[p] for p in DENIED} == {p: "EPERM" for p in DENIED}
    # Argument filters, not blanket denials: the personality query and ordinary sockets are allowed,
    # clone3 answers ENOSYS so libc falls back to clone (Docker's profile, without CAP_SYS_ADMIN).
    assert results["personality_query"] == "ok"
    assert results["af_inet"] == "ok"
    assert results["clone3"] == "ENOSYS"
    status = agent.run("run", "--rm", IMAGE, "cat", "/proc/self/status").stdout
    assert seccomp_status(status) == "2"


def test_a_normal_workload_runs_under_the_default_profile(agent: AgentProcess) -> None:
    script = (
        "mkdir -p /tmp/www && echo hello-from-httpd > /tmp/www/index.html && "
        "httpd -f -p 127.0.0.1:8080 -h /tmp/www & "
        "for i in $(seq 1 100); do timeout 2 wget -q -O- http://127.0.0.1:8080/ && break; sleep 0.05; done; "
        "sleep 0.01 && ls / >/dev/null && ps >/dev/null && id -u && kill %1"
    )
    result = agent.run("run", "--rm", IMAGE, "sh", "-c", script)
    assert result.stdout.splitlines() == ["hello-from-httpd", "0"]


def test_unconfined_has_no_filter(agent: AgentProcess) -> None:
    options = ("--security-opt", "seccomp=unconfined")
    status = agent.run("run", "--rm", *options, IMAGE, "cat", "/proc/self/status").stdout
    assert seccomp_status(status) == "0"
    results = probe(agent, "unshare_user", "personality_rie", options=options)
    assert results == {"unshare_user": "ok", "personality_rie": "ok"}


def test_a_custom_profile_denies_what_it_lists(agent: AgentProcess, tmp_path: Path) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }))
    options = ("--security-opt", f"seccomp={profile}")
    result = agent.run("run", "--rm", *options, IMAGE, "sh", "-c",
                       "touch /tmp/file && echo touched; mkdir /tmp/dir || echo refused", check=False)
    assert result.stdout.splitlines() == ["touched", "refused"]
    assert "Permission denied" in result.stderr  # the profile's errnoRet (EACCES), not EPERM
    # Everything else is allowed by this profile (its default action), unlike Docker's default.
    assert probe(agent, "unshare_user", options=options) == {"unshare_user": "ok"}
    name = "custom-profile"
    agent.run("create", "--name", name, *options, IMAGE, "true")
    try:
        [record] = json.loads(agent.run("inspect", name).stdout)
        assert record["seccomp"] == "custom"
        assert json.loads(record["spec"]["seccomp"]["profile_json"]) == json.loads(profile.read_text())
    finally:
        agent.run("rm", "-f", name)


@pytest.fixture
def sleeper(agent: AgentProcess) -> Iterator[str]:
    name = "seccomp-exec"
    agent.run("run", "-d", "--name", name, "--health-cmd",
              "grep Seccomp: /proc/self/status > /tmp/health-status", "--health-interval", "0.2s",
              IMAGE, "sleep", "600")
    try:
        yield name
    finally:
        agent.run("rm", "-f", name)


def test_exec_and_exec_probes_get_the_containers_filter(agent: AgentProcess, sleeper: str) -> None:
    assert seccomp_status(agent.run("exec", sleeper, "cat", "/proc/self/status").stdout) == "2"
    results = syscall_probe.parse(agent.run("exec", sleeper, "/bin/probe", *DENIED).stdout)
    assert results == {p: "EPERM" for p in DENIED}
    # The health probe's command wrote what it ran under.
    health = wait_for(lambda: agent.run("exec", sleeper, "cat", "/tmp/health-status", check=False).stdout)
    assert seccomp_status(health) == "2"


def test_exec_into_an_unconfined_container_is_unconfined(agent: AgentProcess) -> None:
    name = "unconfined-exec"
    agent.run("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", IMAGE, "sleep", "600")
    try:
        assert seccomp_status(agent.run("exec", name, "cat", "/proc/self/status").stdout) == "0"
    finally:
        agent.run("rm", "-f", name)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_ADD_KEY, _SYS_KEYCTL = 248, 250  # x86_64
_KEYCTL_GET_KEYRING_ID, _KEYCTL_SEARCH, _KEYCTL_INVALIDATE = 0, 10, 21
_KEY_SPEC_SESSION_KEYRING = -3


@pytest.fixture
def host_key() -> Iterator[int]:
    """A key host root holds in its session keyring (this process's, created by the add_key if it had
    none; agents started from now on inherit it)."""
    serial = int(_libc.syscall(_SYS_ADD_KEY, b"user", b"shoal-host-secret", b"s3cret", 6,
                               ctypes.c_int(_KEY_SPEC_SESSION_KEYRING)))
    assert serial > 0, f"add_key: errno {ctypes.get_errno()}"
    try:
        yield serial
    finally:
        _libc.syscall(_SYS_KEYCTL, _KEYCTL_INVALIDATE, ctypes.c_int(serial))


def test_containers_do_not_share_the_hosts_session_keyring(host_key: int, busybox_image: Path,
                                                          tmp_path: Path) -> None:
    host_ring = int(_libc.syscall(_SYS_KEYCTL, _KEYCTL_GET_KEYRING_ID,
                                  ctypes.c_int(_KEY_SPEC_SESSION_KEYRING), 0))
    assert host_ring > 0
    # An agent started now inherits the session keyring that holds host_key, as a real agent inherits
    # host root's.
    with private_agent(tmp_path, busybox_image) as agent:
        # Unconfined, so keyctl itself is allowed: the private keyring is what keeps the host's key out.
        results = probe(agent, "session_keyring", f"keyread={host_key}", "add_key",
                        options=("--security-opt", "seccomp=unconfined"))
        assert results["session_keyring"] not in (str(host_ring), "EPERM")
        assert results["keyread"] == "EACCES"  # it may see that the serial exists (same uid), not read it
        assert results["add_key"] == "ok"  # planted in its own keyring...
        found = _libc.syscall(_SYS_KEYCTL, _KEYCTL_SEARCH, ctypes.c_int(_KEY_SPEC_SESSION_KEYRING), b"user",
                              b"shoal-probe", 0)
        assert found < 0 and ctypes.get_errno() == errno.ENOKEY  # ...not in the host's
        # exec gets a fresh keyring too, not the agent's.
        name = "keyring-exec"
        agent.run("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", IMAGE, "sleep", "600")
        out = syscall_probe.parse(agent.run("exec", name, "/bin/probe", "session_keyring",
                                            f"keyread={host_key}").stdout)
        assert out["session_keyring"] != str(host_ring) and out["keyread"] == "EACCES"


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "seccomp profile is not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"defaultAction": "SCMP_ACT_NOPE", "syscalls": []}', "defaultAction: unknown action 'SCMP_ACT_NOPE'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "syscalls[0].args[0].index"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}',
     "SCMP_ACT_NOTIFY"),
])
def test_a_malformed_profile_is_refused_at_create(agent: AgentProcess, tmp_path: Path, content: str,
                                                 message: str) -> None:
    profile = tmp_path / "bad.json"
    profile.write_text(content)
    result = agent.run("create", "--security-opt", f"seccomp={profile}", IMAGE, "true", check=False)
    assert result.returncode == 125, result
    assert message in result.stderr
    assert agent.run("ps", "-aq").stdout == ""  # nothing was created


def test_profile_size_and_option_errors(agent: AgentProcess, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(" " * (129 << 10) + "{}")
    result = agent.run("create", "--security-opt", f"seccomp={big}", IMAGE, "true", check=False)
    assert result.returncode == 125 and "larger than 128 KiB" in result.stderr
    result = agent.run("create", "--security-opt", "apparmor=unconfined", IMAGE, "true", check=False)
    assert result.returncode == 125 and "seccomp=unconfined and seccomp=FILE" in result.stderr
    result = agent.run("create", "--security-opt", f"seccomp={tmp_path / 'missing.json'}", IMAGE, "true",
                       check=False)
    assert result.returncode == 125 and "cannot read seccomp profile" in result.stderr


def test_inspect_shows_the_choice(agent: AgentProcess) -> None:
    for options, expected in (((), "default"), (("--security-opt", "seccomp=unconfined"), "unconfined")):
        cid = agent.run("create", *options, IMAGE, "true").stdout.strip()
        try:
            [record] = json.loads(agent.run("inspect", cid).stdout)
            assert record["seccomp"] == expected
        finally:
            agent.run("rm", "-f", cid)
