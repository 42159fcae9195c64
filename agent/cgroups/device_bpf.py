"""Device rules on cgroup v2: compiled into a BPF device program and attached to the group.

cgroup v2 has no ``devices.allow`` file; the kernel instead runs the ``BPF_PROG_TYPE_CGROUP_DEVICE``
programs attached to a process's group on each open or mknod of a device node and refuses with EPERM
unless they return 1. ``compile_rules`` reduces the ordered rules to the policy cgroup v1 would hold
(``agent.cgroups.device_policy``) and emits runc's program shape (opencontainers/cgroups
``devices/devicefilter.go``), one block per exception:

    r2 = ctx->access_type & 0xffff   (BPF_DEVCG_DEV_BLOCK 1 / CHAR 2)
    r3 = ctx->access_type >> 16      (BPF_DEVCG_ACC_MKNOD 1 | READ 2 | WRITE 4)
    r4 = ctx->major; r5 = ctx->minor
    block-N: if r2 != kind goto block-N+1; [access test]; [if r4 != major goto block-N+1];
             [if r5 != minor goto block-N+1]; return allow ? 1 : 0
    block-last: return default_allow ? 1 : 0

A wildcard major or minor skips its test; ``rwm`` skips the access test. An allow exception matches only
when it grants *all* the requested access (``r3 & access == r3``), as runc and v1 do. A deny exception
(a list opening with ``allow a``) matches when it covers *any* requested access (``r3 & access != 0``),
as v1's ``match_exception_partial`` does — runc tests the subset there too, which lets ``O_RDWR`` through
a rule that denies only ``w``. For the rule lists runc's tests use, the programs are instruction for
instruction the same.

``DeviceFilter`` is the door to the kernel (``KernelDeviceFilter``); tests substitute one that records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol

from agent.cgroups.device_policy import DevicePolicy, reduce_rules
from agent.cgroups.manager import DeviceRule
from agent.errors import InvalidArgument
from agent.linux import bpf, bpf_asm
from agent.linux.bpf_asm import R0, R1, R2, R3, R4, R5, Item, Label

log = logging.getLogger("shoal.cgroups")

# BPF_DEVCG_DEV_* and BPF_DEVCG_ACC_* (include/uapi/linux/bpf.h).
DEVICE_KINDS = {"b": 1, "c": 2}
ACCESS_BITS = {"m": 1, "r": 2, "w": 4}
ALL_ACCESS = 7
# Device numbers are compared as sign-extended 32-bit immediates against zero-extended u32 fields, so
# only numbers below 2^31 can match (Linux's own are below 2^12 for majors and 2^20 for minors).
MAX_DEVICE_NUMBER = (1 << 31) - 1


def _block(index: int) -> str:
    return f"block-{index}"


def _prologue() -> list[Item]:
    # struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
    return [
        bpf_asm.load_word(R2, R1, 0), bpf_asm.and_imm32(R2, 0xFFFF),
        bpf_asm.load_word(R3, R1, 0), bpf_asm.rsh_imm32(R3, 16),
        bpf_asm.load_word(R4, R1, 4),
        bpf_asm.load_word(R5, R1, 8),
    ]


def _exception_block(*, kind: str, major: int | None, minor: int | None, access: str, allow: bool,
                     next_block: str) -> list[Item]:
    bits = sum(ACCESS_BITS[c] for c in access)
    out: list[Item] = [bpf_asm.jne_imm(R2, DEVICE_KINDS[kind], next_block)]
    if bits != ALL_ACCESS:
        out += [bpf_asm.mov_reg32(R1, R3), bpf_asm.and_imm32(R1, bits)]
        # r1 = requested & listed: an allow needs all of the request listed, a deny any of it.
        out.append(bpf_asm.jne_reg(R1, R3, next_block) if allow else bpf_asm.jeq_imm(R1, 0, next_block))
    for register, number in ((R4, major), (R5, minor)):
        if number is not None:
            if number > MAX_DEVICE_NUMBER:
                raise InvalidArgument(f"device number {number} is out of range (at most {MAX_DEVICE_NUMBER})")
            out.append(bpf_asm.jne_imm(register, number, next_block))
    return [*out, bpf_asm.mov_imm32(R0, int(allow)), bpf_asm.exit_()]


def compile_policy(policy: DevicePolicy) -> tuple[Item, ...]:
    """The device program enforcing ``policy``."""
    program = _prologue()
    for index, (match, access) in enumerate(policy.exceptions):
        program.append(Label(_block(index)))
        program += _exception_block(
            kind=match.kind, major=match.major, minor=match.minor, access=access,
            allow=not policy.default_allow, next_block=_block(index + 1),
        )
    program += [Label(_block(len(policy.exceptions))), bpf_asm.mov_imm32(R0, int(policy.default_allow)),
                bpf_asm.exit_()]
    return tuple(program)


def compile_rules(rules: Sequence[DeviceRule]) -> tuple[Item, ...]:
    """The device program enforcing ``rules`` read in order from deny-all (``InvalidArgument`` for a
    list cgroup v1 could not honour, see ``agent.cgroups.device_policy``)."""
    return compile_policy(reduce_rules(rules))


class DeviceFilter(Protocol):
    """Attaches device programs to cgroup v2 groups. Blocking (bpf(2) and the verifier).

    ``available`` says whether this host can load device programs at all (a kernel without
    ``CONFIG_CGROUP_BPF``, or an agent lacking ``CAP_BPF``/``CAP_SYS_ADMIN``, cannot); the v2 manager
    reports it as ``supports_device_rules``. ``attach`` makes ``program`` the group's only own program,
    replacing an earlier one without a moment unfiltered; the kernel drops it when the group is removed.
    ``OSError`` if the kernel refuses."""

    def available(self) -> bool: ...

    def attach(self, directory: str, program: Sequence[Item]) -> None: ...


# Allows everything; loaded (never attached) to learn whether device programs can be loaded here.
_PROBE: tuple[Item, ...] = (bpf_asm.mov_imm32(R0, 1), bpf_asm.exit_())


class KernelDeviceFilter:
    """``DeviceFilter`` through bpf(2) (``agent.linux.bpf``)."""

    def __init__(self) -> None:
        self._available: bool | None = None

    def available(self) -> bool:
        if self._available is None:
            try:
                fd = bpf.load_device_program(bpf_asm.assemble(_PROBE))
            except OSError as err:
                log.warning("cgroup v2 device rules are off: this host cannot load BPF device programs (%s); "
                            "containers run without CAP_MKNOD instead", err)
                self._available = False
            else:
                os.close(fd)
                self._available = True
        return self._available

    def attach(self, directory: str, program: Sequence[Item]) -> None:
        bpf.replace_device_program(directory, bpf_asm.assemble(program))
