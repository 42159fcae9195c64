from __future__ import annotations

import pytest

from agent.errors import InvalidArgument
from agent.runtime import spec


@pytest.mark.parametrize(("raw", "expected"), [
    ("64M", 64 << 20), ("64m", 64 << 20), ("1g", 1 << 30), ("1.5GiB", 3 << 29), ("512k", 512 << 10),
    ("1048576", 1 << 20), ("10MB", 10 << 20),
])
def test_parse_size(raw: str, expected: int) -> None:
    assert spec.parse_size(raw) == expected


@pytest.mark.parametrize("raw", ["12Q", "", "M", "-5M", "1.2.3G", "64 megabytes"])
def test_parse_memory_rejects_garbage_with_the_value_in_the_message(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="memory limit"):
        spec.parse_memory(raw)


def test_parse_memory_refuses_tiny_limits() -> None:
    with pytest.raises(InvalidArgument, match="too small"):
        spec.parse_memory("1k")


@pytest.mark.parametrize(("raw", "millis"), [("0.5", 500), ("2", 2000), ("250m", 250), ("1.25", 1250)])
def test_parse_cpus(raw: str, millis: int) -> None:
    assert spec.parse_cpus(raw) == millis


@pytest.mark.parametrize("raw", ["half", "0", "0.001", ""])
def test_parse_cpus_rejects(raw: str) -> None:
    with pytest.raises(InvalidArgument):
        spec.parse_cpus(raw)


def test_parse_pids() -> None:
    assert spec.parse_pids("100") == 100
    for bad in ("0", "-1", "many"):
        with pytest.raises(InvalidArgument):
            spec.parse_pids(bad)


def test_env_must_be_key_value() -> None:
    assert spec.parse_env(["A=1", "B="]) == ("A=1", "B=")
    with pytest.raises(InvalidArgument, match="KEY=VALUE"):
        spec.parse_env(["JUSTKEY"])


def test_merge_env_later_wins_in_place() -> None:
    assert spec.merge_env(("PATH=/bin", "A=1"), ("A=2", "B=3")) == ("PATH=/bin", "A=2", "B=3")


@pytest.mark.parametrize("good", ["web-1", "a", "0123abcd", "x.y_z"])
def test_ids_and_names_accept(good: str) -> None:
    assert spec.validate_id(good) == good
    assert spec.validate_name(good) == good


@pytest.mark.parametrize("bad", ["", "-x", "../etc", "a/b", "A" * 65, "sp ace"])
def test_ids_reject(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        spec.validate_id(bad)


def test_new_ids_are_unique_hex() -> None:
    ids = {spec.new_container_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 64 and int(i, 16) >= 0 for i in ids)


@pytest.mark.parametrize(("raw", "seconds"), [("30s", 30.0), ("1.5m", 90.0), ("500ms", 0.5), ("2h", 7200.0),
                                              ("10", 10.0)])
def test_parse_duration(raw: str, seconds: float) -> None:
    assert spec.parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "s", "-1s", "5 days", "1d"])
def test_parse_duration_rejects(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid duration"):
        spec.parse_duration(raw)


@pytest.mark.parametrize(("storage", "message"), [
    (-1, "storage limit must not be negative"),
    (1000, "storage limit 1000 bytes is too small: the minimum is 1M"),
    ((1 << 50) + 1, "is too large: the maximum is 1P"),
])
def test_resources_refuse_storage_limits_no_layer_could_have(storage: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        spec.Resources(storage_bytes=storage).validate()


def test_a_storage_limit_survives_config_json() -> None:
    s = spec.ContainerSpec(image="busybox", resources=spec.Resources(storage_bytes=1 << 30))
    assert spec.spec_from_dict(spec.spec_to_dict(s)) == s
    old = spec.spec_to_dict(spec.ContainerSpec(image="busybox"))
    del old["resources"]["storage_bytes"]  # written by an agent before --storage-size
    assert spec.spec_from_dict(old).resources.storage_bytes is None
