"""Device rules → policy → BPF device program (agent.cgroups.device_policy, agent.cgroups.device_bpf), and
the v2 manager attaching it through a recording DeviceFilter.

The golden listings are the expectations of runc's ``devicefilter_test.go`` (opencontainers/cgroups,
``devices/``; Apache-2.0) for the same rule lists: Shoal's program must be instruction for instruction
runc's. Beyond the goldens, every compiled program is run by ``tests.fixtures.bpf_vm`` and compared with
a direct model of the cgroup v1 devices controller (security/device_cgroup.c) for random rule lists.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cgroups import device_bpf, device_policy, v2
from agent.cgroups.device_policy import DeviceMatch, DevicePolicy
from agent.cgroups.manager import DEFAULT_DEVICE_RULES, DeviceRule, Limits
from agent.errors import FailedPrecondition, InvalidArgument, ShoalError
from agent.linux import bpf_asm
from tests.conformance.cgroupfs_fake import FakeCgroupFs, FakeDeviceFilter
from tests.fixtures import bpf_vm

PROLOGUE = """
0: LdXMemW dst: r2 src: r1 off: 0 imm: 0
1: AndImm32 dst: r2 imm: 65535
2: LdXMemW dst: r3 src: r1 off: 0 imm: 0
3: RShImm32 dst: r3 imm: 16
4: LdXMemW dst: r4 src: r1 off: 4 imm: 0
5: LdXMemW dst: r5 src: r1 off: 8 imm: 0
"""


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _listing(rules: list[DeviceRule]) -> list[str]:
    return _lines(bpf_asm.listing(device_bpf.compile_rules(rules)))


def _rule(allow: bool, kind: str, major: int | None = None, minor: int | None = None,
          access: str = "rwm") -> DeviceRule:
    return DeviceRule(allow=allow, kind=kind, major=major, minor=minor, access=access)


# --- runc's goldens ------------------------------------------------------------------------------------


def test_no_rules_denies_everything_like_runc_nil() -> None:
    assert _listing([]) == _lines(PROLOGUE + """
        block-0:
        6: MovImm32 dst: r0 imm: 0
        7: Exit
    """)


def test_allow_all_is_one_return_like_runc_privileged() -> None:
    assert _listing([_rule(True, "a")]) == _lines(PROLOGUE + """
        block-0:
        6: MovImm32 dst: r0 imm: 1
        7: Exit
    """)


def test_allow_all_but_one_disk_like_runc_privileged_except_single_device() -> None:
    expected = _lines(PROLOGUE + """
        block-0:
        6: JNEImm dst: r2 off: -1 imm: 1 <block-1>
        7: JNEImm dst: r4 off: -1 imm: 8 <block-1>
        8: JNEImm dst: r5 off: -1 imm: 0 <block-1>
        9: MovImm32 dst: r0 imm: 0
        10: Exit
        block-1:
        11: MovImm32 dst: r0 imm: 1
        12: Exit
    """)
    assert _listing([_rule(True, "a"), _rule(False, "b", 8, 0)]) == expected


def test_rules_before_an_a_rule_are_forgotten_like_runc_weird() -> None:
    rules = [_rule(False, "b", 8, 1), _rule(True, "a"), _rule(False, "b", 8, 2)]
    assert _listing(rules) == _lines(PROLOGUE + """
        block-0:
        6: JNEImm dst: r2 off: -1 imm: 1 <block-1>
        7: JNEImm dst: r4 off: -1 imm: 8 <block-1>
        8: JNEImm dst: r5 off: -1 imm: 2 <block-1>
        9: MovImm32 dst: r0 imm: 0
        10: Exit
        block-1:
        11: MovImm32 dst: r0 imm: 1
        12: Exit
    """)


def test_runcs_built_in_allow_list_sorts_and_skips_the_rwm_access_test() -> None:
    # specconv.AllowedDevices, in runc's order: the program lists them sorted (major, minor, kind).
    rules = [
        _rule(True, "c", None, None, "m"), _rule(True, "b", None, None, "m"),
        _rule(True, "c", 1, 3), _rule(True, "c", 1, 8), _rule(True, "c", 1, 7), _rule(True, "c", 5, 0),
        _rule(True, "c", 1, 5), _rule(True, "c", 1, 9), _rule(True, "c", 136, None), _rule(True, "c", 5, 2),
        _rule(True, "c", 10, 200),
    ]
    assert _listing(rules) == _lines(PROLOGUE + """
        block-0:
        6: JNEImm dst: r2 off: -1 imm: 1 <block-1>
        7: MovReg32 dst: r1 src: r3
        8: AndImm32 dst: r1 imm: 1
        9: JNEReg dst: r1 off: -1 src: r3 <block-1>
        10: MovImm32 dst: r0 imm: 1
        11: Exit
        block-1:
        12: JNEImm dst: r2 off: -1 imm: 2 <block-2>
        13: MovReg32 dst: r1 src: r3
        14: AndImm32 dst: r1 imm: 1
        15: JNEReg dst: r1 off: -1 src: r3 <block-2>
        16: MovImm32 dst: r0 imm: 1
        17: Exit
        block-2:
        18: JNEImm dst: r2 off: -1 imm: 2 <block-3>
        19: JNEImm dst: r4 off: -1 imm: 1 <block-3>
        20: JNEImm dst: r5 off: -1 imm: 3 <block-3>
        21: MovImm32 dst: r0 imm: 1
        22: Exit
        block-3:
        23: JNEImm dst: r2 off: -1 imm: 2 <block-4>
        24: JNEImm dst: r4 off: -1 imm: 1 <block-4>
        25: JNEImm dst: r5 off: -1 imm: 5 <block-4>
        26: MovImm32 dst: r0 imm: 1
        27: Exit
        block-4:
        28: JNEImm dst: r2 off: -1 imm: 2 <block-5>
        29: JNEImm dst: r4 off: -1 imm: 1 <block-5>
        30: JNEImm dst: r5 off: -1 imm: 7 <block-5>
        31: MovImm32 dst: r0 imm: 1
        32: Exit
        block-5:
        33: JNEImm dst: r2 off: -1 imm: 2 <block-6>
        34: JNEImm dst: r4 off: -1 imm: 1 <block-6>
        35: JNEImm dst: r5 off: -1 imm: 8 <block-6>
        36: MovImm32 dst: r0 imm: 1
        37: Exit
        block-6:
        38: JNEImm dst: r2 off: -1 imm: 2 <block-7>
        39: JNEImm dst: r4 off: -1 imm: 1 <block-7>
        40: JNEImm dst: r5 off: -1 imm: 9 <block-7>
        41: MovImm32 dst: r0 imm: 1
        42: Exit
        block-7:
        43: JNEImm dst: r2 off: -1 imm: 2 <block-8>
        44: JNEImm dst: r4 off: -1 imm: 5 <block-8>
        45: JNEImm dst: r5 off: -1 imm: 0 <block-8>
        46: MovImm32 dst: r0 imm: 1
        47: Exit
        block-8:
        48: JNEImm dst: r2 off: -1 imm: 2 <block-9>
        49: JNEImm dst: r4 off: -1 imm: 5 <block-9>
        50: JNEImm dst: r5 off: -1 imm: 2 <block-9>
        51: MovImm32 dst: r0 imm: 1
        52: Exit
        block-9:
        53: JNEImm dst: r2 off: -1 imm: 2 <block-10>
        54: JNEImm dst: r4 off: -1 imm: 10 <block-10>
        55: JNEImm dst: r5 off: -1 imm: 200 <block-10>
        56: MovImm32 dst: r0 imm: 1
        57: Exit
        block-10:
        58: JNEImm dst: r2 off: -1 imm: 2 <block-11>
        59: JNEImm dst: r4 off: -1 imm: 136 <block-11>
        60: MovImm32 dst: r0 imm: 1
        61: Exit
        block-11:
        62: MovImm32 dst: r0 imm: 0
        63: Exit
    """)


# --- where Shoal's program differs from runc's: a partial deny in allow-all mode -------------------------


def test_a_partial_deny_matches_any_requested_access_as_v1_does() -> None:
    program = bpf_asm.assemble(device_bpf.compile_rules([_rule(True, "a"), _rule(False, "b", 8, 0, "w")]))
    assert _listing([_rule(True, "a"), _rule(False, "b", 8, 0, "w")])[6:11] == [
        "block-0:",
        "6: JNEImm dst: r2 off: -1 imm: 1 <block-1>",
        "7: MovReg32 dst: r1 src: r3",
        "8: AndImm32 dst: r1 imm: 4",
        "9: JEqImm dst: r1 off: -1 imm: 0 <block-1>",
    ]

    def run(access: str) -> int:
        return bpf_vm.run(program, kind="b", major=8, minor=0, access=access)

    # O_RDWR asks for rw at once: runc's subset test would let it through a rule denying w.
    assert (run("r"), run("w"), run("rw"), run("m")) == (1, 0, 0, 1)


# --- the policy ------------------------------------------------------------------------------------------


def test_default_rules_reduce_to_an_allow_list_of_the_basics() -> None:
    policy = device_policy.reduce_rules(DEFAULT_DEVICE_RULES)
    assert policy.default_allow is False
    assert [(m.render(), access) for m, access in policy.exceptions] == [
        ("c 1:3", "rwm"), ("c 1:5", "rwm"), ("c 1:7", "rwm"), ("c 1:8", "rwm"), ("c 1:9", "rwm"),
        ("c 5:0", "rwm"), ("c 5:2", "rwm"), ("c 136:*", "rwm"),
    ]


def test_a_rule_with_the_default_subtracts_access_from_an_identical_exception() -> None:
    rules = [_rule(False, "a"), _rule(True, "c", 1, 3), _rule(False, "c", 1, 3, "wm"),
             _rule(False, "c", 1, 5)]
    assert device_policy.reduce_rules(rules) == DevicePolicy(False, ((DeviceMatch("c", 1, 3), "r"),))


def test_taking_access_from_a_wildcard_exception_is_refused() -> None:
    rules = [_rule(False, "a"), _rule(True, "c", None, None, "rm"), _rule(False, "c", 1, 1, "r")]
    with pytest.raises(InvalidArgument, match=r"'c 1:1 r'.*wider rule 'c \*:\* rm'"):
        device_policy.reduce_rules(rules)
    # Access the wildcard does not grant is fine to take away (it is a no-op).
    device_policy.reduce_rules([*rules[:2], _rule(False, "c", 1, 1, "w")])


def test_device_numbers_past_31_bits_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        device_bpf.compile_rules([_rule(True, "c", 1 << 31, 0)])


# --- the compiled program against a model of cgroup v1 -----------------------------------------------------


def _v1_model(rules: list[DeviceRule], kind: str, major: int, minor: int, access: str) -> bool:
    """security/device_cgroup.c from deny-all: the exception list as the kernel keeps it."""
    behaviour_allow = False
    exceptions: list[tuple[str, int | None, int | None, set[str]]] = []
    for rule in rules:
        if rule.kind == "a":
            behaviour_allow, exceptions = rule.allow, []
            continue
        key = (rule.kind, rule.major, rule.minor)
        same = [ex for ex in exceptions if ex[:3] == key]
        if rule.allow != behaviour_allow:  # dev_exception_add: merge into an identical exception
            if same:
                same[0][3].update(rule.access)
            else:
                exceptions.append((*key, set(rule.access)))
        else:  # dev_exception_rm: subtract from an identical exception only
            for ex in same:
                ex[3].difference_update(rule.access)
            exceptions = [ex for ex in exceptions if ex[3]]

    def covers(ex: tuple[str, int | None, int | None, set[str]]) -> bool:
        return ex[0] == kind and ex[1] in (None, major) and ex[2] in (None, minor)

    if behaviour_allow:  # match_exception_partial: any overlap denies
        return not any(covers(ex) and ex[3] & set(access) for ex in exceptions)
    return any(covers(ex) and set(access) <= ex[3] for ex in exceptions)  # match_exception


_numbers = st.one_of(st.none(), st.integers(0, 2))
_access = st.sets(st.sampled_from("rwm"), min_size=1).map(lambda s: "".join(sorted(s)))
_rules = st.lists(
    st.builds(DeviceRule, allow=st.booleans(), kind=st.sampled_from("abcc"), major=_numbers, minor=_numbers,
              access=_access),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(rules=_rules)
def test_the_program_decides_every_access_as_cgroup_v1_would(rules: list[DeviceRule]) -> None:
    try:
        program = bpf_asm.assemble(device_bpf.compile_rules(rules))
    except InvalidArgument:
        return  # a hole punched in a wildcard: refused on purpose (see device_policy)
    for kind in "bc":
        for major in range(3):
            for minor in range(3):
                for access in ("r", "w", "m", "rw", "rwm"):
                    expected = _v1_model(rules, kind, major, minor, access)
                    got = bpf_vm.run(program, kind=kind, major=major, minor=minor, access=access)
                    assert got == int(expected), f"{kind} {major}:{minor} {access}"


# --- the v2 manager ------------------------------------------------------------------------------------


def _v2(*, usable: bool = True) -> tuple[FakeCgroupFs, FakeDeviceFilter, v2.V2CgroupManager]:
    fake = FakeCgroupFs()
    fake.mount_v2("/cg", ("cpu", "memory", "pids"))
    devices = FakeDeviceFilter(fake, usable=usable)
    return fake, devices, v2.V2CgroupManager(fs=fake, mountpoint="/cg", kill_pid=fake.kill,
                                             device_filter=devices)


def test_v2_create_attaches_the_compiled_rules_to_the_new_group() -> None:
    fake, devices, mgr = _v2()
    group = mgr.create("shoal/a", limits=Limits(pids_max=5), devices=DEFAULT_DEVICE_RULES)
    expected = bpf_asm.listing(device_bpf.compile_rules(DEFAULT_DEVICE_RULES))
    assert devices.attached == [("/cg/shoal/a", expected)]
    # Nothing on the shared parent: other containers' groups are not this rule list's business.
    assert fake.groups["/cg/shoal"].device_program is None
    # Adoption after an agent restart: open() and apply() leave the program where the kernel keeps it.
    again = v2.V2CgroupManager(fs=fake, mountpoint="/cg", kill_pid=fake.kill, device_filter=devices)
    adopted = again.open("shoal/a")
    assert adopted is not None
    adopted.apply(Limits(pids_max=9))
    assert len(devices.attached) == 1
    assert not fake.device_allowed("/cg/shoal/a", kind="b", major=8, minor=0, access="r")
    group.remove()
    assert "/cg/shoal/a" not in fake.groups  # the program went with the group


def test_v2_create_without_rules_attaches_nothing() -> None:
    fake, devices, mgr = _v2()
    mgr.create("shoal/a", limits=Limits(), devices=())
    assert devices.attached == []
    assert fake.device_allowed("/cg/shoal/a", kind="b", major=8, minor=0, access="rw")


def test_v2_a_refused_attach_leaves_no_group() -> None:
    _, devices, mgr = _v2()
    devices.fail_next_attach(errno.EPERM)
    with pytest.raises(ShoalError, match=r"cannot enforce device rules on cgroup /cg/shoal/a: .*EPERM"):
        mgr.create("shoal/a", limits=Limits(), devices=DEFAULT_DEVICE_RULES)
    assert mgr.list_children("shoal") == []


def test_v2_rules_the_policy_refuses_create_nothing() -> None:
    fake, devices, mgr = _v2()
    rules = (_rule(False, "a"), _rule(True, "c", None, None), _rule(False, "c", 1, 1))
    with pytest.raises(InvalidArgument, match="wider rule"):
        mgr.create("shoal/a", limits=Limits(), devices=rules)
    assert devices.attached == [] and "/cg/shoal" not in fake.groups


def test_v2_host_without_bpf_device_programs_refuses_rules() -> None:
    _, _, mgr = _v2(usable=False)
    assert mgr.supports_device_rules is False
    with pytest.raises(FailedPrecondition, match="cannot load"):
        mgr.create("shoal/a", limits=Limits(), devices=DEFAULT_DEVICE_RULES)
    assert mgr.list_children("shoal") == []
    mgr.create("shoal/b", limits=Limits(), devices=())  # and works without them
