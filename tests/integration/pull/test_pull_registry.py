"""Pulls from a real docker-registry (distribution 2.8) on 127.0.0.1, directly and through the FaultProxy:
media types, platform choice, digests, basic and bearer auth, HTTPS with a test CA, layer reuse and
coalescing counted at the proxy, faults (cut, truncate, ignored ranges, 503s, corruption, registry
stopped), redirects, two registries sharing layers, and prune next to a container's layers."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import DigestMismatch, Unauthenticated, Unavailable
from agent.images.pull import Platform, Puller, RegistrySettings
from agent.images.store import Image, ImageStore, ImportProgress
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.registry import Catalogue, Registry, RegistryFactory

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("layer extraction sets ownership and creates devices: needs root")


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


PullerFactory = Callable[..., Puller]


@pytest.fixture
def make_puller(store: ImageStore, tmp_path: Path) -> PullerFactory:
    made: list[Puller] = []

    def make(**kw: object) -> Puller:
        settings = RegistrySettings(auth_file=tmp_path / "auth.json", timeout=10.0,
                                    **{"retries": 2, **kw})  # type: ignore[arg-type]
        puller = Puller(store, settings)
        puller.platform = Platform("linux", "amd64")  # the fixtures' indexes offer amd64 and arm64
        made.append(puller)
        return puller

    yield make  # type: ignore[misc]
    for p in made:
        p.close()


def write_auth(path: Path, registry: str, user: str, password: str) -> None:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": token}}}))
    path.chmod(0o600)


def layer_blobs(proxy: FaultProxy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in proxy.blob_requests():
        assert r.blob_digest is not None
        counts[r.blob_digest] = counts.get(r.blob_digest, 0) + 1
    return counts


def manifest_layers(store: ImageStore, image: Image) -> list[str]:
    assert image.manifest_digest is not None
    return [d["digest"] for d in json.loads(store.blob_path(image.manifest_digest).read_bytes())["layers"]]


def nothing_partial(store: ImageStore) -> None:
    assert store.list_images() == []
    assert os.listdir(store.root / "tmp") == []
    half = set(os.listdir(store.root / "layers")) - {
        p.removesuffix(".json") for p in os.listdir(store.root / "layerdb")}
    assert half == set()


# -- media types, platforms, digests -------------------------------------------------------------------


def test_oci_then_docker_media_types_share_layers(registry: Registry, fault_proxy: FaultProxy,
                                                  registry_catalogue: Catalogue, store: ImageStore,
                                                  make_puller: PullerFactory) -> None:
    puller = make_puller()
    oci = puller.pull(f"{fault_proxy.host}/busybox:oci")
    assert oci.repo_tags == (f"{fault_proxy.host}/busybox:oci",)
    assert (store.layer_paths(oci)[-1] / "bin" / "busybox").is_file()
    fault_proxy.clear_records()
    events: list[ImportProgress] = []
    docker = puller.pull(f"{fault_proxy.host}/busybox:v2s2", progress=events.append)
    assert docker.layers == oci.layers
    assert docker.manifest_digest == registry_catalogue.busybox_v2s2.digest
    # layers already present (pulled as OCI) are not downloaded again
    assert not set(layer_blobs(fault_proxy)) & set(manifest_layers(store, docker))
    assert [e.phase for e in events].count("layer-exists") == len(docker.layers)


@pytest.mark.parametrize("tag", ["oci", "v2s2"])
def test_index_and_manifest_list_resolve_to_amd64(registry: Registry, store: ImageStore,
                                                  make_puller: PullerFactory, tag: str) -> None:
    image = make_puller().pull(f"{registry.host}/multi:{tag}")
    assert image.architecture == "amd64"
    marker = store.layer_paths(image)[0] / "etc" / "shoal-arch"
    assert marker.read_text() == "amd64\n"


def test_pull_by_digest_and_corrupted_manifest_refused(fault_proxy: FaultProxy, registry_catalogue: Catalogue,
                                                       store: ImageStore, make_puller: PullerFactory) -> None:
    digest = registry_catalogue.busybox_oci.digest
    puller = make_puller()
    fault_proxy.corrupt(target="manifest", digest=digest)
    with pytest.raises(DigestMismatch, match=digest.removeprefix("sha256:")[:12]):
        puller.pull(f"{fault_proxy.host}/busybox@{digest}")
    nothing_partial(store)
    image = puller.pull(f"{fault_proxy.host}/busybox@{digest}")
    assert image.manifest_digest == digest and image.repo_tags == ()
    assert store.resolve(f"{fault_proxy.host}/busybox@{digest}").id == image.id


# -- auth and transport --------------------------------------------------------------------------------


def test_basic_auth(basic_auth_registry: Registry, tmp_path: Path, make_puller: PullerFactory) -> None:
    ref = f"{basic_auth_registry.host}/busybox:oci"
    with pytest.raises(Unauthenticated, match=f"add credentials to {tmp_path}/auth.json"):
        make_puller().pull(ref)
    creds = basic_auth_registry.credentials
    assert creds is not None
    write_auth(tmp_path / "auth.json", basic_auth_registry.host, creds.username, creds.password)
    assert make_puller().pull(ref).repo_tags == (ref,)


def test_bearer_token_flow(token_registry: Registry, tmp_path: Path, make_puller: PullerFactory) -> None:
    creds = token_registry.credentials
    assert creds is not None and token_registry.token_server is not None
    write_auth(tmp_path / "auth.json", token_registry.host, creds.username, "wrong-password-123")
    with pytest.raises(Unauthenticated) as info:
        make_puller().pull(f"{token_registry.host}/busybox:oci")
    assert "wrong-password-123" not in str(info.value)
    write_auth(tmp_path / "auth.json", token_registry.host, creds.username, creds.password)
    image = make_puller().pull(f"{token_registry.host}/busybox:oci")
    assert image.layers
    scopes = {s for r in token_registry.token_server.requests for s in r.scopes}
    assert "repository:busybox:pull" in scopes


def test_https_with_ca_bundle_and_without(tls_registry: Registry, make_puller: PullerFactory) -> None:
    ref = f"{tls_registry.host}/busybox:oci"
    with pytest.raises(Unavailable, match="certificate"):
        make_puller().pull(ref)
    image = make_puller(ca_bundle=tls_registry.ca_bundle).pull(ref)
    assert image.repo_tags == (ref,)


# -- coalescing ----------------------------------------------------------------------------------------


def test_concurrent_pulls_fetch_each_blob_once(fault_proxy: FaultProxy, store: ImageStore,
                                               make_puller: PullerFactory) -> None:
    puller = make_puller()
    refs = [f"{fault_proxy.host}/{r}" for r in ("busybox:oci", "busybox:oci", "multi:oci", "busybox:v2s2")]
    results: list[Image | BaseException] = []

    def run(ref: str) -> None:
        try:
            results.append(puller.pull(ref))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in refs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(isinstance(r, Image) for r in results), results
    counts = layer_blobs(fault_proxy)
    # busybox's layer is shared by all four pulls (and by OCI vs v2s2 only if the blob is identical);
    # no blob is fetched twice
    assert counts and max(counts.values()) == 1, counts


# -- faults --------------------------------------------------------------------------------------------


def first_layer_of(fault_proxy: FaultProxy, make_puller: PullerFactory, tmp_path: Path) -> str:
    """The busybox layer blob digest (found by pulling into a scratch store once)."""
    scratch = ImageStore(tmp_path / "scratch")
    image = Puller(scratch, RegistrySettings(auth_file=tmp_path / "none.json")).pull(
        f"{fault_proxy.host}/busybox:oci")
    fault_proxy.clear_records()
    return manifest_layers(scratch, image)[0]


def test_corrupted_layer_names_it_and_retry_completes(fault_proxy: FaultProxy, store: ImageStore,
                                                      make_puller: PullerFactory, tmp_path: Path) -> None:
    layer = first_layer_of(fault_proxy, make_puller, tmp_path)
    fault_proxy.corrupt(digest=layer)
    puller = make_puller()
    with pytest.raises(DigestMismatch, match=rf"layer 1/1 \({layer}\)"):
        puller.pull(f"{fault_proxy.host}/busybox:oci")
    nothing_partial(store)
    assert puller.pull(f"{fault_proxy.host}/busybox:oci").layers


@pytest.mark.parametrize("fault", ["cut", "truncate"])
def test_interrupted_download_resumes_with_range(fault_proxy: FaultProxy, store: ImageStore,
                                                 make_puller: PullerFactory, tmp_path: Path,
                                                 fault: str) -> None:
    layer = first_layer_of(fault_proxy, make_puller, tmp_path)
    if fault == "cut":
        fault_proxy.cut_after(200_000, digest=layer)
    else:
        fault_proxy.truncate(digest=layer)
    image = make_puller().pull(f"{fault_proxy.host}/busybox:oci")
    assert image.layers and fault_proxy.pending_faults == []
    gets = fault_proxy.blob_requests(layer)
    assert len(gets) == 2 and gets[0].range is None
    assert gets[1].range is not None and gets[1].range.startswith("bytes=") and gets[1].range != "bytes=0-"


def test_ignored_range_restarts_and_succeeds(fault_proxy: FaultProxy, make_puller: PullerFactory,
                                             tmp_path: Path) -> None:
    layer = first_layer_of(fault_proxy, make_puller, tmp_path)
    fault_proxy.cut_after(200_000, digest=layer).ignore_range(digest=layer, times=1)
    assert make_puller().pull(f"{fault_proxy.host}/busybox:oci").layers
    assert fault_proxy.pending_faults == []
    assert len(fault_proxy.blob_requests(layer)) == 2


def test_503_twice_then_ok(fault_proxy: FaultProxy, make_puller: PullerFactory, tmp_path: Path) -> None:
    layer = first_layer_of(fault_proxy, make_puller, tmp_path)
    fault_proxy.status(503, times=2, digest=layer)
    assert make_puller().pull(f"{fault_proxy.host}/busybox:oci").layers
    assert len(fault_proxy.blob_requests(layer)) == 3


def test_redirect_to_blob_storage_followed(fault_proxy: FaultProxy, make_puller: PullerFactory) -> None:
    fault_proxy.redirect_blobs()
    image = make_puller().pull(f"{fault_proxy.host}/busybox:oci")
    assert image.layers
    storage = [r for r in fault_proxy.requests if r.listener == "blobstore"]
    assert storage and all(r.authorization is None for r in storage)


def test_registry_stopped_mid_pull(registry: Registry, fault_proxy: FaultProxy, store: ImageStore,
                                   make_puller: PullerFactory, tmp_path: Path) -> None:
    layer = first_layer_of(fault_proxy, make_puller, tmp_path)
    fault_proxy.cut_after(200_000, digest=layer)
    stopped = threading.Event()

    def on_progress(event: ImportProgress) -> None:
        if event.phase == "downloading" and event.bytes > 0 and not stopped.is_set():
            stopped.set()
            registry.stop()

    puller = make_puller(retries=1)
    with pytest.raises(Unavailable, match=rf"layer 1/1 \({layer}\) of {fault_proxy.host}/busybox:oci"):
        puller.pull(f"{fault_proxy.host}/busybox:oci", progress=on_progress)
    nothing_partial(store)
    registry.start()
    assert puller.pull(f"{fault_proxy.host}/busybox:oci").layers


# -- sharing and garbage collection --------------------------------------------------------------------


def test_two_registries_share_layers(registry_factory: RegistryFactory, store: ImageStore,
                                     make_puller: PullerFactory) -> None:
    a, b = registry_factory(), registry_factory()
    puller = make_puller()
    first = puller.pull(f"{a.host}/busybox:oci")
    events: list[ImportProgress] = []
    second = puller.pull(f"{b.host}/busybox:oci", progress=events.append)
    assert second.id == first.id
    assert set(second.repo_tags) == {f"{a.host}/busybox:oci", f"{b.host}/busybox:oci"}
    assert "downloading" not in {e.phase for e in events}
    assert store.disk_usage().layer_count == len(first.layers)


def test_prune_never_removes_a_layer_in_use(registry: Registry, store: ImageStore,
                                            make_puller: PullerFactory) -> None:
    puller = make_puller()
    image = puller.pull(f"{registry.host}/umoci:v3")
    other = puller.pull(f"{registry.host}/busybox:oci")
    # The image record goes (e.g. removed by hand) while a container still runs on its layers.
    (store.root / "images" / f"{image.id.removeprefix('sha256:')}.json").unlink()
    in_use = set(image.layers)
    report = store.prune(image_in_use=lambda i: i == image.id, layers_in_use=lambda: in_use)
    assert all(store.has_layer(d) for d in image.layers) and all(store.has_layer(d) for d in other.layers)
    assert not set(report.layers) & in_use
    report = store.prune(image_in_use=lambda _i: False, layers_in_use=set)
    assert set(report.layers) == set(image.layers) - set(other.layers)
    assert report.freed_bytes > 0
