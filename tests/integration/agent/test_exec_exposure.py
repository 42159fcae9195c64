"""What a hostile container's root can take from ``shoal exec`` and exec health probes (issue 12, finding 2).

The agent runs with a secret in its environment (as a real one runs with proxies, tokens and CA paths).
Its container ``hunter`` runs, as root with Docker's default capabilities, a shell that watches for
every process that appears in its pid namespace. The exec helper's child is the one process that shows
up there while it is still the agent's Python (comm ``python*``), between its ``fork`` and its
``execve``. The hunter stops each such process with SIGSTOP, tries everything ``/proc`` offers about it
(``environ``, ``exe``, ``cwd``, ``root``, ``maps``, ``mem``, every ``fd/N`` and ``fdinfo/N``), and lets it
run again with SIGCONT, over and over until it has exec'd: stepping it through its whole path, so the
hunt lands in every window the helper leaves open, the short one between dropping to the container's
capabilities and ``execve`` included. Whatever opens is printed (``LEAK`` lines, with the environment
variables that are not the hunter's own and the targets of the links) to the container's log.

The test runs ``shoal exec`` a bounded number of times while an exec health probe runs every 100 ms,
then asserts that the hunter saw helpers before their ``execve`` (so the hunt was real) and that nothing
opened. Before the fix it failed: the helper carried the agent's whole environment and stayed dumpable,
so ``environ``, ``exe`` (the host's Python binary), ``maps`` and ``mem`` opened and the secret was read.

It also checks, from the host, that neither the supervisor's processes (the parent of every container
init before its ``execve``) nor an exec helper carry the agent's environment at all.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent.conftest import AgentProcess, private_agent, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration, pytest.mark.timeout(300)]

IMAGE = "test/busybox:v1"
SECRET_NAME = "SHOAL_TEST_SECRET"
SECRET = secrets.token_hex(16)
EXEC_ROUNDS = 20

# The hunter (busybox ash, pid 1 of its container): polls every process that is still Python with
# builtins only (a few microseconds a try); the first time anything opens it stops the process, prints
# what a thief would take (the environment variables that are not its own, link targets, mapped files),
# and lets it go. Each helper is polled at most 20000 times: a bound, never reached in practice.
HUNT = r"""
own=/tmp/own.env
tr '\0' '\n' < /proc/1/environ > $own
opens() {
  for f in environ maps mem; do { true < /proc/$1/$f; } 2>/dev/null && { what=$f; return 0; }; done
  for f in exe cwd root; do [ -e /proc/$1/$f ] && { what=$f; return 0; }; done
  for f in /proc/$1/fd/*; do [ -e "$f" ] && { what=${f#/proc/$1/}; return 0; }; done
  for f in /proc/$1/fdinfo/*; do { true < "$f"; } 2>/dev/null && { what=${f#/proc/$1/}; return 0; }; done
  return 1
}
dump() {
  echo "OPENED $1 $2 $3"
  tr '\0' '\n' < /proc/$1/environ 2>/dev/null | grep -vxF -f $own | sed "s|^|ENV $1 |"
  for f in exe cwd root /proc/$1/fd/*; do
    f=${f#/proc/$1/}
    echo "LINK $1 $f $(readlink /proc/$1/$f 2>/dev/null)"
  done
  grep -o ' /.*' /proc/$1/maps 2>/dev/null | sort -u | sed "s|^|MAP $1|"
}
hunt() {
  n=0
  while [ $n -lt 20000 ] && read -r comm < /proc/$1/comm 2>/dev/null; do
    case $comm in python*) ;; *) return ;; esac
    [ $n = 0 ] && echo "SEEN $1 $comm"
    n=$((n + 1))
    if opens $1; then
      kill -STOP $1 2>/dev/null
      dump $1 $comm $what
      kill -CONT $1 2>/dev/null
      return
    fi
  done
}
echo hunting
while :; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = 1 ] || hunt $p
  done
done
"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, busybox_image: Path) -> Iterator[AgentProcess]:
    """A private agent whose environment holds a secret (its supervisor is spawned by it, later)."""
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(SECRET_NAME, SECRET)
        with private_agent(tmp_path_factory.mktemp("exposure-agent"), busybox_image) as proc:
            yield proc


# What a container's own processes legitimately show: its one binary, its root, /dev/null and pipes.
CONTAINER_LINKS = re.compile(r"(/bin/busybox|/|/dev/null|(pipe|socket|anon_inode):.*)?")

# The container's $PATH: the helper looks the command up in it after dropping to the container's
# capabilities and before execve, so a long one holds that window open for a millisecond or so, long
# enough for the hunter to find it on every exec instead of now and then (the probe alone found it
# within 25 s in issue 12).
LONG_PATH = ":".join(f"/nonexistent/{i}" for i in range(400)) + ":/bin"


def leaks(log: str) -> list[str]:
    """What the hunter took that is not the container's own."""
    def foreign(line: str) -> bool:
        kind, _, rest = line.partition(" ")
        if kind == "LINK":  # LINK pid what target
            return not CONTAINER_LINKS.fullmatch(rest.split(" ", 2)[2])
        if kind == "MAP":  # MAP pid path
            return rest.split(" ", 1)[1] != "/bin/busybox"
        return kind == "ENV"  # ENV pid NAME=VALUE, a variable the container does not have

    return [line for line in log.splitlines() if foreign(line)]


def helpers_seen(log: str) -> set[str]:
    return {line.split()[1] for line in log.splitlines() if line.startswith("SEEN ")}


def environ_of(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")


def descendants(ancestor: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    found, frontier = [], [ancestor]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def test_exec_and_exec_probes_expose_nothing_to_the_containers_root(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "hunter", "-e", f"PATH={LONG_PATH}", "--health-cmd", "true",
              "--health-interval", "100ms", "--health-timeout", "60s", IMAGE, "sh", "-c", HUNT)
    wait_for(lambda: "hunting" in agent.run("logs", "hunter").stdout)
    for _ in range(EXEC_ROUNDS):
        assert agent.run("exec", "hunter", "true", timeout=60).returncode == 0
        if leaks(agent.run("logs", "hunter").stdout):
            break  # already failed: say so now rather than after every round
    log = agent.run("logs", "hunter").stdout
    found = leaks(log)
    telling = [line for line in found if SECRET in line or not line.startswith("ENV ")]
    assert not found, (f"the container's root read the exec helper before its execve ({len(found)} lines), "
                       "among them:\n" + "\n".join(telling[:20]))
    assert SECRET not in log
    # The hunt was real: it found helpers (ours and the probe's) while they were still Python.
    assert len(helpers_seen(log)) >= EXEC_ROUNDS // 2, log[-2000:]
    agent.run("rm", "-f", "hunter")


def test_the_supervisor_and_the_exec_helper_never_carry_the_agents_environment(agent: AgentProcess) -> None:
    agent.run("run", "-d", "--name", "idle", IMAGE, "sleep", "1000")
    keeper = agent.supervisor_pid()
    assert keeper is not None
    supervisor = [keeper, *descendants(keeper)]
    # The keeper, its worker, and every container init (its environment until execve was the worker's).
    assert len(supervisor) >= 3
    for pid in supervisor:
        assert SECRET not in environ_of(pid), pid
    # An exec helper, caught while its command runs: the helper's own environment, seen from the host.
    proc = agent.popen("exec", "idle", "sh", "-c", "echo up; exec sleep 1000")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "up\n"
        agent_pid = agent.proc.pid if agent.proc else 0
        helpers = [p for p in descendants(agent_pid)
                   if "agent.runtime.nsenter" in Path(f"/proc/{p}/cmdline").read_text()]
        assert helpers, descendants(agent_pid)
        for pid in helpers:
            env = environ_of(pid)
            assert SECRET not in env
            assert re.fullmatch(r"(PYTHONPATH=[^\0]*\0)?", env), env
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    agent.run("rm", "-f", "idle")
