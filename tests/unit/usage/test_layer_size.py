"""The budgeted, resumable writable-layer walk."""

from __future__ import annotations

import os
from pathlib import Path

from agent.usage.layer_size import WritableLayerSizer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fill(upper: Path, *, dirs: int, files_per_dir: int, size: int) -> int:
    total = 0
    for d in range(dirs):
        sub = upper / f"d{d}" / "nested"
        sub.mkdir(parents=True)
        for f in range(files_per_dir):
            p = sub / f"f{f}"
            p.write_bytes(b"x" * size)
            total += os.lstat(p).st_blocks * 512
    return total


def test_a_walk_spread_over_calls_reports_only_complete_totals(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    expected = _fill(upper, dirs=4, files_per_dir=5, size=5000)
    assert expected > 0
    clock = Clock()
    sizer = WritableLayerSizer(refresh_seconds=10, budget_entries=3, clock=clock)
    calls = 0
    while sizer.size("c1") is None:
        spent = sizer.advance({"c1": upper})
        assert spent <= 3 + 5  # a directory is never split: at most budget + one directory's entries
        calls += 1
        assert calls < 100
    assert calls > 1  # the budget really spread the walk
    assert sizer.size("c1") == expected


def test_remeasured_only_after_refresh(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "a").write_bytes(b"x" * 10000)
    clock = Clock()
    sizer = WritableLayerSizer(refresh_seconds=10, budget_entries=100, clock=clock)
    sizer.advance({"c1": upper})
    first = sizer.size("c1")
    assert first is not None and first > 0
    (upper / "b").write_bytes(b"x" * 10000)
    assert sizer.advance({"c1": upper}) == 0  # not due: nothing stat'ed
    assert sizer.size("c1") == first
    clock.now += 10
    assert sizer.advance({"c1": upper}) > 0
    size = sizer.size("c1")
    assert size is not None and size > first


def test_budget_is_shared_and_vanished_layers_are_forgotten(tmp_path: Path) -> None:
    uppers = {}
    for name in ("c1", "c2"):
        uppers[name] = tmp_path / name
        _fill(uppers[name], dirs=1, files_per_dir=3, size=100)
    sizer = WritableLayerSizer(refresh_seconds=10, budget_entries=1000, clock=Clock())
    sizer.advance(uppers)
    assert sizer.size("c1") and sizer.size("c2")
    sizer.advance({"c2": uppers["c2"]})
    assert sizer.size("c1") is None


def test_symlinks_are_not_followed_and_missing_dirs_do_not_fail(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _fill(outside, dirs=1, files_per_dir=3, size=100000)
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "link").symlink_to(outside)
    sizer = WritableLayerSizer(budget_entries=100, clock=Clock())
    sizer.advance({"c1": upper, "gone": tmp_path / "missing"})
    size = sizer.size("c1")
    assert size is not None and size < 100000
    assert sizer.size("gone") == 0


def test_a_directory_swapped_for_a_symlink_mid_walk_is_not_followed(tmp_path: Path) -> None:
    """The walk stopped after listing the root; the container then replaces a directory it saw with a
    symlink to a host directory. The next call must not walk the host (the old path-based walk did)."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret-big").write_bytes(b"x" * (1 << 20))
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d" / "small").write_bytes(b"x" * 100)
    sizer = WritableLayerSizer(budget_entries=1, clock=Clock())
    sizer.advance({"c1": upper})  # root listed: "d" waits as (root fd, "d")
    assert sizer.size("c1") is None
    (upper / "d" / "small").unlink()
    (upper / "d").rmdir()
    (upper / "d").symlink_to(host)
    while sizer.size("c1") is None:
        sizer.advance({"c1": upper})
    assert sizer.size("c1") == 0


def test_limited_layers_are_measured_on_every_call_and_first(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for upper in (a, b):
        upper.mkdir()
        (upper / "f").write_bytes(b"x" * 10000)
    sizer = WritableLayerSizer(refresh_seconds=10, budget_entries=2, clock=Clock())
    sizer.advance({"free": a, "limited": b}, limited={"limited"})
    assert sizer.size("limited") is not None and sizer.size("free") is None  # the budget went to it first
    (b / "g").write_bytes(b"x" * 10000)
    before = sizer.size("limited")
    sizer.advance({"free": a, "limited": b}, limited={"limited"})  # not "due", measured anyway
    after = sizer.size("limited")
    assert before is not None and after is not None and after > before


def test_measured_ignores_what_was_measured_before_invalidate(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "f").write_bytes(b"x" * 10000)
    sizer = WritableLayerSizer(clock=Clock())
    sizer.advance({"c1": upper}, limited={"c1"})
    assert sizer.measured("c1") == sizer.size("c1") and sizer.measured("c1")
    sizer.invalidate("c1")  # a new run of the container
    assert sizer.measured("c1") is None and sizer.size("c1") is not None
    sizer.advance({"c1": upper}, limited={"c1"})
    assert sizer.measured("c1") == sizer.size("c1")


def test_a_tree_needing_too_many_open_directories_is_unmeasurable(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    level = upper
    for i in range(6):  # each level has two subdirectories: the walk holds one descriptor per level
        (level / "x").mkdir(parents=True)
        level = level / f"n{i}"
        level.mkdir(parents=True)
    sizer = WritableLayerSizer(max_open_dirs=3, clock=Clock())
    sizer.advance({"c1": upper}, limited={"c1"})
    assert "more than 3 directories" in sizer.unmeasurable("c1")
    assert sizer.measured("c1") is None
    before = len(os.listdir("/proc/self/fd"))
    sizer.close()
    assert len(os.listdir("/proc/self/fd")) <= before  # nothing held after close


def test_no_descriptor_is_left_open_by_a_finished_walk(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    _fill(upper, dirs=5, files_per_dir=2, size=10)
    before = len(os.listdir("/proc/self/fd"))
    sizer = WritableLayerSizer(budget_entries=4, clock=Clock())
    while sizer.size("c1") is None:
        sizer.advance({"c1": upper})
    assert len(os.listdir("/proc/self/fd")) == before
