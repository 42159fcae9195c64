"""Registry credentials: the agent's ``auth.json``, read in the layout Docker users know.

The file is ``{"auths": {"host[:port]": {...}}}`` where an entry holds ``auth`` (base64 of
``user:password``), or ``username`` and ``password``, or ``identitytoken`` (an OAuth2 refresh token for the
bearer-token flow). It is looked up by the registry exactly as it appears in the image reference. Because
it holds secrets, a file readable by group or others is refused rather than used, and ``Credentials``
never shows its secret in ``repr`` — error messages and logs may name the file and the registry, never
what is in it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import InvalidArgument


@dataclass(frozen=True)
class Credentials:
    """What to present to one registry. ``password`` and ``identity_token`` are hidden from ``repr``."""

    registry: str
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    @property
    def has_basic(self) -> bool:
        return bool(self.username) and bool(self.password)


def _registry_keys(registry: str) -> tuple[str, ...]:
    # Docker writes Docker Hub entries with a scheme and path; accept those spellings for any registry.
    return (registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/",
            f"https://{registry}/v2/")


def load_credentials(auth_file: Path, registry: str) -> Credentials | None:
    """The credentials for ``registry`` ("host[:port]"), or None if there is no file or no entry.

    Raises InvalidArgument if the file is readable by group/others or is malformed; the message names the
    file and the registry and never quotes the content.
    """
    try:
        fd = os.open(auth_file, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidArgument(f"cannot read registry credentials {auth_file}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise InvalidArgument(f"registry credentials {auth_file} is not a regular file")
        if mode & 0o077:
            raise InvalidArgument(
                f"registry credentials {auth_file} is readable by other users (mode {stat.S_IMODE(mode):o});"
                f" run: chmod 600 {auth_file}"
            )
        raw = f.read()
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"registry credentials {auth_file} is not valid JSON") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise InvalidArgument(f"registry credentials {auth_file} has no \"auths\" object")
    entry = next((auths[k] for k in _registry_keys(registry) if k in auths), None)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise InvalidArgument(f"registry credentials {auth_file}: the entry for {registry} is not an object")
    return _parse_entry(entry, registry=registry, auth_file=auth_file)


def _parse_entry(entry: dict[str, object], *, registry: str, auth_file: Path) -> Credentials:
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        username = entry.get("username")
        return Credentials(registry, username=username if isinstance(username, str) else "",
                           identity_token=token)
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        user, colon, password = decoded.partition(":")
        if not colon or not user:
            raise InvalidArgument(
                f"registry credentials {auth_file}: the \"auth\" of {registry} is not base64 of user:password"
            )
        return Credentials(registry, username=user, password=password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(registry, username=name, password=secret)
    raise InvalidArgument(
        f"registry credentials {auth_file}: the entry for {registry} needs \"auth\", \"username\" and"
        " \"password\", or \"identitytoken\""
    )
