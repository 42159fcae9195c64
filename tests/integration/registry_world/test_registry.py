"""The anonymous registry really is distribution 2.8 on loopback serving what skopeo pushed: manifests by
tag and digest with the right media types and digests, multi-platform indexes and manifest lists, blobs with
Range support, content kept across stop/start, and the schema1 quirk a pull client must avoid."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import (
    ACCEPT_ALL,
    ACCEPT_DOCKER_LIST,
    ACCEPT_DOCKER_MANIFEST,
    ACCEPT_OCI_INDEX,
    ACCEPT_OCI_MANIFEST,
    Catalogue,
    PortTaken,
    Registry,
    RegistryFactory,
)
from tests.fixtures.registry_images import MARKER_PATH, BigImage, blob_sha256, build_big_image
from tests.integration.registry_world.probe import fetch

pytestmark = pytest.mark.integration


def manifest(reg: Registry, repo: str, ref: str, accept: str
             ) -> tuple[str | None, str | None, dict[str, Any]]:
    a = fetch(reg.url, f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept})
    assert a.status == 200, a.body
    assert a.header("Docker-Content-Digest") == a.sha256
    return a.header("Content-Type"), a.header("Docker-Content-Digest"), json.loads(a.body)


def test_serves_pushed_oci_manifest_by_tag_and_digest(registry: Registry,
                                                      registry_catalogue: Catalogue) -> None:
    pushed = registry_catalogue.busybox_oci
    ctype, digest, doc = manifest(registry, "busybox", "oci", ACCEPT_OCI_MANIFEST)
    assert ctype == ACCEPT_OCI_MANIFEST
    assert digest == pushed.digest
    by_digest = fetch(registry.url, f"/v2/busybox/manifests/{pushed.digest}", headers={"Accept": ACCEPT_ALL})
    assert by_digest.status == 200 and by_digest.sha256 == pushed.digest
    layer = doc["layers"][0]
    blob = fetch(registry.url, f"/v2/busybox/blobs/{layer['digest']}")
    assert blob.status == 200 and blob.sha256 == layer["digest"] and len(blob.body) == layer["size"]


def test_docker_v2s2_manifest_served_as_pushed(registry: Registry, registry_catalogue: Catalogue) -> None:
    ctype, digest, doc = manifest(registry, "busybox", "v2s2", ACCEPT_ALL)
    assert ctype == ACCEPT_DOCKER_MANIFEST == doc["mediaType"]
    assert digest == registry_catalogue.busybox_v2s2.digest


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", ACCEPT_OCI_MANIFEST])
def test_docker_manifest_without_its_accept_is_400(registry: Registry, accept: str | None) -> None:
    """Registry 2.8 (schema1 compatibility off by default) cannot downgrade schema2 for a client that does
    not Accept it: 400 MANIFEST_INVALID — not a schema1 manifest."""
    a = fetch(registry.url, "/v2/busybox/manifests/v2s2", headers={"Accept": accept} if accept else {})
    assert a.status == 400
    assert json.loads(a.body)["errors"][0]["code"] == "MANIFEST_INVALID"


@pytest.mark.parametrize("ref", ["busybox/manifests/oci", "multi/manifests/oci"])
def test_oci_manifest_without_oci_accept_is_404(registry: Registry, ref: str) -> None:
    docker_only = f"{ACCEPT_DOCKER_MANIFEST}, {ACCEPT_DOCKER_LIST}"
    a = fetch(registry.url, f"/v2/{ref}", headers={"Accept": docker_only})
    assert a.status == 404
    assert json.loads(a.body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_manifest_list_downgraded_to_amd64_manifest_without_list_accept(
        registry: Registry, registry_catalogue: Catalogue) -> None:
    """Asked for a manifest list with only the schema2 Accept, 2.8 picks linux/amd64 itself: the answer
    is the amd64 image manifest under its own digest, not the list's."""
    _, _, listing = manifest(registry, "multi", "v2s2", ACCEPT_DOCKER_LIST)
    amd64 = next(m["digest"] for m in listing["manifests"]
                 if m["platform"]["architecture"] == "amd64")
    ctype, digest, _ = manifest(registry, "multi", "v2s2", ACCEPT_DOCKER_MANIFEST)
    assert ctype == ACCEPT_DOCKER_MANIFEST
    assert digest == amd64 != registry_catalogue.multi_v2s2.digest


