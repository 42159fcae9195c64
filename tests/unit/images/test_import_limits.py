"""Archive imports obey the same unpack limits as pulls (issue 12, finding 5): a gzip bomb in an OCI
layout is refused by the store's limits and the import leaves no layer, image or temporary behind."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from agent.errors import HostileArchive
from agent.images.layers import UnpackLimits
from agent.images.store import ImageStore
from tests.fixtures.hostile_images import gzip_bomb

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("layer extraction sets ownership and creates devices: needs root")


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    hexd = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / hexd).write_bytes(data)
    return {"digest": f"sha256:{hexd}", "size": len(data)}


def bomb_layout(layout: Path, unpacked: int) -> Path:
    bomb = gzip_bomb(unpacked)
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": [bomb.diff_id]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **_blob(layout, json.dumps(config).encode())},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            **_blob(layout, bomb.blob)}]}
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "annotations": {"org.opencontainers.image.ref.name": "v1"},
         **_blob(layout, json.dumps(manifest).encode())}]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def test_an_imported_gzip_bomb_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    layout = bomb_layout(tmp_path / "bomb", 64 << 20)
    store = ImageStore(tmp_path / "store", limits=UnpackLimits(max_bytes=16 << 20))
    with pytest.raises(HostileArchive, match=r"unpacks to more than 16777216 bytes"):
        store.import_archive(layout, name="bomb:v1")
    assert store.list_images() == []
    for sub in ("layers", "layerdb", "tmp"):
        assert os.listdir(store.root / sub) == [], sub
