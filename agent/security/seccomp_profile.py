"""Docker's seccomp profile format: reading a profile, and deciding which of its rules apply to a container.

A profile (``docker run --security-opt seccomp=FILE``, and Docker's default, ``seccomp_default.json``)
is JSON: a ``defaultAction`` (with ``defaultErrnoRet``), the architectures (``architectures``, or an
``archMap`` from each native architecture to its sub-architectures), optional ``flags``, and
``syscalls`` rules: ``names`` (or the older ``name``), an ``action`` (with ``errnoRet``), ``args``
conditions, and ``includes``/``excludes`` filters on the container's capabilities, the host's
architecture and its kernel version. ``parse_profile`` checks all of it and refuses what no kernel
filter could mean (``InvalidArgument`` naming the field); ``resolve`` then applies moby's rules
(``profiles/seccomp/seccomp_linux.go``: ``setupSeccomp``) for one container — only the ``archMap``
entry of the native architecture, ``includes`` needing *every* listed capability in the bounding set,
``excludes`` dropping a rule for *any* — and runc's (``libcontainer/seccomp``): a rule whose action is
the default action is dropped, conditions on distinct arguments are ANDed in one rule, conditions
that repeat an argument become one rule each (ORed). Unknown keys are ignored, as Go's JSON decoder
does for Docker. Pure: no I/O, no libseccomp (``seccomp_filter`` compiles the result).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Any

from agent.errors import InvalidArgument, quoted
from agent.limits import MAX_SECCOMP_PROFILE_BYTES as MAX_PROFILE_BYTES

MAX_RULES = 4096
# libseccomp's build time grows faster than linearly with argument conditions (each system call's
# conditions become a decision tree, per architecture), and its Python binding holds the GIL while it
# builds. Measured with libseccomp 2.5.4 on 2 cores: 512 condition-architecture pairs build in 0.1-0.3 s,
# 1,800 in 4 s, 12,500 in over 2 minutes. Docker's default profile has 27.
MAX_CONDITIONS = 512
_MAX_ERRNO = 4095  # the kernel's MAX_ERRNO: a filter's errno is 16 bits, but libc treats more as success
_MAX_TRACE_MSG = 0xFFFF
_U64 = (1 << 64) - 1
_NAME_RE = re.compile(r"^[a-z0-9_]{1,64}$")

# Go's GOARCH names (what ``includes.arches`` / ``excludes.arches`` use) for this machine's
# ``platform.machine()``; moby's ``goToNative`` map.
GOARCH_OF_MACHINE: dict[str, str] = {
    "x86_64": "amd64", "i686": "x86", "i386": "x86", "aarch64": "arm64", "armv7l": "arm",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "loongarch64": "loong64",
    "mips64": "mips64",
}
# moby's ``nativeToSeccomp``: a GOARCH name → the SCMP_ARCH the archMap is keyed by.
_SCMP_ARCH_OF_GOARCH: dict[str, str] = {
    "x86": "SCMP_ARCH_X86", "amd64": "SCMP_ARCH_X86_64", "arm": "SCMP_ARCH_ARM",
    "arm64": "SCMP_ARCH_AARCH64", "loong64": "SCMP_ARCH_LOONGARCH64", "mips64": "SCMP_ARCH_MIPS64",
    "mips64n32": "SCMP_ARCH_MIPS64N32", "mipsel64": "SCMP_ARCH_MIPSEL64",
    "mips3l64n32": "SCMP_ARCH_MIPSEL64N32", "mipsle": "SCMP_ARCH_MIPSEL", "ppc": "SCMP_ARCH_PPC",
    "ppc64": "SCMP_ARCH_PPC64", "ppc64le": "SCMP_ARCH_PPC64LE", "riscv64": "SCMP_ARCH_RISCV64",
    "s390": "SCMP_ARCH_S390", "s390x": "SCMP_ARCH_S390X",
}
ARCHITECTURES = frozenset({
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
})
OPERATORS = frozenset({
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
})
# seccomp(2) SECCOMP_FILTER_FLAG_* that make sense for a container's filter. TSYNC is accepted and
# has no effect: the filter is loaded by a single-threaded process right before execve.
FILTER_FLAGS: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": 0,
    "SECCOMP_FILTER_FLAG_LOG": 1 << 1,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 1 << 2,
}


class ActionKind(Enum):
    ALLOW = "SCMP_ACT_ALLOW"
    ERRNO = "SCMP_ACT_ERRNO"
    KILL_THREAD = "SCMP_ACT_KILL_THREAD"
    KILL_PROCESS = "SCMP_ACT_KILL_PROCESS"
    TRAP = "SCMP_ACT_TRAP"
    TRACE = "SCMP_ACT_TRACE"
    LOG = "SCMP_ACT_LOG"


_ACTION_ALIASES = {"SCMP_ACT_KILL": ActionKind.KILL_THREAD}  # libseccomp's old name for KILL_THREAD


class SeccompMode(Enum):
    """What ``--security-opt seccomp=…`` chose."""

    DEFAULT = "default"        # Docker's default profile (no option given)
    UNCONFINED = "unconfined"  # seccomp=unconfined: no filter at all
    CUSTOM = "custom"          # seccomp=FILE: the profile the CLI read from FILE


@dataclass(frozen=True)
class SeccompOption:
    """A container's seccomp choice, as its spec carries it (``profile`` only for ``CUSTOM``)."""

    mode: SeccompMode = SeccompMode.DEFAULT
    profile: str = ""


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    value: int = 0  # the errno of ERRNO, the message of TRACE; 0 otherwise


