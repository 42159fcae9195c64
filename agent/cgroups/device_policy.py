"""A container's device rules reduced to the policy the kernel enforces: a default and its exceptions.

Device rules (``agent.cgroups.manager.DeviceRule``) are written in order, the way cgroup v1's
``devices.allow``/``devices.deny`` files take them, and cgroup v1 does not keep the list: it keeps a
default (allow all, or deny all) and a set of exceptions to it. An ``a`` rule resets the group to
allow-all (``allow``) or deny-all (``deny``) and drops every exception; any other rule adds an exception
when it goes against the default and removes (subtracts access from) an identical exception when it
goes with it. ``reduce_rules`` replays that, so that cgroup v2, where a BPF program has to encode the
result (``agent.cgroups.device_bpf``), enforces exactly what v1 would. It follows runc's emulator
(opencontainers/cgroups ``devices/devices_emulator.go``) in two choices:

* the replay starts from deny-all (a v1 group starts from its parent's list), so a rule list that does
  not open with an ``a`` rule never grants more than it names;
* removing access that a *wildcard* exception grants (``allow c *:* rwm`` then ``deny c 1:3 w``) is
  refused: v1 silently ignores it (it only removes identical exceptions), which would leave the access
  granted while the caller believes it denied.

Exceptions come out sorted by major, minor, kind (a wildcard, ``None``, first), as runc writes them, so
the same rules always give the same program.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.cgroups.manager import DeviceRule
from agent.errors import InvalidArgument

ACCESS_ORDER = "rwm"


@dataclass(frozen=True)
class DeviceMatch:
    """Which devices an exception covers: a kind (``b``/``c``) and a major/minor (``None``: any)."""

    kind: str
    major: int | None
    minor: int | None

    def sort_key(self) -> tuple[int, int, str]:
        return (-1 if self.major is None else self.major, -1 if self.minor is None else self.minor, self.kind)

    def render(self) -> str:
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {major}:{minor}"


@dataclass(frozen=True)
class DevicePolicy:
    """``default_allow`` for every device access no exception covers; each exception reverses it for
    its devices and access (a subset of ``rwm``, in that order)."""

    default_allow: bool
    exceptions: tuple[tuple[DeviceMatch, str], ...]


def _canonical(access: set[str]) -> str:
    return "".join(c for c in ACCESS_ORDER if c in access)


def _remove(exceptions: dict[DeviceMatch, set[str]], match: DeviceMatch, access: set[str]) -> None:
    # v1 removes only an identical exception; refuse to pretend a wildcard one lost some access.
    for wider in (
        DeviceMatch(match.kind, None, match.minor),
        DeviceMatch(match.kind, match.major, None),
        DeviceMatch(match.kind, None, None),
    ):
        if wider != match and exceptions.get(wider, set()) & access:
            raise InvalidArgument(
                f"device rule '{match.render()} {_canonical(access)}' cannot take access away from the wider "
                f"rule '{wider.render()} {_canonical(exceptions[wider])}' (cgroup v1 would ignore it): "
                "list the devices to keep instead"
            )
    left = exceptions.get(match, set()) - access
    if left:
        exceptions[match] = left
    else:
        exceptions.pop(match, None)


def reduce_rules(rules: Sequence[DeviceRule]) -> DevicePolicy:
    """Replay ``rules`` in order, from deny-all, into the policy cgroup v1 would hold.
    ``InvalidArgument`` for a rule that would punch a hole in a wildcard exception (see the module)."""
    default_allow = False
    exceptions: dict[DeviceMatch, set[str]] = {}
    for rule in rules:
        if rule.kind == "a":
            default_allow, exceptions = rule.allow, {}
            continue
        match = DeviceMatch(rule.kind, rule.major, rule.minor)
        if rule.allow != default_allow:
            exceptions.setdefault(match, set()).update(rule.access)
        else:
            _remove(exceptions, match, set(rule.access))
    ordered = sorted(exceptions.items(), key=lambda item: item[0].sort_key())
    return DevicePolicy(
        default_allow=default_allow,
        exceptions=tuple((match, _canonical(access)) for match, access in ordered),
    )
