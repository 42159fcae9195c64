"""The agent's create-time rules for a container template, checked at ``apply``.

An agent refuses a spec it could never run (``agent/runtime/validation.py``): a relative working
directory, a hostname ``sethostname`` would refuse, a user the API cannot carry, a NUL in an argument or
variable. A service whose template breaks one would be accepted by the scheduler and then fail on every
host, every time. These are the same rules, restated here because the scheduler never imports the agent;
``tests/unit/scheduler/test_template_rules.py`` runs both sets over one table of values so they cannot
drift apart. Each function returns the problem in words, or None.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PATH_MAX = 4096
MAX_ARG_BYTES = 128 << 10  # the kernel's MAX_ARG_STRLEN, counting the NUL
MAX_ID = (1 << 31) - 1     # uid and gid are int32 in the agent's API
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62})$")
_USER_PART_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.$-]{0,63}$")


def _shown(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def working_dir_problem(path: str) -> str | None:
    if "\0" in path:
        return f"{_shown(path)} contains a NUL character"
    if not path.startswith("/"):
        return f"{_shown(path)} must be an absolute path (start with '/')"
    if len(path.encode()) >= PATH_MAX:
        return f"{_shown(path, 40)} is longer than PATH_MAX ({PATH_MAX} bytes)"
    return None


def hostname_problem(hostname: str) -> str | None:
    if _HOSTNAME_RE.fullmatch(hostname):
        return None
    return (f"invalid hostname {_shown(hostname)}: use at most 64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit")


def user_problem(user: str) -> str | None:
    parts = user.split(":")
    if len(parts) > 2 or not all(_USER_PART_RE.fullmatch(p) for p in parts):
        return (f"invalid user {_shown(user)}: use uid[:gid] or name[:group] (letters, digits, '_', '.', "
                "'-', at most 64 each)")
    for part, kind in zip(parts, ("uid", "gid"), strict=False):
        if part.isdigit() and int(part) > MAX_ID:
            return f"{kind} {part} is out of range: Shoal supports 0-{MAX_ID}"
    return None


def strings_problem(values: Iterable[str]) -> str | None:
    for value in values:
        if "\0" in value:
            return f"{_shown(value)} contains a NUL character, which no argument or variable can hold"
        if len(value.encode()) + 1 > MAX_ARG_BYTES:
            return f"{_shown(value, 40)} is over the kernel's {MAX_ARG_BYTES} bytes per argument or variable"
    return None


__all__ = ["hostname_problem", "strings_problem", "user_problem", "working_dir_problem"]