@dataclass(frozen=True)
class ArgCondition:
    """``args[index] op value`` (for MASKED_EQ: ``args[index] & value == value_two``)."""

    index: int
    op: str
    value: int
    value_two: int = 0


@dataclass(frozen=True)
class RuleFilter:
    """``includes``/``excludes`` of a rule."""

    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    action: Action
    args: tuple[ArgCondition, ...] = ()
    includes: RuleFilter | None = None
    excludes: RuleFilter | None = None


@dataclass(frozen=True)
class Profile:
    default_action: Action | None  # None only in an empty profile (no rules either): seccomp disabled
    architectures: tuple[str, ...] = ()
    arch_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    flags: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class FilterRule:
    """One libseccomp rule: ``action`` for ``name`` when every condition holds (none: always)."""

    name: str
    action: Action
    conditions: tuple[ArgCondition, ...] = ()


@dataclass(frozen=True)
class FilterPlan:
    """What to build for one container: libseccomp's input, in the order rules are added."""

    default_action: Action
    arches: tuple[str, ...]  # SCMP_ARCH_* names besides the native one; () means native only
    flags: int
    rules: tuple[FilterRule, ...]


@dataclass(frozen=True)
class Host:
    """What ``resolve`` compares a profile's conditions with."""

    goarch: str                 # e.g. "amd64" (see GOARCH_OF_MACHINE)
    kernel: tuple[int, int]     # (major, minor) of the running kernel, e.g. (6, 18)


def default_profile_text() -> str:
    """Docker's default profile, as vendored."""
    return resources.files("agent.security").joinpath("seccomp_default.json").read_text()


_DEFAULT: Profile | None = None


def default_profile() -> Profile:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = parse_profile(default_profile_text())
    return _DEFAULT


def profile_of(option: SeccompOption) -> Profile | None:
    """The profile ``option`` selects; None for unconfined."""
    if option.mode is SeccompMode.UNCONFINED:
        return None
    if option.mode is SeccompMode.DEFAULT:
        return default_profile()
    return parse_profile(option.profile)


def validate_option(option: SeccompOption) -> SeccompOption:
    """``option`` itself, or ``InvalidArgument`` saying what is wrong with its profile."""
    if option.mode is not SeccompMode.CUSTOM and option.profile:
        raise InvalidArgument(f"a seccomp profile was given with seccomp={option.mode.value}: give one or "
                              "the other")
    profile_of(option)
    return option


