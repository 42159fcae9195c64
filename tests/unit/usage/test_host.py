"""Host identity (stable id file), capacity and --label parsing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.errors import InvalidArgument, ShoalError
from agent.usage import host


def test_host_id_is_created_once_0600_and_stable(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = host.load_or_create_host_id(root)
    assert len(first) == 32 and int(first, 16) >= 0
    path = root / host.HOST_ID_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert host.load_or_create_host_id(root) == first
    # No temporary files are left behind.
    assert sorted(p.name for p in root.iterdir()) == [host.HOST_ID_FILE]


def test_host_ids_differ_between_roots(tmp_path: Path) -> None:
    assert host.load_or_create_host_id(tmp_path / "a") != host.load_or_create_host_id(tmp_path / "b")


def test_a_corrupt_host_id_file_is_an_error_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / host.HOST_ID_FILE).write_text("not-an-id\n")
    with pytest.raises(ShoalError, match="does not hold a host id"):
        host.load_or_create_host_id(tmp_path)
    assert (tmp_path / host.HOST_ID_FILE).read_text() == "not-an-id\n"


def test_capacity_counts_the_agents_affinity_and_memtotal(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1000 kB\nMemAvailable: 10 kB\n")
    cores, memory = host.read_host_capacity(meminfo=meminfo)
    assert cores == len(os.sched_getaffinity(0))
    assert memory == 1000 * 1024


def test_identity_for_this_agent(tmp_path: Path) -> None:
    ident = host.HostIdentity.for_this_agent(root=tmp_path, labels={"zone": "a"})
    assert ident.host_id == host.load_or_create_host_id(tmp_path)
    assert ident.labels == {"zone": "a"}
    assert ident.agent_version  # the editable install has package metadata


def test_parse_labels() -> None:
    assert host.parse_labels(["zone=a", "example.com/disk=ssd", "empty="]) == {
        "zone": "a", "example.com/disk": "ssd", "empty": ""}
    assert host.parse_labels([]) == {}


@pytest.mark.parametrize(("item", "message"), [
    ("zone", "expected KEY=VALUE"),
    ("=a", "key ''"),
    ("-zone=a", "key '-zone'"),
    ("zo ne=a", "key 'zo ne'"),
    ("k=" + "x" * 300, "printable"),
    ("k=a\nb", "printable"),
])
def test_parse_labels_rejects(item: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        host.parse_labels([item])


def test_parse_labels_rejects_duplicates() -> None:
    with pytest.raises(InvalidArgument, match="given twice"):
        host.parse_labels(["zone=a", "zone=b"])


THRESHOLDS = host.PressureThresholds(memory_available_bytes=100 << 20, disk_free_fraction=0.10,
                                     inodes_free_fraction=0.05)


@pytest.mark.parametrize(("disk", "expected"), [
    (host.DiskSpace(total=100 << 30, free=50 << 30, inodes_total=1000, inodes_free=500), None),
    (host.DiskSpace(total=100 << 30, free=5 << 30, inodes_total=1000, inodes_free=500), "MiB free of"),
    # Plenty of bytes but hardly an inode left: new files fail just the same.
    (host.DiskSpace(total=100 << 30, free=50 << 30, inodes_total=1000, inodes_free=10),
     "10 inodes free of 1000"),
    # A filesystem without a fixed inode count (btrfs) reports 0: never pressure from that.
    (host.DiskSpace(total=100 << 30, free=50 << 30, inodes_total=0, inodes_free=0), None),
    (host.DiskSpace(), None),  # not measured
])
def test_disk_pressure_from_bytes_or_inodes(disk: host.DiskSpace, expected: str | None) -> None:
    found = dict(host.pressure(memory_available=1 << 30, disk=disk, thresholds=THRESHOLDS))
    if expected is None:
        assert "DiskPressure" not in found
    else:
        assert expected in found["DiskPressure"] and "agent's root" in found["DiskPressure"]


def test_both_disk_shortages_are_named_in_one_condition() -> None:
    disk = host.DiskSpace(total=100 << 30, free=1 << 30, inodes_total=1000, inodes_free=1)
    found = host.pressure(memory_available=1 << 30, disk=disk, thresholds=THRESHOLDS)
    assert [kind for kind, _ in found] == ["DiskPressure"]
    assert "MiB free" in found[0][1] and "1 inodes free" in found[0][1]


def test_disk_space_reads_inodes(tmp_path: Path) -> None:
    disk = host.disk_space(tmp_path)
    assert disk.total > 0 and 0 <= disk.free <= disk.total
    assert 0 <= disk.inodes_free <= disk.inodes_total
