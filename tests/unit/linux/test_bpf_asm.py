"""agent.linux.bpf_asm: instruction encoding against the kernel's byte layout, label resolution, refusals,
and the cilium-style listing."""

from __future__ import annotations

import struct
import sys

import pytest

from agent.linux import bpf_asm
from agent.linux.bpf_asm import R0, R1, R2, R3, AssemblyError, Label


def _le(opcode: int, regs: int, off: int, imm: int) -> bytes:
    return struct.pack("<BBhi", opcode, regs, off, imm)


@pytest.mark.skipif(sys.byteorder != "little", reason="byte-level expectations are little-endian")
@pytest.mark.parametrize(
    ("insn", "expected"),
    [
        # Hand-encoded from include/uapi/linux/bpf.h: code, dst_reg:4 | src_reg:4 (dst low), off, imm.
        (bpf_asm.load_word(R2, R1, 0), _le(0x61, 0x12, 0, 0)),
        (bpf_asm.load_word(5, R1, 8), _le(0x61, 0x15, 8, 0)),
        (bpf_asm.and_imm32(R2, 0xFFFF), _le(0x54, 0x02, 0, 0xFFFF)),
        (bpf_asm.rsh_imm32(R3, 16), _le(0x74, 0x03, 0, 16)),
        (bpf_asm.mov_imm32(R0, 1), _le(0xB4, 0x00, 0, 1)),
        (bpf_asm.mov_reg32(R1, R3), _le(0xBC, 0x31, 0, 0)),
        (bpf_asm.exit_(), _le(0x95, 0x00, 0, 0)),
    ],
)
def test_instructions_encode_as_struct_bpf_insn(insn: bpf_asm.Instruction, expected: bytes) -> None:
    assert bpf_asm.assemble([insn]) == expected


@pytest.mark.skipif(sys.byteorder != "little", reason="byte-level expectations are little-endian")
def test_jumps_resolve_to_offsets_from_the_next_instruction() -> None:
    program = [
        bpf_asm.jne_imm(R2, 2, "out"),  # 0 → 4: off 3
        bpf_asm.jne_reg(R1, R3, "out"),  # 1 → 4: off 2
        bpf_asm.jeq_imm(R1, 0, "next"),  # 2 → 3: off 0
        Label("next"),
        bpf_asm.mov_imm32(R0, 1),
        Label("out"),
        bpf_asm.exit_(),
    ]
    code = bpf_asm.assemble(program)
    assert len(code) == 5 * bpf_asm.INSTRUCTION_SIZE
    assert code[0:8] == _le(0x55, 0x02, 3, 2)
    assert code[8:16] == _le(0x5D, 0x31, 2, 0)
    assert code[16:24] == _le(0x15, 0x01, 0, 0)


def test_negative_immediates_keep_their_sign() -> None:
    code = bpf_asm.assemble([bpf_asm.mov_imm32(R0, -1), bpf_asm.exit_()])
    assert struct.unpack_from("=i", code, 4)[0] == -1


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ([bpf_asm.jne_imm(R2, 1, "nowhere"), bpf_asm.exit_()], "undefined label 'nowhere'"),
        ([Label("a"), bpf_asm.mov_imm32(R0, 0), bpf_asm.jne_imm(R0, 1, "a"), bpf_asm.exit_()], "backwards"),
        ([Label("a"), Label("a"), bpf_asm.exit_()], "defined twice"),
        ([Label("only")], "empty program"),
    ],
)
def test_malformed_programs_are_refused(program: list[bpf_asm.Item], message: str) -> None:
    with pytest.raises(AssemblyError, match=message):
        bpf_asm.assemble(program)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: bpf_asm.mov_imm32(11, 0), "r11 does not exist"),
        (lambda: bpf_asm.mov_imm32(R0, 1 << 31), "signed 32-bit"),
        (lambda: bpf_asm.load_word(R2, R1, 1 << 15), "16 bits"),
        (lambda: bpf_asm.Instruction(0x07), "0x07"),  # ALU64 add: outside the subset
        (lambda: bpf_asm.Instruction(bpf_asm.JNE_IMM, dst=R2), "must have one"),
        (lambda: bpf_asm.Instruction(bpf_asm.EXIT, target="x"), "only a conditional jump"),
    ],
)
def test_out_of_range_instructions_are_refused(build: object, message: str) -> None:
    with pytest.raises(AssemblyError, match=message):
        build()  # type: ignore[operator]


def test_a_jump_too_far_for_16_bits_is_refused() -> None:
    program: list[bpf_asm.Item] = [bpf_asm.jne_imm(R2, 1, "far")]
    program += [bpf_asm.mov_imm32(R0, 0)] * (1 << 15)
    program += [Label("far"), bpf_asm.exit_()]
    with pytest.raises(AssemblyError, match="16 bits"):
        bpf_asm.assemble(program)


def test_listing_prints_like_cilium_ebpf() -> None:
    program = [
        bpf_asm.load_word(R2, R1, 0),
        Label("block-0"),
        bpf_asm.jne_reg(R1, R3, "block-1"),
        bpf_asm.jeq_imm(R1, 0, "block-1"),
        Label("block-1"),
        bpf_asm.mov_imm32(R0, 0),
        bpf_asm.exit_(),
    ]
    assert bpf_asm.listing(program).splitlines() == [
        "\t0: LdXMemW dst: r2 src: r1 off: 0 imm: 0",
        "block-0:",
        "\t1: JNEReg dst: r1 off: -1 src: r3 <block-1>",
        "\t2: JEqImm dst: r1 off: -1 imm: 0 <block-1>",
        "block-1:",
        "\t3: MovImm32 dst: r0 imm: 0",
        "\t4: Exit",
    ]
