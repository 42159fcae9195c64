"""The profile interpreter: Docker's default profile resolved for a container's capabilities and the
host's architecture and kernel, argument filters, and what a malformed profile is told."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.errors import InvalidArgument
from agent.runtime.plan import DEFAULT_CAPABILITIES
from agent.security import seccomp_profile as sp

AMD64 = sp.Host(goarch="amd64", kernel=(6, 1))
ARM64 = sp.Host(goarch="arm64", kernel=(6, 1))
ALLOW = sp.Action(sp.ActionKind.ALLOW)
EPERM = sp.Action(sp.ActionKind.ERRNO, 1)


def default_plan(caps: tuple[str, ...] = DEFAULT_CAPABILITIES, host: sp.Host = AMD64) -> sp.FilterPlan:
    plan = sp.resolve(sp.default_profile(), capabilities=caps, host=host)
    assert plan is not None
    return plan


def rules_for(plan: sp.FilterPlan, name: str) -> list[sp.FilterRule]:
    return [r for r in plan.rules if r.name == name]


def allowed_unconditionally(plan: sp.FilterPlan) -> set[str]:
    return {r.name for r in plan.rules if r.action == ALLOW and not r.conditions}


def profile(**raw: Any) -> sp.Profile:
    return sp.parse_profile(json.dumps(raw))


# -- Docker's default profile --------------------------------------------------------------------------


def test_the_vendored_default_denies_with_eperm_and_allows_the_common_calls() -> None:
    plan = default_plan()
    assert plan.default_action == EPERM
    allowed = allowed_unconditionally(plan)
    assert {"read", "write", "execve", "openat", "mmap", "futex", "wait4", "exit_group"} <= allowed
    # The finding's calls are not allowed for Docker's default capabilities.
    for name in ("keyctl", "add_key", "request_key", "unshare", "mount", "io_uring_setup", "perf_event_open",
                 "bpf", "setns", "kexec_load", "open_by_handle_at", "init_module"):
        assert not rules_for(plan, name), name


def test_capabilities_bring_their_calls_the_way_moby_does() -> None:
    without = default_plan()
    with_admin = default_plan((*DEFAULT_CAPABILITIES, "SYS_ADMIN"))
    # includes.caps CAP_SYS_ADMIN: mount, unshare, setns, bpf, clone without an argument filter...
    assert {"mount", "umount2", "unshare", "setns", "bpf"} <= allowed_unconditionally(with_admin)
    assert not {"mount", "unshare"} & allowed_unconditionally(without)
    # ...and excludes.caps CAP_SYS_ADMIN: the clone namespace-flag filter and clone3's ENOSYS disappear.
    assert [r.conditions for r in rules_for(with_admin, "clone")] == [()]
    assert rules_for(with_admin, "clone3") == [sp.FilterRule("clone3", ALLOW)]
    assert rules_for(without, "clone3") == [sp.FilterRule("clone3", sp.Action(sp.ActionKind.ERRNO, 38))]
    # Other capabilities, one rule each.
    assert "perf_event_open" in allowed_unconditionally(default_plan(("PERFMON",)))
    assert "ptrace" in allowed_unconditionally(default_plan(("CAP_SYS_PTRACE",)))
    assert "chroot" in allowed_unconditionally(default_plan(("SYS_CHROOT",)))
    assert "chroot" not in allowed_unconditionally(default_plan(("CHOWN",)))


def test_clone_keeps_its_namespace_flag_filter_without_sys_admin() -> None:
    [clone] = rules_for(default_plan(), "clone")
    # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET: those bits must all be clear.
    assert clone.conditions == (sp.ArgCondition(0, "SCMP_CMP_MASKED_EQ", 0x7E020000, 0),)
    # The s390 variant (arguments swapped) is for s390 hosts only.
    s390 = default_plan(host=sp.Host(goarch="s390x", kernel=(6, 1)))
    assert [r.conditions[0].index for r in rules_for(s390, "clone")] == [1]


def test_personality_and_socket_are_argument_filters() -> None:
    plan = default_plan()
    personas = sorted(r.conditions[0].value for r in rules_for(plan, "personality"))
    # PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query: READ_IMPLIES_EXEC is not there.
    assert personas == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert all(r.conditions[0].op == "SCMP_CMP_EQ" for r in rules_for(plan, "personality"))
    sockets = {(r.conditions[0].op, r.conditions[0].value) for r in rules_for(plan, "socket")}
    # Every family but AF_ALG (38) and AF_VSOCK (40).
    assert sockets == {("SCMP_CMP_LT", 38), ("SCMP_CMP_EQ", 39), ("SCMP_CMP_GT", 40)}


def test_the_arch_map_picks_the_native_entry_and_its_sub_architectures() -> None:
    assert default_plan().arches == ("SCMP_ARCH_X86", "SCMP_ARCH_X32")
    assert default_plan(host=ARM64).arches == ("SCMP_ARCH_ARM",)
    # A host whose architecture the map does not list gets only its native filter.
    assert default_plan(host=sp.Host(goarch="ppc64le", kernel=(6, 1))).arches == ()


def test_arch_conditions_use_the_hosts_architecture() -> None:
    amd64, arm64 = allowed_unconditionally(default_plan()), allowed_unconditionally(default_plan(host=ARM64))
    assert {"arch_prctl", "modify_ldt"} <= amd64
    assert not {"arch_prctl", "modify_ldt"} & arm64
    assert {"arm_fadvise64_64", "breakpoint"} <= arm64
    assert "breakpoint" not in amd64


def test_min_kernel_conditions() -> None:
    old = allowed_unconditionally(default_plan(host=sp.Host(goarch="amd64", kernel=(4, 4))))
    new = allowed_unconditionally(default_plan())
    # ptrace without CAP_SYS_PTRACE only from 4.8 (older kernels let it bypass seccomp).
    assert "ptrace" in new and "ptrace" not in old
    assert sp.parse_kernel_release("6.18.3-amd64") == (6, 18)
    assert sp.parse_kernel_release("3.12-rc5") == (3, 12)


def test_options_select_profiles() -> None:
    assert sp.profile_of(sp.SeccompOption(sp.SeccompMode.UNCONFINED)) is None
    assert sp.profile_of(sp.SeccompOption()) is sp.default_profile()
    custom = sp.SeccompOption(sp.SeccompMode.CUSTOM, profile='{"defaultAction": "SCMP_ACT_ALLOW"}')
    assert sp.profile_of(custom) == sp.Profile(default_action=ALLOW)
    with pytest.raises(InvalidArgument, match="give one or the other"):
        sp.validate_option(sp.SeccompOption(sp.SeccompMode.UNCONFINED, profile="{}"))


# -- runc's and moby's rules for any profile -------------------------------------------------------------


def test_rules_repeating_the_default_action_are_dropped() -> None:
    p = profile(defaultAction="SCMP_ACT_ERRNO", syscalls=[
        {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
    ])
    plan = sp.resolve(p, capabilities=(), host=AMD64)
    assert plan is not None
    assert plan.rules == (sp.FilterRule("write", sp.Action(sp.ActionKind.ERRNO, 13)),)


def test_conditions_on_distinct_arguments_and_on_one_argument() -> None:
    p = profile(defaultAction="SCMP_ACT_ERRNO", syscalls=[
        {"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [
            {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]},
        {"names": ["b"], "action": "SCMP_ACT_ALLOW", "args": [
            {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
    ])
    plan = sp.resolve(p, capabilities=(), host=AMD64)
    assert plan is not None
    assert [len(r.conditions) for r in plan.rules if r.name == "a"] == [2]  # one rule: AND
    assert [len(r.conditions) for r in plan.rules if r.name == "b"] == [1, 1]  # two rules: OR


def test_includes_need_every_capability_and_excludes_any() -> None:
    p = profile(defaultAction="SCMP_ACT_ERRNO", syscalls=[
        {"names": ["both"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_A", "CAP_B"]}},
        {"names": ["not_a"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_A", "CAP_C"]}},
    ])
    def names(caps: tuple[str, ...]) -> set[str]:
        plan = sp.resolve(p, capabilities=caps, host=AMD64)
        assert plan is not None
        return {r.name for r in plan.rules}

    assert names(("A",)) == set()
    assert names(("A", "B")) == {"both"}
    assert names(("B",)) == {"not_a"}


def test_an_empty_profile_disables_seccomp_like_moby() -> None:
    assert sp.resolve(profile(), capabilities=(), host=AMD64) is None
    assert sp.resolve(profile(syscalls=[]), capabilities=(), host=AMD64) is None


def test_flags_and_old_style_fields() -> None:
    p = profile(defaultAction="SCMP_ACT_KILL", architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                flags=["SECCOMP_FILTER_FLAG_LOG"], syscalls=[{"name": "read", "action": "SCMP_ACT_ALLOW"}])
    plan = sp.resolve(p, capabilities=(), host=AMD64)
    assert plan is not None
    assert plan.default_action == sp.Action(sp.ActionKind.KILL_THREAD)
    assert plan.arches == ("SCMP_ARCH_X86",)  # the native one is always there
    assert plan.flags == 2
    assert plan.rules == (sp.FilterRule("read", ALLOW),)


# -- malformed input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}', "defaultAction: missing"),
    ('{"defaultAction": "SCMP_ACT_FOO"}', "defaultAction: unknown action 'SCMP_ACT_FOO'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000}', "errnoRet: must be an integer from 0"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}', "errnoRet is only meaningful"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}', "syscalls: must be a list"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}',
     "syscalls[0].names: must be a non-empty list"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["Read;"], "action": "SCMP_ACT_ALLOW"}]}',
     "is not a system call name"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"name": "a", "names": ["b"], '
     '"action": "SCMP_ACT_ALLOW"}]}', "both 'name' and 'names'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}', "args[0].index: must be an integer"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}', "args[0].value: must be an integer"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": 0, "value": 1.5, "op": "SCMP_CMP_EQ"}]}]}', "args[0].value: must be an integer"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": 0, "value": true, "op": "SCMP_CMP_EQ"}]}]}', "args[0].value: must be an integer"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}]}]}', "unknown operator 'SCMP_CMP_XX'"),
    ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "SCMP_ACT_NOTIFY"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/x.sock"}', "not supported"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"], '
     '"archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}', "both 'architectures' and 'archMap'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_Z80"]}', "unknown architecture"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]}',
     "unsupported flag"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"includes": {"minKernel": "4"}}]}', "is not a kernel version"),
])
def test_malformed_profiles_are_refused_with_where_and_what(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match="seccomp profile") as err:
        sp.parse_profile(text)
    assert message in str(err.value)


def test_the_condition_budget_bounds_libseccomps_build_time() -> None:
    # 100 calls with a condition on each of 6 arguments, on 3 architectures: 1,800 pairs (4 s to build).
    rules = [{"names": [f"call{i}"], "action": "SCMP_ACT_ALLOW",
              "args": [{"index": k, "value": i, "op": "SCMP_CMP_EQ"} for k in range(6)]} for i in range(100)]
    with pytest.raises(InvalidArgument, match=r"1800 argument conditions .* at most 512"):
        profile(defaultAction="SCMP_ACT_ERRNO", archMap=[
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
            syscalls=rules)
    assert profile(defaultAction="SCMP_ACT_ERRNO", syscalls=rules[:85]).rules  # 510 on one architecture


def test_size_cap() -> None:
    with pytest.raises(InvalidArgument, match="the most Shoal accepts is 128 KiB"):
        sp.parse_profile(" " * (sp.MAX_PROFILE_BYTES + 1))


def test_unknown_keys_are_ignored_like_dockers_decoder() -> None:
    p = profile(defaultAction="SCMP_ACT_ERRNO", comment="x", syscalls=[
        {"names": ["read"], "action": "SCMP_ACT_ALLOW", "comment": "why", "somethingNew": 1}])
    assert p.rules == (sp.Rule(names=("read",), action=ALLOW),)
