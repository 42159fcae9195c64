"""The agent's state root is private to the agent's user (root), whatever existed before it started.

Everything under ``--root`` is either a secret (container output in logs and events, registry
credentials, the API's sockets) or dangerous to share: image layers keep their device nodes (a layer may
carry a node for the host's own disk), setuid binaries and the content of every image. So the root is
0700 and owned by the agent's user — ``make_private`` fixes the mode of a directory that already existed
(a root pre-created 0755 by an installer, or an older agent's), removes group and other bits from what an
older agent left at its top level, and refuses a root another user owns, since that user could already
have planted anything in it. Files the agent creates there are 0600 (``open_private``) and directories
0700, so their own modes keep them private even where the root's mode is not the last word (a bind mount
of a subdirectory, an operator who loosens the root).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.errors import FailedPrecondition

ROOT_MODE = 0o700
_SHARED_BITS = 0o077


def make_private(root: Path) -> None:
    """Create ``root`` 0700 or make an existing one so; raises ``FailedPrecondition`` if another user
    owns it or it is not a directory."""
    root.mkdir(mode=ROOT_MODE, parents=True, exist_ok=True)
    st = root.stat()  # a symlinked --root is the operator's choice: its target is what must be private
    if not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(f"the agent's root {root} is not a directory")
    if st.st_uid != os.geteuid():
        raise FailedPrecondition(
            f"the agent's root {root} belongs to uid {st.st_uid}, not to the agent (uid {os.geteuid()}); "
            "another user could have planted files in it: remove it, or chown it after checking it"
        )
    if stat.S_IMODE(st.st_mode) != ROOT_MODE:
        os.chmod(root, ROOT_MODE)
    with os.scandir(root) as entries:
        for entry in entries:
            # Not recursive: each concept below keeps its own modes (container dirs are already 0700,
            # layer contents must keep the image's). Symlinks are skipped: chmod would follow them.
            if entry.is_symlink():
                continue
            mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
            if mode & _SHARED_BITS:
                os.chmod(entry.path, mode & ~_SHARED_BITS)


def open_private(path: str, flags: int) -> int:
    """An ``opener`` for ``open()``: creates files 0600, whatever the umask, and never follows a
    symlink planted at ``path``."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


__all__ = ["ROOT_MODE", "make_private", "open_private"]