def test_head_manifest_gives_digest_without_body(registry: Registry, registry_catalogue: Catalogue) -> None:
    a = fetch(registry.url, "/v2/multi/manifests/oci", method="HEAD", headers={"Accept": ACCEPT_ALL})
    assert a.status == 200 and a.body == b""
    assert a.header("Docker-Content-Digest") == registry_catalogue.multi_oci.digest
    assert a.header("Content-Type") == ACCEPT_OCI_INDEX


def test_multi_platform_oci_index(registry: Registry, registry_catalogue: Catalogue) -> None:
    ctype, digest, doc = manifest(registry, "multi", "oci", ACCEPT_ALL)
    assert ctype == ACCEPT_OCI_INDEX
    assert digest == registry_catalogue.multi_oci.digest == registry_catalogue.multi_layout.index_digest
    platforms = {m["platform"]["architecture"]: m["digest"] for m in doc["manifests"]}
    assert platforms == registry_catalogue.multi_layout.manifests
    seen_markers = set()
    for arch, child in platforms.items():
        ctype, _, image = manifest(registry, "multi", child, ACCEPT_ALL)
        assert ctype == ACCEPT_OCI_MANIFEST
        marker = image["layers"][-1]
        blob = fetch(registry.url, f"/v2/multi/blobs/{marker['digest']}")
        assert blob.sha256 == marker["digest"]
        seen_markers.add(marker["digest"])
        assert f"{MARKER_PATH}".encode() in gzip.decompress(blob.body)
        assert f"{arch}\n".encode() in gzip.decompress(blob.body)
    assert len(seen_markers) == 2


def test_multi_platform_docker_manifest_list(registry: Registry, registry_catalogue: Catalogue) -> None:
    ctype, digest, doc = manifest(registry, "multi", "v2s2", ACCEPT_ALL)
    assert ctype == ACCEPT_DOCKER_LIST == doc["mediaType"]
    assert digest == registry_catalogue.multi_v2s2.digest
    archs = sorted(m["platform"]["architecture"] for m in doc["manifests"])
    assert archs == ["amd64", "arm64"]
    for m in doc["manifests"]:
        assert m["mediaType"] == ACCEPT_DOCKER_MANIFEST
        ctype, _, _ = manifest(registry, "multi", m["digest"], ACCEPT_ALL)
        assert ctype == ACCEPT_DOCKER_MANIFEST


