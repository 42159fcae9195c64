"""Pulling images from OCI registries into the image store.

``Puller.pull(ref)`` resolves ``HOST[:PORT]/REPO[:TAG|@DIGEST]`` to a manifest (an index or Docker
manifest list resolves to the host's platform), fetches and verifies the config, then fetches the layers
the store lacks with a bounded thread pool: each worker downloads one compressed blob into the store's
tmp/ (verified for size and digest), unpacks it through the store's per-layer lock while other downloads
continue, and deletes the compressed blob (the store keeps unpacked layers only, as for archive
imports). The image record and tag are written last (``ImageStore.commit_pulled``), so a failed pull
leaves no image and no partial layer or blob; layers completed before the failure stay (complete and
verified, unreferenced until a retry uses them or ``prune`` collects them), so a retry resumes.

Concurrent pulls coalesce through a process-wide in-flight map keyed by (store, diff_id) for layers and
(store, digest) for configs: the first puller fetches, the others wait and then find the content in the
store; if the first failed, the next waiter takes over. The whole pull runs inside the store's import
session (gc lock shared), so garbage collection never deletes what a pull is about to reference.

Pure decisions — reference splitting, platform selection, manifest parsing — are module functions that
tests call directly.
"""

from __future__ import annotations

import contextlib
import errno
import json
import platform
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from agent.errors import (
    DigestMismatch,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ShoalError,
    Unavailable,
)
from agent.images import auth, distribution, refs
from agent.images.abort import Abort, Aborted
from agent.images.importer import INDEX_TYPES, LAYER_TYPES, MANIFEST_TYPES
from agent.images.store import Image, ImageStore, ImportProgress

MAX_CONFIG = 16 << 20
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
           "armv6l": "arm", "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64"}
_VARIANT = {"armv7l": "v7", "armv6l": "v6", "aarch64": "v8", "arm64": "v8"}


@dataclass(frozen=True)
class RegistrySettings:
    """How the agent talks to registries (from the agent's configuration)."""

    auth_file: Path  # <agent root>/auth.json in Docker's config.json layout
    insecure: tuple[str, ...] = ()  # "host[:port]" allowed over plain HTTP; loopback always is
    ca_bundle: Path | None = None  # extra CA bundle for HTTPS; system CAs otherwise
    timeout: float = 30.0
    retries: int = 4  # per request, exponential backoff with jitter, capped
    max_parallel: int = 3  # concurrent layer downloads per pull
    blob_deadline: float = 3600.0  # seconds one blob (config or layer) may take to download, all retries
    max_layer_size: int = 10 << 30  # largest compressed layer a manifest may declare


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True)
class PullTarget:
    """A pull reference split into registry, repository path and tag-or-digest."""

    registry: str  # "host[:port]"
    path: str  # repository path inside the registry, e.g. "team/app"
    tag: str | None
    digest: str | None
    name: str  # "host[:port]/path" as the user wrote it

    @property
    def reference(self) -> str:
        return self.digest if self.digest is not None else (self.tag or refs.DEFAULT_TAG)

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else f"{self.name}:{self.tag}"


@dataclass(frozen=True)
class BlobDescriptor:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class ImageManifest:
    """The parts of an image manifest a pull needs."""

    config: BlobDescriptor
    layers: tuple[BlobDescriptor, ...]


def host_platform() -> Platform:
    """The platform an index resolves to on this host, from the running machine (GOARCH names)."""
    machine = platform.machine()
    arch = _GOARCH.get(machine, machine)
    return Platform("linux", arch, _VARIANT.get(machine, "") if arch == "arm" else "")


def parse_pull_reference(text: str) -> PullTarget:
    """``HOST[:PORT]/REPO[:TAG]`` or ``…@sha256:DIGEST``; a reference without a registry is refused."""
    ref = refs.parse_reference(text)
    first, slash, path = ref.repository.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        raise InvalidArgument(
            f"pull needs a registry: use HOST[:PORT]/REPO[:TAG] (got {text!r}; Shoal has no default registry)"
        )
    return PullTarget(registry=first, path=path, tag=ref.tag, digest=ref.digest, name=ref.repository)


def select_platform(index: Any, wanted: Platform, *, what: str) -> dict[str, Any]:
    """The descriptor in an OCI index / Docker manifest list for ``wanted``; an arm variant must match
    when both sides give one. Raises NotFound listing the platforms available."""
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise InvalidArgument(f"{what} is not an image index: no manifests list")
    available: list[str] = []
    for desc in manifests:
        plat = desc.get("platform") if isinstance(desc, dict) else None
        if not isinstance(plat, dict):
            continue
        found = Platform(str(plat.get("os", "")), str(plat.get("architecture", "")),
                         str(plat.get("variant", "")))
        available.append(str(found))
        if (found.os, found.architecture) != (wanted.os, wanted.architecture):
            continue
        if wanted.variant and found.variant and wanted.variant != found.variant:
            continue
        return dict(desc)
    listed = ", ".join(available) if available else "none"
    raise NotFound(f"{what} has no image for {wanted} (available: {listed})")


