"""Compiling a container's seccomp filter with libseccomp, once per distinct profile and capability set.

The filter is *built* by libseccomp (rules, architectures and argument comparisons, exported as a
classic BPF program) and *loaded* by ``agent.linux.seccomp`` with ``seccomp(2)`` in the container's
init and in every exec, the last step before ``execve``: compiling there would mean importing
libseccomp into a process that has just forked, and paying for it on every start. A compiled filter
depends only on the profile, the container's capabilities and the host, so ``FilterCache`` keeps a
few: every container with Docker's default profile and the same capabilities shares one program.

Which binding: Debian's ``python3-seccomp`` (module ``seccomp``, libseccomp's own Cython binding,
2.5.4 on bookworm), linked into the venv by ``scripts/install.sh``. It is the official binding, the
library it links is the one the distribution patches, and it matches the venv's Python ABI (3.11).
PyPI's ``pyseccomp`` (ctypes, same API) would be the fallback; it was not needed. libseccomp 2.5.4
does not know system calls newer than Linux 6.2's (``mseal``, ``statmount``, ``listmount``,
``*xattrat``, ``lsm_*``, ``uretprobe``): like runc, rules naming a system call the library cannot
resolve are skipped, so those calls get the default action (EPERM) where a newer Docker allows them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import platform
import threading
from collections import OrderedDict
from dataclasses import dataclass

import seccomp

from agent.errors import InvalidArgument
from agent.security import seccomp_profile as sp

# The kernel refuses a filter longer than BPF_MAXINSNS instructions of 8 bytes each.
MAX_INSTRUCTIONS = 4096
_INSTRUCTION_BYTES = 8

_ARCHES: dict[str, int] = {
    name: getattr(seccomp.Arch, name.removeprefix("SCMP_ARCH_"))
    for name in sp.ARCHITECTURES if hasattr(seccomp.Arch, name.removeprefix("SCMP_ARCH_"))
}
_OPS: dict[str, int] = {
    "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_GE": seccomp.GE, "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


@dataclass(frozen=True)
class CompiledFilter:
    """A BPF program (``struct sock_filter`` array) and the ``seccomp(2)`` flags to load it with."""

    program: bytes
    flags: int
    skipped: tuple[str, ...] = ()  # system calls libseccomp does not know (their rules were skipped)

    @property
    def instructions(self) -> int:
        return len(self.program) // _INSTRUCTION_BYTES

    @functools.cached_property
    def encoded(self) -> str:
        """The program in base64, as launch and exec plans carry it (encoded once per filter)."""
        return base64.b64encode(self.program).decode()


def host() -> sp.Host:
    """This machine, as profile conditions see it."""
    machine = platform.machine()
    return sp.Host(goarch=sp.GOARCH_OF_MACHINE.get(machine, machine),
                   kernel=sp.parse_kernel_release(os.uname().release))


def _action(action: sp.Action) -> int:
    kind = action.kind
    if kind is sp.ActionKind.ALLOW:
        return int(seccomp.ALLOW)
    if kind is sp.ActionKind.ERRNO:
        return int(seccomp.ERRNO(action.value))
    if kind is sp.ActionKind.TRACE:
        return int(seccomp.TRACE(action.value))
    if kind is sp.ActionKind.KILL_PROCESS:
        return int(seccomp.KILL_PROCESS)
    if kind is sp.ActionKind.KILL_THREAD:
        return int(seccomp.KILL)
    if kind is sp.ActionKind.TRAP:
        return int(seccomp.TRAP)
    return int(seccomp.LOG)


def _arg(cond: sp.ArgCondition) -> seccomp.Arg:
    if cond.op == "SCMP_CMP_MASKED_EQ":
        return seccomp.Arg(cond.index, seccomp.MASKED_EQ, cond.value, cond.value_two)
    return seccomp.Arg(cond.index, _OPS[cond.op], cond.value)


def compile_plan(plan: sp.FilterPlan) -> CompiledFilter:
    """Build ``plan`` with libseccomp and export it as BPF (``InvalidArgument`` if libseccomp or the
    kernel's size limit refuses it)."""
    filt = seccomp.SyscallFilter(_action(plan.default_action))
    # A binary tree of system call numbers instead of runc's linear list: the same decisions, and the
    # kernel takes it in 0.7 ms instead of 1.7 ms (seccomp(2) verifies the program and emulates it for
    # every system call number to build its action cache), on every start and exec.
    filt.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    for name in plan.arches:
        arch = _ARCHES.get(name)
        if arch is None:
            raise InvalidArgument(f"seccomp profile: architecture {name} is not supported by this "
                                  "host's libseccomp")
        if not filt.exist_arch(arch):
            try:
                filt.add_arch(arch)
            except RuntimeError as exc:  # EDOM: one filter cannot mix byte orders
                raise InvalidArgument(f"seccomp profile: architecture {name} cannot be combined with "
                                      f"this host's: {exc}") from None
    skipped: dict[str, None] = {}
    for rule in plan.rules:
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, rule.name) == -1:
            skipped[rule.name] = None  # runc does the same: a name libseccomp cannot resolve is ignored
            continue
        try:
            filt.add_rule(_action(rule.action), rule.name, *(_arg(c) for c in rule.conditions))
        except (RuntimeError, ValueError) as exc:
            raise InvalidArgument(f"seccomp profile: the rule for {rule.name} cannot be built: "
                                  f"{exc}") from None
    fd = os.memfd_create("shoal-seccomp", os.MFD_CLOEXEC)
    with open(fd, "w+b") as f:
        filt.export_bpf(f)
        f.seek(0)
        program = f.read()
    if len(program) // _INSTRUCTION_BYTES > MAX_INSTRUCTIONS:
        raise InvalidArgument(f"seccomp profile compiles to {len(program) // _INSTRUCTION_BYTES} BPF "
                              f"instructions: the kernel loads at most {MAX_INSTRUCTIONS}")
    return CompiledFilter(program=program, flags=plan.flags, skipped=tuple(skipped))


