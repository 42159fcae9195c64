"""Reference parsing: names, tags, registries with ports, digests and image-id shapes."""

from __future__ import annotations

import pytest

from agent.errors import InvalidArgument
from agent.images.refs import familiar_name, parse_image_id, parse_reference, short_id

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "repository", "tag", "digest"),
    [
        ("busybox", "busybox", "latest", None),
        ("busybox:v1", "busybox", "v1", None),
        ("team/app:1.2.3-rc_1", "team/app", "1.2.3-rc_1", None),
        ("localhost:5000/app", "localhost:5000/app", "latest", None),
        ("registry.example.com:443/a/b:v2", "registry.example.com:443/a/b", "v2", None),
        (f"busybox@{DIGEST}", "busybox", None, DIGEST),
        (f"busybox:v1@{DIGEST}", "busybox", "v1", DIGEST),
    ],
)
def test_valid_references(text: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.repository, ref.tag, ref.digest) == (repository, tag, digest)


def test_name_tag_defaults_to_latest() -> None:
    assert parse_reference("busybox").name_tag == "busybox:latest"
    assert str(parse_reference(f"x:v1@{DIGEST}")) == f"x:v1@{DIGEST}"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("BusyBox", "lowercase"),
        ("busybox:", "tag ''"),
        ("busybox:.hidden", "tag '.hidden'"),
        ("a//b", "repository names"),
        ("busybox@sha256:xyz", "digest must be sha256"),
        (" busybox", "whitespace"),
    ],
)
def test_invalid_references(text: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=f"invalid image reference.*{complaint}"):
        parse_reference(text)


def test_familiar_names() -> None:
    assert familiar_name("docker.io/library/busybox:v1") == "busybox:v1"
    assert familiar_name("docker.io/team/app:v1") == "team/app:v1"
    assert familiar_name("localhost:5000/app:v1") == "localhost:5000/app:v1"


def test_image_id_shapes() -> None:
    assert parse_image_id(DIGEST) == DIGEST
    assert parse_image_id("abab") == "abab"
    assert parse_image_id("aba") is None  # too short to be a prefix
    assert parse_image_id("sha256:abab") is None  # the sha256: form must be complete
    assert parse_image_id("busybox") is None
    assert short_id(DIGEST) == "ab" * 6