def _descriptor(doc: Any, what: str) -> BlobDescriptor:
    if not isinstance(doc, dict):
        raise InvalidArgument(f"malformed {what} descriptor")
    digest, size = doc.get("digest"), doc.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
        raise InvalidArgument(f"{what} descriptor needs a digest and a size")
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise InvalidArgument(f"{what} digest {digest!r} is not sha256")
    return BlobDescriptor(digest=digest, size=size, media_type=str(doc.get("mediaType", "")))


def parse_manifest(data: bytes, *, what: str) -> ImageManifest:
    """Config and layer descriptors of an OCI or Docker v2 schema 2 image manifest."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"{what}: unsupported manifest schema (need schemaVersion 2)")
    layers_doc = doc.get("layers")
    if not isinstance(layers_doc, list):
        raise InvalidArgument(f"{what} has no layers list")
    layers = tuple(_descriptor(d, "layer") for d in layers_doc)
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise InvalidArgument(
                f"{what}: layer {layer.digest} has unsupported media type {layer.media_type!r}")
    return ImageManifest(config=_descriptor(doc.get("config"), "config"), layers=layers)


def check_declared_sizes(manifest: ImageManifest, *, limit: int, what: str) -> None:
    """Refuses a manifest declaring a layer larger than ``limit`` before a byte of it is fetched: the
    declared size is what the download trusts as its end (a registry could otherwise stream 2^62
    bytes)."""
    total = len(manifest.layers)
    for index, layer in enumerate(manifest.layers, start=1):
        if layer.size > limit:
            raise InvalidArgument(
                f"{what}: layer {index}/{total} ({layer.digest}) declares {layer.size} bytes, more than the"
                f" agent's limit of {limit} (--max-layer-size)")


def config_diff_ids(config: bytes, *, what: str) -> list[str]:
    try:
        doc = json.loads(config)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"{what} is not valid JSON") from None
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument(f"{what} has no rootfs.diff_ids list")
    for d in diff_ids:
        _descriptor({"digest": d, "size": 0}, "diff_id")
    return list(diff_ids)


# -- process-wide coalescing ---------------------------------------------------------------------------

class _Flight:
    """One fetch in progress; ``waiters`` counts the callers waiting on it (observable by tests) and
    ``wakers`` are their events, set when the fetch ends (each waiter's own abort sets its event too)."""

    def __init__(self) -> None:
        self.waiters = 0
        self.wakers: list[threading.Event] = []


_inflight_lock = threading.Lock()
_inflight: dict[tuple[str, str], _Flight] = {}


@contextmanager
def _leadership(key: tuple[str, str], abort: Abort) -> Iterator[bool]:
    """Yields True to the one caller that should fetch ``key`` now; others wait for it, then get False
    (they re-check the store and, if the leader failed, come back to lead). A waiter's own ``abort``
    ends its wait (raising Aborted): a caller that went away never stays queued behind another's fetch."""
    wake = threading.Event()
    with _inflight_lock:
        flight = _inflight.get(key)
        leader = flight is None
        if flight is None:
            flight = _inflight[key] = _Flight()
        else:
            flight.waiters += 1
            flight.wakers.append(wake)
    if not leader:
        with abort.listen(lambda _reason: wake.set()):
            wake.wait()
        abort.check(f"waiting for another pull of {key[1]}")
        yield False
        return
    try:
        yield True
    finally:
        with _inflight_lock:
            del _inflight[key]
            wakers = list(flight.wakers)
        for waker in wakers:
            waker.set()


SIBLING_FAILED = "another layer of this pull failed"


class Puller:
    """Pulls images into one store; thread-safe, one registry client (connection pool) per registry."""

    def __init__(
        self,
        store: ImageStore,
        settings: RegistrySettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._transport = transport  # tests: an in-process fake registry
        self._sleep = sleep
        self._clients: dict[str, distribution.RegistryClient] = {}
        self._clients_lock = threading.Lock()
        self._closing = Abort()  # set by close(): every pull in progress stops
        self.platform = host_platform()

    def close(self) -> None:
        """Stops every pull in progress (they raise Aborted: "the agent is stopping") and closes the
        connection pools."""
        self._closing.set("the agent is stopping")
        with self._clients_lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def client(self, registry: str) -> distribution.RegistryClient:
        # auth.json is re-read on every pull, so credentials a user adds after an "authentication
        # required" error apply to the next attempt without restarting the agent.
        credentials = auth.load_credentials(self.settings.auth_file, registry)
        with self._clients_lock:
            found = self._clients.get(registry)
            if found is not None and found.credentials == credentials:
                return found
        client = distribution.RegistryClient(
            registry,
            credentials=credentials,
            settings=distribution.ClientSettings(
                timeout=self.settings.timeout, retries=self.settings.retries,
                ca_bundle=self.settings.ca_bundle, insecure=self.settings.insecure,
                blob_deadline=self.settings.blob_deadline,
            ),
            auth_hint=str(self.settings.auth_file),
            transport=self._transport,
            **({"sleep": self._sleep} if self._sleep is not None else {}),
        )
        with self._clients_lock:
            # A replaced client is not closed: a concurrent pull may still be using it; its connections
            # are released when it is garbage-collected.
            self._clients[registry] = client
        return client

    def pull(self, ref: str, *, progress: Callable[[ImportProgress], None] | None = None,
             abort: Abort | None = None) -> Image:
        """Pulls ``ref`` and returns the stored image (tagged with ``ref`` as given when it has a tag).

        Blocking; called from worker threads; thread-safe; concurrent pulls coalesce per blob. Setting
        ``abort`` (the caller went away) stops this pull's downloads, including a read blocked right now.
        Raises InvalidArgument (bad reference, unsupported media type), DigestMismatch (naming the blob),
        NotFound, Unauthenticated, Unavailable (naming the layer; Aborted when stopped),
        ResourceExhausted (disk full).
        """
        with self._closing.scope() as local, contextlib.ExitStack() as stack:
            if abort is not None:
                stack.enter_context(abort.listen(local.set))
            return self._pull(ref, progress=progress, abort=local)

    def _pull(self, ref: str, *, progress: Callable[[ImportProgress], None] | None, abort: Abort) -> Image:
        target = parse_pull_reference(ref)
        self.store.check_free_space(what=f"pull of {ref}")
        report = _serialized(progress)
        report(ImportProgress("resolving"))
        client = self.client(target.registry)
        manifest = client.get_manifest(target.path, target.reference, abort=abort)
        index: tuple[str, bytes] | None = None
        if manifest.media_type in INDEX_TYPES:
            index = (manifest.digest, manifest.data)
            desc = select_platform(json.loads(manifest.data), self.platform, what=f"index {target}")
            chosen = _descriptor(desc, "manifest")
            manifest = client.get_manifest(target.path, chosen.digest, abort=abort)
            if manifest.media_type in INDEX_TYPES:
                raise InvalidArgument(f"{target}: nested image indexes are not supported")
        if manifest.media_type not in MANIFEST_TYPES:
            raise InvalidArgument(
                f"{target}: unsupported manifest media type {manifest.media_type!r} (need an OCI or Docker"
                " v2 schema 2 manifest, or an index of them)"
            )
        parsed = parse_manifest(manifest.data, what=f"manifest {target}")
        check_declared_sizes(parsed, limit=self.settings.max_layer_size, what=str(target))
        pulled_as = f"{target.name}@{index[0] if index is not None else manifest.digest}"
        # No gc lock while talking to the registry: image rm and prune never wait for a download. The
        # layers are held instead, so a prune between one layer's unpack and the commit keeps them.
        config = self._config(client, target, parsed.config, abort=abort)
        diff_ids = config_diff_ids(config, what=f"config {parsed.config.digest} of {target}")
        if len(diff_ids) != len(parsed.layers):
            raise InvalidArgument(
                f"{target}: manifest lists {len(parsed.layers)} layers but its config has"
                f" {len(diff_ids)} diff_ids"
            )
        with self.store.hold_layers(diff_ids):
            self._layers(client, target, list(zip(parsed.layers, diff_ids, strict=True)), report,
                         abort=abort)
            with self.store.import_session():
                image = self.store.commit_pulled(
                    config=config, config_digest=parsed.config.digest, manifest=manifest.data,
                    manifest_digest=manifest.digest, index=index, layers=diff_ids,
                    names=(f"{target.name}:{target.tag}",) if target.tag is not None else (),
                    repo_digests=(pulled_as,),
                )
        report(ImportProgress("done", total=len(diff_ids)))
        return image

    # -- config ---------------------------------------------------------------------------------------

    def _config(self, client: distribution.RegistryClient, target: PullTarget, desc: BlobDescriptor, *,
                abort: Abort) -> bytes:
        if desc.size > MAX_CONFIG:
            raise InvalidArgument(f"{target}: config {desc.digest} is {desc.size} bytes; refusing")
        key = (str(self.store.root), desc.digest)
        while True:
            stored = self.store.read_blob(desc.digest)
            if stored is not None:
                return stored
            with _leadership(key, abort) as leader:
                if not leader:
                    continue
                with self.store.temp_file("config") as (_path, f):
                    client.fetch_blob(target.path, desc.digest, size=desc.size, out=f, abort=abort)
                    f.seek(0)
                    data = f.read()
                # Visible now (verified): concurrent pulls of the same image read it instead of fetching.
                # A prune may collect it before the commit; the commit writes it again.
                self.store.put_blob(desc.digest, data)
                return data

    # -- layers ---------------------------------------------------------------------------------------

    def _layers(
        self,
        client: distribution.RegistryClient,
        target: PullTarget,
        layers: list[tuple[BlobDescriptor, str]],
        report: Callable[[ImportProgress], None],
        *,
        abort: Abort,
    ) -> None:
        total = len(layers)
        pending: dict[Future[None], int] = {}
        with abort.scope() as layers_abort, ThreadPoolExecutor(
                max_workers=max(1, self.settings.max_parallel), thread_name_prefix="pull-layer") as pool:
            with self.store.import_session():  # checked under gc: a prune running now has finished
                present = {diff_id for _desc, diff_id in layers if self.store.has_layer(diff_id)}
            for index, (desc, diff_id) in enumerate(layers, start=1):
                if diff_id in present:
                    report(ImportProgress("layer-exists", diff_id, index, total, already_present=True))
                    continue
                future = pool.submit(self._ensure_layer, client, target, desc, diff_id,
                                     index=index, total=total, report=report, abort=layers_abort)
                pending[future] = index
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                # Stops the other downloads at once (their sockets are shut down), not after their
                # current read.
                layers_abort.set(SIBLING_FAILED)
                for future in pending:
                    future.cancel()
        if failed:
            first = min(failed, key=lambda f: pending[f])
            exc = first.exception()
            assert exc is not None
            raise exc

    def _ensure_layer(
        self,
        client: distribution.RegistryClient,
        target: PullTarget,
        desc: BlobDescriptor,
        diff_id: str,
        *,
        index: int,
        total: int,
        report: Callable[[ImportProgress], None],
        abort: Abort,
    ) -> None:
        where = f"layer {index}/{total} ({desc.digest}) of {target}"
        key = (str(self.store.root), diff_id)
        while True:
            try:
                with _leadership(key, abort) as leader:
                    if not leader:
                        continue
                    if self.store.has_layer(diff_id):
                        report(ImportProgress("layer-exists", diff_id, index, total, already_present=True))
                        return
                    self._download_and_unpack(client, target, desc, diff_id, index=index, total=total,
                                              report=report, abort=abort)
                    return
            except Aborted:
                if abort.reason == SIBLING_FAILED:
                    return  # the sibling's error is the one reported
                raise
            except ShoalError as exc:
                raise type(exc)(f"{where}: {exc}") from None
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ResourceExhausted(f"{where}: no space left on device in {self.store.root}"
                                            ) from None
                raise Unavailable(f"{where}: {exc}") from None

    def _download_and_unpack(
        self,
        client: distribution.RegistryClient,
        target: PullTarget,
        desc: BlobDescriptor,
        diff_id: str,
        *,
        index: int,
        total: int,
        report: Callable[[ImportProgress], None],
        abort: Abort,
    ) -> None:
        def on_bytes(done: int) -> None:
            report(ImportProgress("downloading", diff_id, index, total, done, desc.size))

        with self.store.temp_file("blob") as (path, f):
            report(ImportProgress("downloading", diff_id, index, total, 0, desc.size))
            client.fetch_blob(target.path, desc.digest, size=desc.size, out=f, progress=on_bytes,
                              abort=abort)
            f.flush()

            def opener() -> BinaryIO:
                # A fresh descriptor so the unpacker's reader thread owns its file position.
                return open(path, "rb", buffering=0)  # closed by ensure_layer

            try:
                with self.store.import_session():  # local work only: unpack and commit the layer
                    self.store.ensure_layer(diff_id, opener, size=desc.size, media_type=desc.media_type,
                                            index=index, total=total, progress=report)
            except DigestMismatch as exc:
                raise DigestMismatch(f"blob {desc.digest} unpacked to the wrong content: {exc}") from None


def _serialized(progress: Callable[[ImportProgress], None] | None) -> Callable[[ImportProgress], None]:
    """Progress callbacks come from several layer workers; deliver them one at a time."""
    if progress is None:
        return lambda _event: None
    lock = threading.Lock()

    def report(event: ImportProgress) -> None:
        with lock:
            progress(event)

    return report
