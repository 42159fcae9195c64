"""The FaultProxy is transparent until told otherwise, and each fault does exactly what it says — once per
``times`` — to the responses it targets and to no others."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from typing import Any

import pytest

from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.registry import ACCEPT_ALL, Catalogue, Registry
from tests.fixtures.tokenserver import TokenServer
from tests.integration.registry_world.probe import Answer, fetch

pytestmark = pytest.mark.integration


def layers_of(base: str, repo: str, tag: str) -> list[dict[str, Any]]:
    answer = fetch(base, f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT_ALL})
    assert answer.status == 200
    layers: list[dict[str, Any]] = json.loads(answer.body)["layers"]
    return layers


@pytest.fixture
def layer(registry: Registry) -> dict[str, Any]:
    """The busybox layer (≈1 MB): big enough for cuts and ranges to be mid-body."""
    found = layers_of(registry.url, "busybox", "oci")[0]
    assert found["size"] > 100_000
    return found


def get_blob(proxy: FaultProxy, digest: str, **headers: str) -> Answer:
    return fetch(proxy.url, f"/v2/busybox/blobs/{digest}", headers=headers)


# -- transparency ------------------------------------------------------------------------------------


def test_transparent_manifest_and_blob(fault_proxy: FaultProxy, registry_catalogue: Catalogue,
                                       layer: dict[str, Any]) -> None:
    m = fetch(fault_proxy.url, "/v2/busybox/manifests/oci", headers={"Accept": ACCEPT_ALL})
    assert m.status == 200 and m.header("Docker-Content-Digest") == registry_catalogue.busybox_oci.digest
    blob = get_blob(fault_proxy, layer["digest"])
    assert blob.status == 200 and blob.sha256 == layer["digest"] and blob.error is None
    recorded = fault_proxy.requests
    assert [(r.method, r.status, r.fault) for r in recorded] == [("GET", 200, None), ("GET", 200, None)]
    assert recorded[0].header("Accept") == ACCEPT_ALL
    assert recorded[1].blob_digest == layer["digest"] and recorded[1].body_bytes_sent == layer["size"]


def test_range_passes_through_as_206(fault_proxy: FaultProxy, layer: dict[str, Any]) -> None:
    size = layer["size"]
    part = get_blob(fault_proxy, layer["digest"], Range="bytes=1000-")
    assert part.status == 206
    assert part.header("Content-Range") == f"bytes 1000-{size - 1}/{size}"
    assert len(part.body) == size - 1000
    assert fault_proxy.requests[-1].range == "bytes=1000-"


def test_ignore_range_answers_200_with_everything(fault_proxy: FaultProxy, layer: dict[str, Any]) -> None:
    fault_proxy.ignore_range()
    whole = get_blob(fault_proxy, layer["digest"], Range="bytes=1000-")
    assert whole.status == 200 and whole.header("Content-Range") is None
    assert whole.sha256 == layer["digest"]
    assert fault_proxy.requests[-1].fault == "ignore_range"
    assert fault_proxy.pending_faults == ["ignore_range"]  # times=None: stays on
    fault_proxy.clear_faults()
    assert get_blob(fault_proxy, layer["digest"], Range="bytes=1000-").status == 206


def test_token_flow_through_the_proxy(registry_catalogue: Catalogue, token_registry: Registry,
                                      token_server: TokenServer) -> None:
    with FaultProxy(token_registry.url) as proxy:
        challenged = fetch(proxy.url, "/v2/busybox/manifests/oci", headers={"Accept": ACCEPT_ALL})
        assert challenged.status == 401
        challenge = challenged.header("WWW-Authenticate") or ""
        assert challenge.startswith(f'Bearer realm="{token_server.realm}"')
        token = token_server.issue_token(subject="t", access=[("repository", "busybox", ("pull",))])
        served = fetch(proxy.url, "/v2/busybox/manifests/oci",
                       headers={"Accept": ACCEPT_ALL, "Authorization": f"Bearer {token}"})
        assert served.status == 200
        assert served.header("Docker-Content-Digest") == registry_catalogue.busybox_oci.digest
        assert [r.authorization for r in proxy.requests] == [None, f"Bearer {token}"]


def test_skopeo_pushes_through_the_proxy(fault_proxy: FaultProxy, registry: Registry,
                                         registry_catalogue: Catalogue) -> None:
    """Uploads (POST → Location → PATCH → PUT) work through the proxy: Location headers are rewritten."""
    layout = registry_catalogue.multi_layout
    out = subprocess.run(["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false",
                          f"oci:{layout.layout}:{layout.tag}", f"docker://{fault_proxy.host}/via/proxy:1"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    direct = fetch(registry.url, "/v2/via/proxy/manifests/1", headers={"Accept": ACCEPT_ALL})
    assert direct.header("Docker-Content-Digest") == layout.index_digest
    uploads = [r for r in fault_proxy.requests if "/blobs/uploads/" in r.path]
    assert uploads and all(r.status < 400 for r in uploads)


# -- body faults -------------------------------------------------------------------------------------


def test_corrupt_keeps_length_and_breaks_digest_once(fault_proxy: FaultProxy, layer: dict[str, Any]) -> None:
    fault_proxy.corrupt()
    bad = get_blob(fault_proxy, layer["digest"])
    assert bad.status == 200 and bad.error is None
    assert len(bad.body) == layer["size"] and bad.sha256 != layer["digest"]
    assert get_blob(fault_proxy, layer["digest"]).sha256 == layer["digest"]
    assert [r.fault for r in fault_proxy.requests] == ["corrupt", None]


def test_cut_after_resets_after_n_bytes(fault_proxy: FaultProxy, layer: dict[str, Any]) -> None:
    fault_proxy.cut_after(5000)
    cut = get_blob(fault_proxy, layer["digest"])
    assert cut.status == 200 and cut.header("Content-Length") == str(layer["size"])
    assert cut.error is not None and len(cut.body) == 5000
    assert fault_proxy.requests[-1].body_bytes_sent == 5000
    assert get_blob(fault_proxy, layer["digest"]).sha256 == layer["digest"]


def test_cut_then_resume_with_range(fault_proxy: FaultProxy, layer: dict[str, Any]) -> None:
    fault_proxy.cut_after(4096)
    first = get_blob(fault_proxy, layer["digest"])
    rest = get_blob(fault_proxy, layer["digest"], Range=f"bytes={len(first.body)}-")
    assert rest.status == 206
    assert "sha256:" + hashlib.sha256(first.body + rest.body).hexdigest() == layer["digest"]


def test_truncate_advertises_full_length_and_sends_half(fault_proxy: FaultProxy, layer: dict[str, Any]
                                                        ) -> None:
    fault_proxy.truncate()
    short = get_blob(fault_proxy, layer["digest"])
    assert short.header("Content-Length") == str(layer["size"])
    assert len(short.body) == layer["size"] // 2
    assert short.error is not None and short.error.startswith("IncompleteRead")


def test_truncate_can_target_manifests(fault_proxy: FaultProxy) -> None:
    fault_proxy.truncate(keep=10, target="manifest")
    short = fetch(fault_proxy.url, "/v2/busybox/manifests/oci", headers={"Accept": ACCEPT_ALL})
    assert len(short.body) == 10 and short.error is not None


def test_faults_hit_only_their_digest(fault_proxy: FaultProxy, registry: Registry) -> None:
    layers = layers_of(registry.url, "umoci", "v3")
    target, other = layers[0]["digest"], layers[1]["digest"]
    fault_proxy.corrupt(times=None, digest=target)
    assert fetch(fault_proxy.url, f"/v2/umoci/blobs/{other}").sha256 == other
    assert fetch(fault_proxy.url, f"/v2/umoci/blobs/{target}").sha256 != target
    assert fetch(fault_proxy.url, f"/v2/umoci/blobs/{target}").sha256 != target


# -- status and delay --------------------------------------------------------------------------------


def test_status_then_recover(fault_proxy: FaultProxy, layer: dict[str, Any]) -> None:
    fault_proxy.status(503, times=2, retry_after=1)
    first = get_blob(fault_proxy, layer["digest"])
    assert first.status == 503 and first.header("Retry-After") == "1"
    assert json.loads(first.body)["errors"][0]["code"] == "UNAVAILABLE"
    assert get_blob(fault_proxy, layer["digest"]).status == 503
    assert get_blob(fault_proxy, layer["digest"]).sha256 == layer["digest"]
    assert [r.status for r in fault_proxy.requests] == [503, 503, 200]
    assert fault_proxy.pending_faults == []


def test_status_does_not_touch_manifests_or_heads(fault_proxy: FaultProxy, layer: dict[str, Any]) -> None:
    fault_proxy.status(500, times=None)
    assert fetch(fault_proxy.url, "/v2/busybox/manifests/oci", headers={"Accept": ACCEPT_ALL}).status == 200
    assert fetch(fault_proxy.url, f"/v2/busybox/blobs/{layer['digest']}", method="HEAD").status == 200
    assert get_blob(fault_proxy, layer["digest"]).status == 500


def test_delay_outlasts_a_short_client_timeout(fault_proxy: FaultProxy, layer: dict[str, Any]) -> None:
    fault_proxy.delay(30)
    with socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=0.5) as s:
        s.sendall(f"GET /v2/busybox/blobs/{layer['digest']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        with pytest.raises(TimeoutError):
            s.recv(1)
    # Teardown stops the proxy: the 30 s wait is cut short rather than holding up the test.


def test_registry_down_gives_502_then_recovers(fault_proxy: FaultProxy, registry: Registry,
                                               layer: dict[str, Any]) -> None:
    registry.stop()
    assert get_blob(fault_proxy, layer["digest"]).status == 502
    registry.start()
    assert get_blob(fault_proxy, layer["digest"]).sha256 == layer["digest"]


# -- redirects ---------------------------------------------------------------------------------------


def test_registry_stopped_mid_body(fault_proxy: FaultProxy, registry: Registry, layer: dict[str, Any]
                                   ) -> None:
    fault_proxy.cut_after(100_000, then=registry.stop)
    first = get_blob(fault_proxy, layer["digest"])
    assert len(first.body) == 100_000 and first.error is not None
    assert registry.pid is None
    assert get_blob(fault_proxy, layer["digest"], Range="bytes=100000-").status == 502
    registry.start()
    rest = get_blob(fault_proxy, layer["digest"], Range="bytes=100000-")
    assert rest.status == 206
    assert "sha256:" + hashlib.sha256(first.body + rest.body).hexdigest() == layer["digest"]


def test_redirect_to_blob_storage(fault_proxy: FaultProxy, layer: dict[str, Any]) -> None:
    fault_proxy.redirect_blobs()
    redirect = get_blob(fault_proxy, layer["digest"], Authorization="Bearer secret")
    assert redirect.status == 307
    location = redirect.header("Location") or ""
    assert location.startswith(f"http://127.0.0.1:{fault_proxy.blobstore_port}/blobs/")
    assert fault_proxy.blobstore_port != fault_proxy.port
    store_base, _, store_path = location.partition(f":{fault_proxy.blobstore_port}")
    store = f"{store_base}:{fault_proxy.blobstore_port}"
    blob = fetch(store, store_path)
    assert blob.status == 200 and blob.sha256 == layer["digest"]
    assert blob.header("Docker-Content-Digest") is None  # blob storage is not the registry
    part = fetch(store, store_path, headers={"Range": "bytes=10-19"})
    assert part.status == 206 and part.body == blob.body[10:20]
    assert fetch(store, "/blobs/forged-token").status == 403
    storage_hits = [r for r in fault_proxy.requests if r.listener == "blobstore"]
    assert len(storage_hits) == 3 and all(r.authorization is None for r in storage_hits)


def test_faults_apply_where_the_bytes_are_served(fault_proxy: FaultProxy, layer: dict[str, Any]) -> None:
    fault_proxy.redirect_blobs(times=1).corrupt()
    location = get_blob(fault_proxy, layer["digest"]).header("Location") or ""
    port = fault_proxy.blobstore_port
    blob = fetch(f"http://127.0.0.1:{port}", location.split(f":{port}", 1)[1])
    assert len(blob.body) == layer["size"] and blob.sha256 != layer["digest"]
    assert get_blob(fault_proxy, layer["digest"]).status == 200  # redirect used up: served directly