def test_skopeo_pulls_the_index_back(registry: Registry, tmp_path: Path) -> None:
    """A second, independent client agrees the stored index is whole (both platforms, every blob)."""
    out = subprocess.run(["skopeo", "copy", "--quiet", "--all", "--src-tls-verify=false",
                          f"docker://{registry.host}/multi:oci", f"oci:{tmp_path / 'back'}:x"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    index = json.loads((tmp_path / "back" / "index.json").read_text())
    assert index["manifests"][0]["mediaType"] == ACCEPT_OCI_INDEX


def test_blob_range_requests_get_206(registry: Registry, registry_catalogue: Catalogue) -> None:
    _, _, doc = manifest(registry, "busybox", "oci", ACCEPT_OCI_MANIFEST)
    layer = doc["layers"][0]
    full = fetch(registry.url, f"/v2/busybox/blobs/{layer['digest']}").body
    part = fetch(registry.url, f"/v2/busybox/blobs/{layer['digest']}", headers={"Range": "bytes=100-"})
    assert part.status == 206
    assert part.header("Content-Range") == f"bytes 100-{len(full) - 1}/{len(full)}"
    assert part.body == full[100:]


def test_unsatisfiable_range_is_416_with_a_lying_content_length(registry: Registry) -> None:
    """Go's ServeContent quirk in 2.8: the 416 keeps the blob's Content-Length but sends a short text body,
    so a client must not read a 416 body as if it were framed correctly."""
    _, _, doc = manifest(registry, "busybox", "oci", ACCEPT_OCI_MANIFEST)
    layer = doc["layers"][0]
    past_the_end = {"Range": f"bytes={layer['size']}-"}
    a = fetch(registry.url, f"/v2/busybox/blobs/{layer['digest']}", headers=past_the_end)
    assert a.status == 416
    assert a.header("Content-Range") == f"bytes */{layer['size']}"
    assert a.header("Content-Length") == str(layer["size"]) and a.error is not None


def test_fixed_port_taken_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        reg = Registry(tmp_path / "r", port=s.getsockname()[1])
        with pytest.raises(PortTaken):
            reg.start()
        assert reg.pid is None


def test_listens_on_loopback_only(registry: Registry) -> None:
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True, timeout=10).stdout
    mine = [line for line in out.splitlines() if f"pid={registry.pid}," in line]
    assert mine, out
    assert all(line.split()[3] == registry.host for line in mine), mine


def test_stop_start_keeps_port_and_content(registry: Registry, registry_catalogue: Catalogue) -> None:
    url = registry.url
    registry.stop()
    assert registry.pid is None
    with pytest.raises(OSError):
        fetch(url, "/v2/")
    registry.start()
    assert registry.url == url
    _, digest, _ = manifest(registry, "multi", "oci", ACCEPT_ALL)
    assert digest == registry_catalogue.multi_oci.digest


def test_blob_path_is_where_the_bytes_live(registry: Registry, registry_catalogue: Catalogue) -> None:
    _, _, doc = manifest(registry, "busybox", "oci", ACCEPT_OCI_MANIFEST)
    digest = doc["config"]["digest"]
    path = registry.blob_path(digest)
    assert blob_sha256(path) == digest
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    served = fetch(registry.url, f"/v2/busybox/blobs/{digest}")
    assert served.status == 200 and served.sha256 != digest  # the registry serves what is on disk


def test_unseeded_registry_is_empty(registry_factory: RegistryFactory) -> None:
    reg = registry_factory(seeded=False)
    assert fetch(reg.url, "/v2/busybox/manifests/oci", headers={"Accept": ACCEPT_ALL}).status == 404


def test_big_image_pushes(big_image: BigImage, registry_factory: RegistryFactory) -> None:
    assert len(big_image.layer_digests) == 4
    assert 60e6 < big_image.compressed_bytes < 80e6
    reg = registry_factory(seeded=False)
    pushed = reg.push(big_image.layout, big_image.tag, "big:v1")
    assert pushed.digest == big_image.manifest_digest
    for digest in big_image.layer_digests:
        assert blob_sha256(reg.blob_path(digest)) == digest


def test_big_image_builder_is_deterministic(tmp_path: Path) -> None:
    one = build_big_image(tmp_path / "one", layers=2, compressed_mb=2, seed=7)
    two = build_big_image(tmp_path / "two", layers=2, compressed_mb=2, seed=7)
    other = build_big_image(tmp_path / "three", layers=2, compressed_mb=2, seed=8)
    assert one.manifest_digest == two.manifest_digest != other.manifest_digest
    # gzip has real work: roughly 2:1, neither stored nor collapsed like zeros.
    raw = sum(len(gzip.decompress((one.layout / "blobs" / "sha256" / d.split(":")[1]).read_bytes()))
              for d in one.layer_digests)
    assert 1.5 < raw / one.compressed_bytes < 3
