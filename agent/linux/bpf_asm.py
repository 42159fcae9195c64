"""A tiny eBPF assembler: the handful of instructions a cgroup device program needs, and jump labels.

Shoal writes one kind of BPF program (``agent.cgroups.device_bpf``: load the device access from the
context, compare it with each rule, return 1 or 0), so this covers exactly that: 32-bit word loads,
32-bit ``and``/``rsh``/``mov``, ``jne``/``jeq`` against an immediate or a register, and ``exit``. A
program is a sequence of ``Instruction`` and ``Label`` items; jumps name a label and ``assemble``
turns the names into the relative offsets the kernel wants, refusing backward jumps (the verifier
rejects loops in this program type anyway) and unknown or repeated labels. Encoding follows the kernel's
``struct bpf_insn`` (``include/uapi/linux/bpf.h``): opcode byte, dst and src register nibbles, a signed
16-bit offset and a signed 32-bit immediate, in the host's byte order.

``listing`` prints a program the way cilium/ebpf's ``asm.Instructions`` prints an unlinked one (the
format runc's ``devicefilter_test.go`` expectations are written in: a jump shows ``off: -1`` and its
``<label>``), so those expectations can be checked against Shoal's output line by line.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

# Instruction classes, sizes, modes, operations and sources (include/uapi/linux/bpf_common.h, bpf.h).
_LDX, _ALU, _JMP = 0x01, 0x04, 0x05
_W, _MEM = 0x00, 0x60
_AND, _RSH, _MOV = 0x50, 0x70, 0xB0
_JEQ, _JNE, _EXIT = 0x10, 0x50, 0x90
_K, _X = 0x00, 0x08

LDX_MEM_W = _LDX | _MEM | _W
AND_IMM32 = _ALU | _AND | _K
RSH_IMM32 = _ALU | _RSH | _K
MOV_IMM32 = _ALU | _MOV | _K
MOV_REG32 = _ALU | _MOV | _X
JEQ_IMM = _JMP | _JEQ | _K
JNE_IMM = _JMP | _JNE | _K
JNE_REG = _JMP | _JNE | _X
EXIT = _JMP | _EXIT

# cilium/ebpf's names, and which operand layout each prints with.
_MNEMONICS: dict[int, tuple[str, str]] = {
    LDX_MEM_W: ("LdXMemW", "mem"),
    AND_IMM32: ("AndImm32", "alu_imm"),
    RSH_IMM32: ("RShImm32", "alu_imm"),
    MOV_IMM32: ("MovImm32", "alu_imm"),
    MOV_REG32: ("MovReg32", "alu_reg"),
    JEQ_IMM: ("JEqImm", "jump_imm"),
    JNE_IMM: ("JNEImm", "jump_imm"),
    JNE_REG: ("JNEReg", "jump_reg"),
    EXIT: ("Exit", "none"),
}

INSTRUCTION_SIZE = 8
MAX_REGISTER = 10  # r0..r10 (r10 is the read-only frame pointer)
R0, R1, R2, R3, R4, R5 = 0, 1, 2, 3, 4, 5

_INT16 = (-(1 << 15), (1 << 15) - 1)
_INT32 = (-(1 << 31), (1 << 31) - 1)


class AssemblyError(ValueError):
    """A program that cannot be encoded: an unknown label, a backward jump, a value out of range."""


@dataclass(frozen=True)
class Label:
    """A jump target: names the instruction that follows it."""

    name: str


@dataclass(frozen=True)
class Instruction:
    """One ``struct bpf_insn``. ``target`` names the label a jump goes to; ``assemble`` turns it into
    ``off``. Build instructions with the functions below rather than by hand."""

    opcode: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None

    def __post_init__(self) -> None:
        if self.opcode not in _MNEMONICS:
            raise AssemblyError(f"opcode 0x{self.opcode:02x} is not one this assembler knows")
        for reg in (self.dst, self.src):
            if not 0 <= reg <= MAX_REGISTER:
                raise AssemblyError(f"register r{reg} does not exist (r0..r{MAX_REGISTER})")
        if not _INT16[0] <= self.off <= _INT16[1]:
            raise AssemblyError(f"offset {self.off} does not fit in 16 bits")
        if not _INT32[0] <= self.imm <= _INT32[1]:
            raise AssemblyError(f"immediate {self.imm} does not fit in a signed 32-bit field")
        name, layout = _MNEMONICS[self.opcode]
        if (self.target is not None) != layout.startswith("jump"):
            raise AssemblyError(f"{name}: only a conditional jump has a target, and it must have one")

    def encode(self, off: int | None = None) -> bytes:
        """The 8 bytes of the instruction, with ``off`` (a resolved jump) in place of ``self.off``."""
        offset = self.off if off is None else off
        if not _INT16[0] <= offset <= _INT16[1]:
            raise AssemblyError(f"jump offset {offset} does not fit in 16 bits")
        # The register byte holds dst in the low nibble on little-endian hosts, the high one on big.
        regs = (self.src << 4) | self.dst if sys.byteorder == "little" else (self.dst << 4) | self.src
        return struct.pack("=BBhi", self.opcode, regs, offset, self.imm)

    def render(self) -> str:
        """The instruction as cilium/ebpf prints it (unlinked jumps show ``off: -1`` and the label)."""
        name, layout = _MNEMONICS[self.opcode]
        off = -1 if self.target is not None else self.off
        text = {
            "mem": f"{name} dst: r{self.dst} src: r{self.src} off: {off} imm: {self.imm}",
            "alu_imm": f"{name} dst: r{self.dst} imm: {self.imm}",
            "alu_reg": f"{name} dst: r{self.dst} src: r{self.src}",
            "jump_imm": f"{name} dst: r{self.dst} off: {off} imm: {self.imm}",
            "jump_reg": f"{name} dst: r{self.dst} off: {off} src: r{self.src}",
            "none": name,
        }[layout]
        return f"{text} <{self.target}>" if self.target is not None else text


Item = Instruction | Label


def load_word(dst: int, src: int, off: int) -> Instruction:
    """``dst = *(u32 *)(src + off)``."""
    return Instruction(LDX_MEM_W, dst=dst, src=src, off=off)


def and_imm32(dst: int, imm: int) -> Instruction:
    return Instruction(AND_IMM32, dst=dst, imm=imm)


def rsh_imm32(dst: int, imm: int) -> Instruction:
    return Instruction(RSH_IMM32, dst=dst, imm=imm)


def mov_imm32(dst: int, imm: int) -> Instruction:
    return Instruction(MOV_IMM32, dst=dst, imm=imm)


def mov_reg32(dst: int, src: int) -> Instruction:
    return Instruction(MOV_REG32, dst=dst, src=src)


def jeq_imm(dst: int, imm: int, target: str) -> Instruction:
    """Jump to ``target`` if the 64-bit ``dst`` equals ``imm`` (sign-extended)."""
    return Instruction(JEQ_IMM, dst=dst, imm=imm, target=target)


def jne_imm(dst: int, imm: int, target: str) -> Instruction:
    """Jump to ``target`` if the 64-bit ``dst`` differs from ``imm`` (sign-extended)."""
    return Instruction(JNE_IMM, dst=dst, imm=imm, target=target)


def jne_reg(dst: int, src: int, target: str) -> Instruction:
    return Instruction(JNE_REG, dst=dst, src=src, target=target)


def exit_() -> Instruction:
    """Return ``r0``."""
    return Instruction(EXIT)


def _positions(program: Sequence[Item]) -> dict[str, int]:
    positions: dict[str, int] = {}
    index = 0
    for item in program:
        if isinstance(item, Label):
            if item.name in positions:
                raise AssemblyError(f"label {item.name!r} is defined twice")
            positions[item.name] = index
        else:
            index += 1
    return positions


def assemble(program: Sequence[Item]) -> bytes:
    """Encode ``program`` for ``BPF_PROG_LOAD``, resolving each jump's label to a forward offset."""
    positions = _positions(program)
    out: list[bytes] = []
    for item in program:
        if isinstance(item, Label):
            continue
        off = None
        if item.target is not None:
            if item.target not in positions:
                raise AssemblyError(f"jump to undefined label {item.target!r}")
            off = positions[item.target] - (len(out) + 1)  # relative to the next instruction
            if off < 0:
                raise AssemblyError(f"jump to {item.target!r} goes backwards")
        out.append(item.encode(off))
    if not out:
        raise AssemblyError("an empty program")
    return b"".join(out)


def listing(program: Sequence[Item]) -> str:
    """``program`` as cilium/ebpf's ``Instructions.Format`` prints it: ``label:`` lines and numbered,
    tab-indented instructions."""
    count = sum(1 for item in program if not isinstance(item, Label))
    width = max(1, len(str(count * 2 - 1)))  # cilium sizes the column as if every instruction were wide
    lines: list[str] = []
    index = 0
    for item in program:
        if isinstance(item, Label):
            lines.append(f"{item.name}:")
        else:
            lines.append(f"\t{index:>{width}}: {item.render()}")
            index += 1
    return "\n".join(lines) + "\n"
