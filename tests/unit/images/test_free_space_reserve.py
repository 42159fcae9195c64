"""The free-space reserve a pull or import must find before it starts (issue 12, finding 1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import ResourceExhausted
from agent.images import reserve
from agent.images.reserve import FreeSpaceReserve


@pytest.mark.parametrize(("value", "total", "required"), [
    (FreeSpaceReserve(), 100 << 30, 1 << 30),            # 5% of 100G is 5G: the 1G floor is smaller
    (FreeSpaceReserve(), 10 << 30, 512 << 20),           # 5% of 10G is smaller than 1G
    (FreeSpaceReserve(min_bytes=8 << 20, min_fraction=None), 1 << 40, 8 << 20),
    (FreeSpaceReserve(min_bytes=None, min_fraction=0.5), 1000, 500),
    (reserve.OFF, 1 << 40, 0),
    (FreeSpaceReserve(min_bytes=0, min_fraction=None), 1 << 40, 0),
])
def test_required_is_the_smaller_of_the_floor_and_the_share(value: FreeSpaceReserve, total: int,
                                                            required: int) -> None:
    assert value.required(total) == required


def test_a_disk_under_the_reserve_refuses_with_the_numbers(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    too_much = FreeSpaceReserve(min_bytes=free + (1 << 40), min_fraction=None)
    with pytest.raises(ResourceExhausted) as caught:
        reserve.check_free_space(tmp_path, too_much, what="pull of busybox:1")
    message = str(caught.value)
    assert message.startswith("refusing to start the pull of busybox:1: only ")
    assert "free of" in message and "--min-free-space" in message and "image prune" in message
    reserve.check_free_space(tmp_path, FreeSpaceReserve(min_bytes=1, min_fraction=None), what="import")
    reserve.check_free_space(tmp_path, reserve.OFF, what="import")


def test_the_store_checks_before_an_import_touches_anything(tmp_path: Path) -> None:
    from agent.images.store import ImageStore

    store = ImageStore(tmp_path / "store", reserve=FreeSpaceReserve(min_bytes=1 << 60, min_fraction=None))
    with pytest.raises(ResourceExhausted, match=r"refusing to start the import of missing\.tar"):
        store.import_archive(tmp_path / "missing.tar")  # refused before the archive is even opened
    assert not any((tmp_path / "store" / "tmp").iterdir())