# -- parsing ------------------------------------------------------------------------------------------


def _fail(where: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"seccomp profile: {where}: {problem}")


def parse_profile(text: str) -> Profile:
    """Parse and check a profile (``InvalidArgument`` names the first problem and where it is)."""
    size = len(text.encode())
    if size > MAX_PROFILE_BYTES:
        raise InvalidArgument(f"seccomp profile is {size} bytes: the most Shoal accepts is "
                              f"{MAX_PROFILE_BYTES >> 10} KiB")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"seccomp profile is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("seccomp profile must be a JSON object with defaultAction and syscalls")
    if raw.get("listenerPath") or raw.get("listenerMetadata"):
        raise _fail("listenerPath", "user-space notification (SCMP_ACT_NOTIFY) is not supported")
    syscalls = _list(raw, "syscalls", "syscalls")
    default_raw = raw.get("defaultAction", "")
    if not default_raw and not syscalls:
        return Profile(default_action=None)  # moby: no default action and no rules = seccomp disabled
    if not default_raw:
        raise _fail("defaultAction", "missing (use SCMP_ACT_ERRNO to deny what the rules do not allow)")
    default = _action(default_raw, raw.get("defaultErrnoRet"), where="defaultAction")
    architectures = tuple(_arch(a, where=f"architectures[{i}]")
                          for i, a in enumerate(_list(raw, "architectures", "architectures")))
    arch_map = tuple(_arch_entry(e, where=f"archMap[{i}]") for i, e in enumerate(_list(raw, "archMap",
                                                                                        "archMap")))
    if architectures and arch_map:
        raise _fail("architectures", "both 'architectures' and 'archMap' are given: use one of them")
    flags = tuple(_flag(f, where=f"flags[{i}]") for i, f in enumerate(_list(raw, "flags", "flags")))
    if len(syscalls) > MAX_RULES:
        raise _fail("syscalls", f"{len(syscalls)} rules: at most {MAX_RULES}")
    rules = tuple(_rule(r, where=f"syscalls[{i}]") for i, r in enumerate(syscalls))
    # An upper bound (every rule applying, on the architecture with the most sub-architectures): known
    # before the container's capabilities are, so the same profile is accepted or refused everywhere.
    arch_count = max([len(architectures), *(1 + len(subs) for _, subs in arch_map), 1])
    conditions = sum(len(r.args) * len(r.names) for r in rules) * arch_count
    if conditions > MAX_CONDITIONS:
        raise _fail("syscalls", f"{conditions} argument conditions over all architectures (each name of a "
                                f"rule times its args times {arch_count} architectures): at most "
                                f"{MAX_CONDITIONS}; allow a call without conditions, or list fewer values")
    return Profile(default_action=default, architectures=architectures, arch_map=arch_map, flags=flags,
                   rules=rules)


def _list(raw: dict[str, Any], key: str, where: str) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, f"must be a list, got {type(value).__name__}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"must be a string, got {json.dumps(value)[:40]}")
    return value


def _integer(value: Any, where: str, *, most: int) -> int:
    # bool is an int in Python, not in JSON; 1.0 is a float in JSON.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
        raise _fail(where, f"must be an integer from 0 to {most}, got {json.dumps(value)[:40]}")
    return value


def _action(raw: Any, errno_ret: Any, *, where: str) -> Action:
    name = _string(raw, where)
    kind = _ACTION_ALIASES.get(name)
    if kind is None:
        try:
            kind = ActionKind(name)
        except ValueError:
            if name == "SCMP_ACT_NOTIFY":
                raise _fail(where, "SCMP_ACT_NOTIFY (user-space notification) is not supported") from None
            choices = ", ".join(k.value for k in ActionKind)
            raise _fail(where, f"unknown action {quoted(name, limit=40)}: use one of {choices}") from None
    if kind is ActionKind.ERRNO:
        # runc's default when errnoRet is absent: EPERM.
        return Action(kind, 1 if errno_ret is None else _integer(errno_ret, f"{where} errnoRet",
                                                                 most=_MAX_ERRNO))
    if kind is ActionKind.TRACE:
        return Action(kind, 1 if errno_ret is None else _integer(errno_ret, f"{where} errnoRet",
                                                                 most=_MAX_TRACE_MSG))
    if errno_ret is not None:
        raise _fail(where, f"errnoRet is only meaningful with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {name}")
    return Action(kind)