def compile_option(option: sp.SeccompOption, *, capabilities: tuple[str, ...],
                   on: sp.Host | None = None) -> CompiledFilter | None:
    """The filter for a container with ``option`` and ``capabilities``; None when unconfined."""
    profile = sp.profile_of(option)
    if profile is None:
        return None
    plan = sp.resolve(profile, capabilities=capabilities, host=on or host())
    return None if plan is None else compile_plan(plan)


class FilterCache:
    """Compiled filters by (profile, capabilities), least recently used dropped past ``size``.
    Thread-safe: creates compile in worker threads while starts read it."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._filters: OrderedDict[tuple[str, str, tuple[str, ...]], CompiledFilter | None] = OrderedDict()
        self._host = host()

    @staticmethod
    def _key(option: sp.SeccompOption, capabilities: tuple[str, ...]) -> tuple[str, str, tuple[str, ...]]:
        digest = hashlib.sha256(option.profile.encode()).hexdigest() if option.profile else ""
        return option.mode.value, digest, tuple(sorted(capabilities))

    def cached(self, option: sp.SeccompOption,
               capabilities: tuple[str, ...]) -> tuple[bool, CompiledFilter | None]:
        """``(True, filter)`` if compiled before (cheap: safe on the event loop), else ``(False, None)``."""
        if option.mode is sp.SeccompMode.UNCONFINED:
            return True, None
        key = self._key(option, capabilities)
        with self._lock:
            if key in self._filters:
                self._filters.move_to_end(key)
                return True, self._filters[key]
        return False, None

    def get(self, option: sp.SeccompOption, capabilities: tuple[str, ...]) -> CompiledFilter | None:
        """The filter, compiled now if it is not cached (blocking: a few milliseconds)."""
        hit, compiled = self.cached(option, capabilities)
        if hit:
            return compiled
        compiled = compile_option(option, capabilities=capabilities, on=self._host)
        with self._lock:
            self._filters[self._key(option, capabilities)] = compiled
            while len(self._filters) > self._size:
                self._filters.popitem(last=False)
        return compiled


__all__ = ["MAX_INSTRUCTIONS", "CompiledFilter", "FilterCache", "compile_option", "compile_plan", "host"]
