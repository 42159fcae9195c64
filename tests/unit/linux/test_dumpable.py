"""``process.set_undumpable``: what the exec helper and the launcher rely on — it holds in a child forked
afterwards, and the next ``execve`` gives the program that runs a dumpable process again."""

from __future__ import annotations

import os
import sys

from agent.linux import process

REPORT = "from agent.linux import process; print(int(process.is_dumpable()), end='')"


def test_undumpable_survives_fork_and_ends_at_execve() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_end)
            before = process.is_dumpable()
            process.set_undumpable()
            grandchild = os.fork()
            if grandchild == 0:
                os.write(write_end, f"{int(before)}{int(process.is_dumpable())}".encode())
                os.dup2(write_end, 1)
                os.execv(sys.executable, [sys.executable, "-c", REPORT])
            os.waitpid(grandchild, 0)
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while data := os.read(read_end, 64):
        chunks.append(data)
    os.close(read_end)
    os.waitpid(pid, 0)
    # dumpable before; not dumpable in the forked grandchild; dumpable again after its execve
    assert b"".join(chunks) == b"101"