def _arch(raw: Any, *, where: str) -> str:
    name = _string(raw, where)
    if name not in ARCHITECTURES:
        raise _fail(where, f"unknown architecture {quoted(name, limit=40)} (use SCMP_ARCH_X86_64, "
                           "SCMP_ARCH_X86, SCMP_ARCH_X32, SCMP_ARCH_AARCH64, ...)")
    return name


def _arch_entry(raw: Any, *, where: str) -> tuple[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object with architecture and subArchitectures")
    arch = _arch(raw.get("architecture"), where=f"{where}.architecture")
    subs = raw.get("subArchitectures") or []
    if not isinstance(subs, list):
        raise _fail(f"{where}.subArchitectures", "must be a list")
    return arch, tuple(_arch(s, where=f"{where}.subArchitectures[{i}]") for i, s in enumerate(subs))


def _flag(raw: Any, *, where: str) -> str:
    name = _string(raw, where)
    if name not in FILTER_FLAGS:
        raise _fail(where, f"unsupported flag {quoted(name, limit=40)}: use "
                           f"{', '.join(sorted(FILTER_FLAGS))}")
    return name


def _rule(raw: Any, *, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object with names and action")
    name, names = raw.get("name"), raw.get("names")
    if name and names:
        raise _fail(where, "both 'name' and 'names' are given: use 'names'")
    if name:
        listed = [name]
    elif isinstance(names, list) and names:
        listed = names
    else:
        raise _fail(f"{where}.names", "must be a non-empty list of system call names")
    checked = []
    for i, n in enumerate(listed):
        s = _string(n, f"{where}.names[{i}]")
        if not _NAME_RE.fullmatch(s):
            raise _fail(f"{where}.names[{i}]", f"{quoted(s, limit=40)} is not a system call name "
                                                "(lower-case letters, digits and '_')")
        checked.append(s)
    action = _action(raw.get("action"), raw.get("errnoRet"), where=f"{where}.action")
    args_raw = raw.get("args") or []
    if not isinstance(args_raw, list):
        raise _fail(f"{where}.args", "must be a list")
    args = tuple(_arg(a, where=f"{where}.args[{i}]") for i, a in enumerate(args_raw))
    return Rule(names=tuple(checked), action=action, args=args,
                includes=_rule_filter(raw.get("includes"), where=f"{where}.includes"),
                excludes=_rule_filter(raw.get("excludes"), where=f"{where}.excludes"))


def _arg(raw: Any, *, where: str) -> ArgCondition:
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object with index, value and op")
    index = _integer(raw.get("index"), f"{where}.index", most=5)
    op = _string(raw.get("op"), f"{where}.op")
    if op not in OPERATORS:
        raise _fail(f"{where}.op", f"unknown operator {quoted(op, limit=40)}: use one of "
                                   f"{', '.join(sorted(OPERATORS))}")
    value = _integer(raw.get("value", 0), f"{where}.value", most=_U64)
    value_two = _integer(raw.get("valueTwo", 0), f"{where}.valueTwo", most=_U64)
    return ArgCondition(index=index, op=op, value=value, value_two=value_two)


def _rule_filter(raw: Any, *, where: str) -> RuleFilter | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object (caps, arches, minKernel)")
    caps = tuple(_capability(c, f"{where}.caps[{i}]") for i, c in enumerate(_list(raw, "caps",
                                                                                  f"{where}.caps")))
    arches = tuple(_string(a, f"{where}.arches[{i}]") for i, a in enumerate(_list(raw, "arches",
                                                                                  f"{where}.arches")))
    kernel = raw.get("minKernel")
    return RuleFilter(caps=caps, arches=arches,
                      min_kernel=None if kernel in (None, "") else _kernel(kernel, f"{where}.minKernel"))


def _capability(raw: Any, where: str) -> str:
    name = _string(raw, where).upper()
    return name if name.startswith("CAP_") else "CAP_" + name


def _kernel(raw: Any, where: str) -> tuple[int, int]:
    text = _string(raw, where)
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 3 for p in parts) or parts == ["0", "0"]:
        raise _fail(where, f"{quoted(text, limit=20)} is not a kernel version: use \"<kernel>.<major>\", "
                           "e.g. \"4.8\"")
    return int(parts[0]), int(parts[1])


# -- resolving ------------------------------------------------------------------------------------------


def resolve(profile: Profile, *, capabilities: tuple[str, ...], host: Host) -> FilterPlan | None:
    """The filter for a container with bounding set ``capabilities`` (names, with or without ``CAP_``)
    on ``host``; None when the profile disables seccomp (empty)."""
    if profile.default_action is None:
        return None
    caps = {_capability(c, "capabilities") for c in capabilities}
    native = _SCMP_ARCH_OF_GOARCH.get(host.goarch)
    arches: tuple[str, ...] = profile.architectures
    if profile.arch_map:
        # moby: only the native architecture's entry counts, and it brings its sub-architectures.
        arches = next(((arch, *subs) for arch, subs in profile.arch_map if arch == native), ())
    flags = 0
    for flag in profile.flags:
        flags |= FILTER_FLAGS[flag]
    rules: list[FilterRule] = []
    for rule in profile.rules:
        if not _applies(rule, caps=caps, host=host):
            continue
        if rule.action == profile.default_action:
            continue  # runc: libseccomp refuses a rule that repeats the default action
        for name in rule.names:
            rules.extend(_split(name, rule))
    return FilterPlan(default_action=profile.default_action,
                      arches=tuple(dict.fromkeys(a for a in arches if a != native)), flags=flags,
                      rules=tuple(rules))


def _applies(rule: Rule, *, caps: set[str], host: Host) -> bool:
    ex, inc = rule.excludes, rule.includes
    if ex is not None:
        if host.goarch in ex.arches or any(c in caps for c in ex.caps):
            return False
        if ex.min_kernel is not None and host.kernel >= ex.min_kernel:
            return False
    if inc is not None:
        if inc.arches and host.goarch not in inc.arches:
            return False
        if not all(c in caps for c in inc.caps):
            return False
        if inc.min_kernel is not None and host.kernel < inc.min_kernel:
            return False
    return True


def _split(name: str, rule: Rule) -> list[FilterRule]:
    """runc's matchCall: conditions on distinct arguments AND together; if one argument has several
    conditions, libseccomp cannot AND them, so each condition is a rule of its own (OR)."""
    indexes = [a.index for a in rule.args]
    if len(set(indexes)) == len(indexes):
        return [FilterRule(name=name, action=rule.action, conditions=rule.args)]
    return [FilterRule(name=name, action=rule.action, conditions=(a,)) for a in rule.args]


def parse_kernel_release(release: str) -> tuple[int, int]:
    """``"6.18.3-amd64"`` → ``(6, 18)`` (moby ignores the rest, so "3.12-rc5" is 3.12)."""
    match = re.match(r"^(\d+)\.(\d+)", release)
    if match is None:
        raise ValueError(f"cannot read a kernel version from {release!r}")
    return int(match.group(1)), int(match.group(2))


__all__ = [
    "ARCHITECTURES", "FILTER_FLAGS", "GOARCH_OF_MACHINE", "MAX_PROFILE_BYTES", "OPERATORS", "Action",
    "ActionKind", "ArgCondition", "FilterPlan", "FilterRule", "Host", "Profile", "Rule", "RuleFilter",
    "SeccompMode", "SeccompOption", "default_profile", "default_profile_text", "parse_kernel_release",
    "parse_profile", "profile_of", "resolve", "validate_option",
]
