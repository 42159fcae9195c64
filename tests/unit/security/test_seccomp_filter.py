"""Compiling filters with libseccomp, the cache, and loading one into a forked child (no root needed:
no_new_privs is enough for seccomp(2))."""

from __future__ import annotations

import ctypes
import errno
import json
import os

import pytest

from agent.errors import InvalidArgument
from agent.linux import process
from agent.linux import seccomp as loader
from agent.runtime.plan import DEFAULT_CAPABILITIES
from agent.security import seccomp_filter as sf
from agent.security import seccomp_profile as sp

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_NR = {"unshare": 272, "personality": 135, "getpid": 39, "mkdirat": 258}  # x86_64
CLONE_NEWUSER = 0x10000000
READ_IMPLIES_EXEC = 0x0400000


def errno_in_child(compiled: sf.CompiledFilter, nr: int, *args: int) -> int:
    """Load ``compiled`` in a forked child, make one system call there; its errno (0: it succeeded)."""
    program = loader.Program(compiled.program, flags=compiled.flags)  # built before fork, as the init does
    pid = os.fork()
    if pid == 0:
        try:
            process.set_no_new_privs()
            program.load()
            ret = _libc.syscall(nr, *(ctypes.c_ulong(a) for a in args))
            os._exit(ctypes.get_errno() if ret < 0 else 0)
        finally:
            os._exit(255)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture(scope="module")
def default_filter() -> sf.CompiledFilter:
    compiled = sf.compile_option(sp.SeccompOption(), capabilities=DEFAULT_CAPABILITIES)
    assert compiled is not None
    return compiled


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="system call numbers are x86_64's")
def test_the_default_filter_denies_and_allows_in_a_real_process(default_filter: sf.CompiledFilter) -> None:
    assert errno_in_child(default_filter, _NR["unshare"], CLONE_NEWUSER) == errno.EPERM
    assert errno_in_child(default_filter, _NR["personality"], READ_IMPLIES_EXEC) == errno.EPERM
    assert errno_in_child(default_filter, _NR["personality"], 0xFFFFFFFF) == 0
    assert errno_in_child(default_filter, _NR["getpid"]) == 0


def test_the_default_filter_fits_and_says_what_libseccomp_skipped(default_filter: sf.CompiledFilter) -> None:
    assert 0 < default_filter.instructions <= sf.MAX_INSTRUCTIONS
    assert default_filter.flags == 0
    # Whatever this libseccomp does not know is reported, never silently allowed.
    assert set(default_filter.skipped) <= {n for r in sp.default_profile().rules for n in r.names}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="system call numbers are x86_64's")
def test_a_custom_errno_reaches_the_caller() -> None:
    text = json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                       "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]})
    compiled = sf.compile_option(sp.SeccompOption(sp.SeccompMode.CUSTOM, profile=text), capabilities=())
    assert compiled is not None
    assert errno_in_child(compiled, _NR["mkdirat"], 2**64 - 100, 0, 0o755) == errno.EACCES
    assert errno_in_child(compiled, _NR["unshare"], 0) == 0


def test_unconfined_and_empty_profiles_compile_to_nothing() -> None:
    assert sf.compile_option(sp.SeccompOption(sp.SeccompMode.UNCONFINED), capabilities=()) is None
    assert sf.compile_option(sp.SeccompOption(sp.SeccompMode.CUSTOM, profile="{}"), capabilities=()) is None


def test_a_filter_past_the_kernels_instruction_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The condition budget keeps real profiles far below BPF_MAXINSNS; the check behind it is tested
    # with a lower limit.
    monkeypatch.setattr(sf, "MAX_INSTRUCTIONS", 100)
    with pytest.raises(InvalidArgument, match=r"compiles to \d+ BPF instructions: the kernel loads at most"):
        sf.compile_option(sp.SeccompOption(), capabilities=DEFAULT_CAPABILITIES)


def test_architectures_of_another_byte_order_are_refused() -> None:
    text = json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_S390X"]})
    with pytest.raises(InvalidArgument, match="SCMP_ARCH_S390X cannot be combined"):
        sf.compile_option(sp.SeccompOption(sp.SeccompMode.CUSTOM, profile=text), capabilities=())


def test_the_cache_compiles_once_per_profile_and_capability_set() -> None:
    cache = sf.FilterCache(size=2)
    option = sp.SeccompOption()
    assert cache.cached(option, DEFAULT_CAPABILITIES) == (False, None)
    first = cache.get(option, DEFAULT_CAPABILITIES)
    assert cache.cached(option, tuple(reversed(DEFAULT_CAPABILITIES))) == (True, first)  # order-free
    assert cache.get(option, ("SYS_ADMIN",)) != first  # other capabilities, other rules
    assert cache.cached(sp.SeccompOption(sp.SeccompMode.UNCONFINED), ()) == (True, None)
    cache.get(sp.SeccompOption(sp.SeccompMode.CUSTOM, profile='{"defaultAction": "SCMP_ACT_LOG"}'), ())
    assert cache.cached(option, DEFAULT_CAPABILITIES) == (False, None)  # least recently used, dropped


def test_a_program_must_be_whole_instructions() -> None:
    with pytest.raises(ValueError, match="8-byte instructions"):
        loader.Program(b"\0" * 12)
    with pytest.raises(ValueError, match="base64"):
        loader.Program.from_base64("not base64!")
