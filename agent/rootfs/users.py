"""Resolve ``--user`` / the image's ``User`` to numeric ids using the image's own passwd and group files.

Like Docker: ``uid``, ``uid:gid``, ``name``, ``name:group``; a name must exist in the image's
``/etc/passwd``; a numeric uid need not. Supplementary groups come from ``/etc/group``. Both files are
read through ``inroot``, so a symlink in the image resolves inside the image, never on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.errors import InvalidArgument
from agent.rootfs import inroot


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str


def _read_table(layers: list[Path], relpath: str) -> list[list[str]]:
    data = inroot.read_file(layers, relpath)
    if data is None:
        return []
    rows = []
    for line in data.decode(errors="replace").splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def resolve_user(spec: str, *, layers: list[Path]) -> Credentials:
    user, _, group = (spec or "0").partition(":")
    passwd = _read_table(layers, "etc/passwd")
    groups = _read_table(layers, "etc/group")
    uid: int | None = None
    gid: int | None = None
    home = "/"
    name: str | None = None
    for row in passwd:
        if len(row) < 6:
            continue
        if row[0] == user or (user.isdigit() and row[2] == user):
            uid, gid, home, name = int(row[2]), int(row[3]), row[5] or "/", row[0]
            break
    if uid is None:
        if not user.isdigit():
            raise InvalidArgument(
                f"unable to find user {user}: no matching entries in the image's passwd file"
            )
        uid, gid = int(user), 0
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            match = [r for r in groups if len(r) >= 3 and r[0] == group]
            if not match:
                raise InvalidArgument(
                    f"unable to find group {group}: no matching entries in the image's group file"
                )
            gid = int(match[0][2])
    extra: list[int] = []
    if name is not None and not group:
        for row in groups:
            if len(row) >= 4 and name in row[3].split(",") and int(row[2]) != gid:
                extra.append(int(row[2]))
    assert gid is not None
    return Credentials(uid=uid, gid=gid, additional_gids=tuple(extra), home=home)
