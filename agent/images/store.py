"""The agent's content-addressed image store: blobs, shared unpacked layers, image records and tags.

Layout under ``root`` (``<agent-root>/images``)::

    blobs/sha256/<hex>     manifest and config blobs, verified before they become visible
    layers/<hex>/          one unpacked layer per diff_id, used directly as an overlay lowerdir
    layerdb/<hex>.json     layer metadata (kept outside the layer so the lowerdir holds only the rootfs)
    images/<hex>.json      image records keyed by image id (the config digest)
    tags.json              "name:tag" → image id
    locks/, tmp/           flock files; temporaries (same filesystem, so commits are renames)

Concurrency: a layer is unpacked under its own flock and committed by rename, so concurrent imports of
the same layer (threads or processes) unpack it once. Local work (unpacking, committing records) holds
``gc.lock`` shared; ``remove`` and ``prune`` hold it exclusive, so garbage collection never deletes a layer
an import is about to reference. Network I/O never runs under ``gc.lock``: a pull downloads into a
temporary file that is flocked while in use (prune skips it), and ``hold_layers`` keeps the layers a pull
will reference from being collected between their unpack and the image's commit — so ``image rm`` and
``prune`` never wait for a registry. Record and tag updates are serialised by ``meta.lock`` and written
temp+rename. Compressed layer blobs are not
kept after a verified unpack: the unpacked directory is what containers use and the diff_id identifies it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from agent import durable
from agent.errors import FailedPrecondition, InvalidArgument, NotFound
from agent.images import importer, layers, refs
from agent.images import reserve as reserves


@dataclass(frozen=True)
class ImageConfig:
    """The runtime-relevant part of an image config (OCI ``config`` object)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    stop_signal: str = ""


@dataclass(frozen=True)
class Image:
    """An image in the store. ``layers`` are diff_ids, bottom-first; ``size`` is the unpacked tar bytes."""

    id: str  # "sha256:<hex>" of the config blob
    manifest_digest: str | None
    repo_tags: tuple[str, ...]
    created: str | None
    size: int
    layers: tuple[str, ...]
    architecture: str
    os: str
    config: ImageConfig
    repo_digests: tuple[str, ...] = ()  # "repo@sha256:…" an image was pulled by (manifest or index digest)


@dataclass(frozen=True)
class PruneReport:
    """What ``prune`` removed: image ids, layer diff_ids, blob digests and the bytes that freed."""

    images: list[str]
    layers: list[str]
    blobs: list[str]
    freed_bytes: int


@dataclass(frozen=True)
class ImageUsage:
    """One image's footprint: ``size`` is all its layers, ``shared_size`` the part other images use too."""

    id: str
    repo_tags: tuple[str, ...]
    size: int
    shared_size: int
    layers: int


@dataclass(frozen=True)
class DiskUsage:
    """The store's footprint (layer bytes are uncompressed tar bytes, as in ``Image.size``)."""

    images: list[ImageUsage]
    layer_count: int
    layer_bytes: int
    blob_bytes: int


@dataclass(frozen=True)
class ImportProgress:
    """One progress event of an import.

    phase: "resolving" (reading index/manifest/config), "downloading" (pulls only: ``bytes`` of
    ``bytes_total`` compressed bytes of layer ``index``/``total`` received), "unpacking" (``bytes`` of
    ``bytes_total``
    compressed bytes of layer ``index``/``total`` read), "layer-exists" (already in the store, skipped;
    ``already_present`` is set), "layer-done", "done".
    """

    phase: str
    layer: str | None = None  # diff_id
    index: int = 0  # 1-based
    total: int = 0
    bytes: int = 0
    bytes_total: int | None = None
    already_present: bool = False


def image_config_from_json(doc: Any) -> tuple[ImageConfig, str, str, str | None]:
    """Image config JSON → (ImageConfig, architecture, os, created)."""
    if not isinstance(doc, dict):
        raise InvalidArgument("image config is not a JSON object")
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise InvalidArgument("image config's 'config' is not an object")

    def strings(key: str) -> tuple[str, ...]:
        value = cfg.get(key) or ()
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"image config field {key} must be a list of strings")
        return tuple(value)

    labels = cfg.get("Labels") or {}
    ports = cfg.get("ExposedPorts") or {}
    config = ImageConfig(
        entrypoint=strings("Entrypoint"),
        cmd=strings("Cmd"),
        env=strings("Env"),
        working_dir=str(cfg.get("WorkingDir") or ""),
        user=str(cfg.get("User") or ""),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        exposed_ports=tuple(sorted(str(p) for p in ports)) if isinstance(ports, dict) else (),
        stop_signal=str(cfg.get("StopSignal") or ""),
    )
    created = doc.get("created")
    return (config, str(doc.get("architecture", "")), str(doc.get("os", "")),
            created if isinstance(created, str) else None)


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    # One open file description per acquisition, so flock also excludes threads of this process.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def _in_use(path: Path) -> bool:
    """A regular temporary file someone holds flocked (a download in progress, see ``temp_file``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False
    finally:
        os.close(fd)


def _tree_bytes(path: Path) -> int:
    """Disk bytes (allocated blocks) under ``path``, each hard-linked inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        top = path.lstat()
    except FileNotFoundError:
        return 0
    stack = [path] if path.is_dir() and not path.is_symlink() else []
    total += top.st_blocks * 512
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return total


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64:
        raise InvalidArgument(f"malformed digest {digest!r}")
    return hexpart


class ImageStore:
    """Content-addressed images on the local disk; see the module docstring for layout and locking."""

    def __init__(self, root: Path, *, limits: layers.UnpackLimits | None = None,
                 reserve: reserves.FreeSpaceReserve = reserves.OFF) -> None:
        self.root = root
        self.limits = limits if limits is not None else layers.UnpackLimits()
        # Free space a pull or an import must find before it starts (the agent passes --min-free-space).
        self.reserve = reserve
        # diff_id → how many pulls in this process hold it (see hold_layers); only the agent pulls.
        self._holds: dict[str, int] = {}
        self._holds_lock = threading.Lock()
        # 0700 whatever the agent's root is: layers keep their images' device nodes and setuid files.
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.chmod(0o700)
        for sub in ("blobs/sha256", "layers", "layerdb", "images", "locks", "tmp"):
            (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._clean_stale_temporaries()

    # -- paths --------------------------------------------------------------------------------------

    def layer_dir(self, diff_id: str) -> Path:
        return self.root / "layers" / _hex(diff_id)

    def layer_paths(self, image: Image) -> list[Path]:
        """The image's layer directories, top-most first (overlayfs lowerdir order)."""
        return [self.layer_dir(d) for d in reversed(image.layers)]

    def has_layer(self, diff_id: str) -> bool:
        hexd = _hex(diff_id)
        return (self.root / "layers" / hexd).is_dir() and (self.root / "layerdb" / f"{hexd}.json").is_file()

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / _hex(digest)

    def check_free_space(self, *, what: str) -> None:
        """``ResourceExhausted`` (naming free space and reserve) if a pull or import must not start."""
        reserves.check_free_space(self.root, self.reserve, what=what)

    # -- import -------------------------------------------------------------------------------------

    def import_archive(
        self,
        path: Path,
        *,
        name: str | None = None,
        select: str | None = None,
        progress: Callable[[ImportProgress], None] | None = None,
    ) -> Image:
        """Imports an OCI layout (dir or tar) or docker-archive tar and returns the stored image.

        ``name`` ("repo[:tag]") overrides the archive's own names; ``select`` picks one image by tag or
        name when the archive holds several. A failed import leaves no new layer, blob or temp file.
        """
        target = refs.parse_reference(name) if name is not None else None
        if target is not None and target.digest is not None:
            raise InvalidArgument(f"cannot name an image with a digest: {name}")
        report = progress if progress is not None else (lambda _event: None)
        self.check_free_space(what=f"import of {path.name}")
        created: list[str] = []
        try:
            with _flock(self._lock("gc"), fcntl.LOCK_SH), importer.Archive(path) as archive:
                report(ImportProgress("resolving"))
                found = archive.find_image(select)
                config_doc = json.loads(found.config)
                image_config_from_json(config_doc)  # refuse a malformed config before unpacking anything
                total = len(found.layers)
                sizes: list[int] = []
                for index, source in enumerate(found.layers, start=1):
                    size, new = self._ensure_layer(archive, source, index=index, total=total, report=report)
                    sizes.append(size)
                    if new:
                        created.append(source.diff_id)
                names = (target.name_tag,) if target is not None else found.names
                blobs = {found.config_digest: found.config}
                if found.manifest is not None and found.manifest_digest is not None:
                    blobs[found.manifest_digest] = found.manifest
                image = self._commit_image(
                    config_doc, config_digest=found.config_digest, manifest_digest=found.manifest_digest,
                    blobs=blobs, layers=[s.diff_id for s in found.layers], size=sum(sizes), names=names,
                )
        except BaseException:
            if created:
                self._collect_layers(created)
            raise
        report(ImportProgress("done", total=total))
        return image

    def _commit_image(
        self,
        config_doc: Any,
        *,
        config_digest: str,
        manifest_digest: str | None,
        blobs: dict[str, bytes],
        layers: list[str],
        size: int,
        names: tuple[str, ...],
        repo_digests: tuple[str, ...] = (),
    ) -> Image:
        """Makes an image visible: its verified small blobs, then its record, then its tags — the last
        step of both archive imports and registry pulls. The caller holds ``gc`` shared and has every
        layer present. A record that already exists (same config, e.g. pulled from a second registry)
        keeps its repo digests and gains the new ones."""
        config, arch, os_name, created_at = image_config_from_json(config_doc)
        with _flock(self._lock("meta"), fcntl.LOCK_EX):
            for digest, data in blobs.items():
                self._write_blob(digest, data)
            record_path = self.root / "images" / f"{_hex(config_digest)}.json"
            previous: list[str] = []
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                previous = list(json.loads(record_path.read_text()).get("repo_digests", []))
            record = {
                "id": config_digest,
                "manifest_digest": manifest_digest,
                "created": created_at,
                "size": size,
                "layers": layers,
                "architecture": arch,
                "os": os_name,
                "config": asdict(config),
                "repo_digests": list(dict.fromkeys([*previous, *repo_digests])),
            }
            self._atomic_write(record_path, record)
            tags = self._read_tags()
            tags.update({n: config_digest for n in names})
            self._write_tags(tags)
            return self._load(config_digest, tags)

    # -- building blocks for registry pulls ---------------------------------------------------------

    @contextlib.contextmanager
    def import_session(self) -> Iterator[None]:
        """Holds the gc lock shared: while inside, ``remove``/``prune`` cannot delete a layer or blob the
        caller is about to reference. Pulls wrap their whole run in one session."""
        with _flock(self._lock("gc"), fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def hold_layers(self, diff_ids: list[str]) -> Iterator[None]:
        """While inside, ``prune`` and ``remove`` keep these layers even if no image references them: a
        pull holds the layers of the image it is about to commit from before it checks which it has
        (check inside ``import_session``) until the commit, without holding ``gc.lock`` meanwhile."""
        with self._holds_lock:
            for d in diff_ids:
                self._holds[d] = self._holds.get(d, 0) + 1
        try:
            yield
        finally:
            with self._holds_lock:
                for d in diff_ids:
                    self._holds[d] -= 1
                    if not self._holds[d]:
                        del self._holds[d]

    def _held_layers(self) -> set[str]:
        with self._holds_lock:
            return set(self._holds)

    @contextlib.contextmanager
    def temp_file(self, prefix: str) -> Iterator[tuple[Path, BinaryIO]]:
        """A new file in tmp/ (same filesystem as the store), removed on exit whatever happens. It is
        flocked while open, so ``prune`` (which may run meanwhile: no gc lock is needed) leaves it."""
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix=f".{prefix}-")
        path = Path(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(fd, "w+b") as f:
                yield path, f
        finally:
            path.unlink(missing_ok=True)

    def read_blob(self, digest: str) -> bytes | None:
        """A stored (already verified) blob, or None."""
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def put_blob(self, digest: str, data: bytes) -> None:
        """Stores a small blob the caller verified against ``digest``; visible only once complete."""
        self._write_blob(digest, data)

    def layer_size(self, diff_id: str) -> int:
        return int(json.loads((self.root / "layerdb" / f"{_hex(diff_id)}.json").read_text())["size"])

    def ensure_layer(
        self,
        diff_id: str,
        opener: Callable[[], BinaryIO],
        *,
        size: int | None,
        media_type: str,
        index: int,
        total: int,
        progress: Callable[[ImportProgress], None] | None = None,
    ) -> tuple[int, bool]:
        """Unpacks the layer ``opener()`` streams (plain or gzip tar) unless it is present, under the
        layer's lock; returns (uncompressed size, newly unpacked). Call inside ``import_session``."""
        report = progress if progress is not None else (lambda _event: None)
        return self._ensure_layer_stream(diff_id, opener, size=size, media_type=media_type,
                                         index=index, total=total, report=report)

    def commit_pulled(
        self,
        *,
        config: bytes,
        config_digest: str,
        manifest: bytes,
        manifest_digest: str,
        index: tuple[str, bytes] | None,
        layers: list[str],
        names: tuple[str, ...],
        repo_digests: tuple[str, ...],
    ) -> Image:
        """Records a pulled image whose blobs the caller verified and whose layers are all present.
        Call inside ``import_session``."""
        missing = [d for d in layers if not self.has_layer(d)]
        if missing:
            raise FailedPrecondition(f"cannot record image {config_digest}: layers missing {missing}")
        blobs = {config_digest: config, manifest_digest: manifest}
        if index is not None:
            blobs[index[0]] = index[1]
        return self._commit_image(
            json.loads(config), config_digest=config_digest, manifest_digest=manifest_digest, blobs=blobs,
            layers=layers, size=sum(self.layer_size(d) for d in layers), names=names,
            repo_digests=repo_digests,
        )

    def _ensure_layer(
        self,
        archive: importer.Archive,
        source: importer.LayerSource,
        *,
        index: int,
        total: int,
        report: Callable[[ImportProgress], None],
    ) -> tuple[int, bool]:
        return self._ensure_layer_stream(
            source.diff_id, lambda: archive.open_layer(source), size=source.size,
            media_type=source.media_type, index=index, total=total, report=report,
        )

    def _ensure_layer_stream(
        self,
        diff_id: str,
        opener: Callable[[], BinaryIO],
        *,
        size: int | None,
        media_type: str,
        index: int,
        total: int,
        report: Callable[[ImportProgress], None],
    ) -> tuple[int, bool]:
        """Unpacks a layer unless present; returns (uncompressed size, newly unpacked)."""
        hexd = _hex(diff_id)
        meta_path = self.root / "layerdb" / f"{hexd}.json"
        dest = self.root / "layers" / hexd
        with _flock(self.root / "locks" / f"layer-{hexd}.lock", fcntl.LOCK_EX):
            if dest.is_dir() and meta_path.is_file():
                report(ImportProgress("layer-exists", diff_id, index, total, already_present=True))
                return int(json.loads(meta_path.read_text())["size"]), False
            if dest.exists():  # a crash between rename and metadata write: redo it
                self._discard(dest)

            def on_bytes(done: int) -> None:
                report(ImportProgress("unpacking", diff_id, index, total, done, size))

            stream = opener()
            try:
                info = layers.unpack_layer(
                    stream, dest, expected_diff_id=diff_id, work_dir=self.root / "tmp",
                    progress=on_bytes, limits=self.limits,
                )
            finally:
                stream.close()
            try:
                self._atomic_write(meta_path, {"diff_id": diff_id, "size": info.size,
                                               "entries": info.entries, "media_type": media_type})
            except BaseException:
                self._discard(dest)
                raise
            report(ImportProgress("layer-done", diff_id, index, total, size or 0, size))
            return info.size, True

    # -- queries ------------------------------------------------------------------------------------

    def list_images(self) -> list[Image]:
        tags = self._read_tags()
        images = []
        for entry in sorted((self.root / "images").glob("*.json")):
            with contextlib.suppress(FileNotFoundError):  # removed concurrently
                images.append(self._load("sha256:" + entry.stem, tags))
        return images

    def resolve(self, ref: str) -> Image:
        """An image by ``name[:tag]``, ``name@sha256:…``, full id or unique id prefix (≥ 4 hex)."""
        tags = self._read_tags()
        image_id = self._resolve_id(ref, tags)
        try:
            return self._load(image_id, tags)
        except FileNotFoundError:
            raise NotFound(f"no such image: {ref}") from None

    def _resolve_id(self, ref: str, tags: dict[str, str]) -> str:
        parsed: refs.ImageReference | None
        try:
            parsed = refs.parse_reference(ref)
        except InvalidArgument:
            parsed = None
        if parsed is not None and parsed.digest is None and parsed.name_tag in tags:
            return tags[parsed.name_tag]
        if parsed is not None and parsed.digest is not None:
            for image in self.list_images():
                pulled_as = {d.partition("@")[2] for d in image.repo_digests}
                if parsed.digest in (image.manifest_digest, image.id) or parsed.digest in pulled_as:
                    return image.id
            raise NotFound(f"no such image: {parsed}")
        id_ref = refs.parse_image_id(ref)
        if id_ref is not None:
            if id_ref.startswith("sha256:"):
                if (self.root / "images" / f"{_hex(id_ref)}.json").is_file():
                    return id_ref
            else:
                matches = [p.stem for p in (self.root / "images").glob(f"{id_ref}*.json")]
                if len(matches) == 1:
                    return "sha256:" + matches[0]
                if len(matches) > 1:
                    raise InvalidArgument(f"image id prefix {ref!r} matches {len(matches)} images")
        if parsed is None and id_ref is None:
            refs.parse_reference(ref)  # re-raise the parse error: the reference is malformed
        raise NotFound(f"no such image: {parsed.name_tag if parsed is not None else ref}")

    # -- removal ------------------------------------------------------------------------------------

    def remove(self, ref: str, *, in_use: Callable[[str], bool]) -> list[str]:
        """Removes a tag, or the image when its last tag goes (or when named by id).

        Returns the untagged names followed by the deleted image id if the image went, e.g.
        ["busybox:v1", "sha256:…"] (ids are the entries starting with "sha256:"). Refused with
        FailedPrecondition if the image would be deleted while ``in_use(image_id)`` is true. Layers no
        other image uses are deleted with the image.
        """
        with _flock(self._lock("gc"), fcntl.LOCK_EX), _flock(self._lock("meta"), fcntl.LOCK_EX):
            tags = self._read_tags()
            image = self._load(self._resolve_id(ref, tags), tags)
            parsed: refs.ImageReference | None
            try:
                parsed = refs.parse_reference(ref)
            except InvalidArgument:
                parsed = None
            by_tag = parsed is not None and parsed.digest is None and tags.get(parsed.name_tag) == image.id
            if by_tag and parsed is not None and len(image.repo_tags) > 1:
                del tags[parsed.name_tag]
                self._write_tags(tags)
                return [parsed.name_tag]
            if in_use(image.id):
                shown = parsed.name_tag if by_tag and parsed is not None else refs.short_id(image.id)
                raise FailedPrecondition(
                    f"image {shown} is in use by a container; remove the container first"
                )
            done = list(image.repo_tags)
            for t in image.repo_tags:
                del tags[t]
            self._write_tags(tags)
            (self.root / "images" / f"{_hex(image.id)}.json").unlink()
            for digest in (image.id, image.manifest_digest):
                if digest is not None:
                    with contextlib.suppress(FileNotFoundError):
                        self.blob_path(digest).unlink()
            done.append(image.id)
            self._collect_unreferenced(image.layers)
            return done

    def prune(
        self, *, image_in_use: Callable[[str], bool], layers_in_use: Callable[[], set[str]]
    ) -> PruneReport:
        """Removes untagged images (no tag and no pulled-by digest) that no container uses, then every
        layer and blob no remaining image references, then leftovers in tmp/.

        A layer in ``layers_in_use()`` (diff_ids the runtime's containers use) is never removed, even if
        no image record references it: double protection against a record lost or edited by hand.
        Holds the gc lock exclusively, so it waits for running imports/pulls and they wait for it.
        """
        with _flock(self._lock("gc"), fcntl.LOCK_EX), _flock(self._lock("meta"), fcntl.LOCK_EX):
            freed = 0
            removed_images: list[str] = []
            for image in self.list_images():
                if image.repo_tags or image.repo_digests or image_in_use(image.id):
                    continue
                (self.root / "images" / f"{_hex(image.id)}.json").unlink()
                removed_images.append(image.id)
            remaining = self.list_images()
            keep_layers = ({d for image in remaining for d in image.layers} | set(layers_in_use())
                           | self._held_layers())
            removed_layers: list[str] = []
            for entry in sorted({*os.listdir(self.root / "layers"),
                                 *(p.removesuffix(".json") for p in os.listdir(self.root / "layerdb"))}):
                diff_id = f"sha256:{entry}"
                if diff_id in keep_layers:
                    continue
                meta = self.root / "layerdb" / f"{entry}.json"
                try:
                    freed += int(json.loads(meta.read_text())["size"])
                except (FileNotFoundError, ValueError, KeyError):
                    freed += _tree_bytes(self.root / "layers" / entry)
                meta.unlink(missing_ok=True)
                self._discard(self.root / "layers" / entry)
                (self.root / "locks" / f"layer-{entry}.lock").unlink(missing_ok=True)
                removed_layers.append(diff_id)
            keep_blobs = {d for image in remaining
                          for d in (image.id, image.manifest_digest,
                                    *(r.partition("@")[2] for r in image.repo_digests)) if d}
            removed_blobs: list[str] = []
            for entry in sorted(os.listdir(self.root / "blobs" / "sha256")):
                digest = f"sha256:{entry}"
                if digest in keep_blobs:
                    continue
                path = self.root / "blobs" / "sha256" / entry
                with contextlib.suppress(FileNotFoundError):
                    freed += path.stat().st_size
                    path.unlink()
                    removed_blobs.append(digest)
            for leftover in (self.root / "tmp").iterdir():
                # Nobody is unpacking (gc is ours), but a pull may be downloading into a locked file.
                if _in_use(leftover):
                    continue
                freed += _tree_bytes(leftover)
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
            return PruneReport(images=removed_images, layers=removed_layers, blobs=removed_blobs,
                               freed_bytes=freed)

    def disk_usage(self) -> DiskUsage:
        """Images with their size and shared size, layer count and bytes, blob bytes (no locks: a
        snapshot that may be slightly stale while imports run)."""
        images = self.list_images()
        users: dict[str, int] = {}
        for image in images:
            for d in set(image.layers):
                users[d] = users.get(d, 0) + 1
        sizes: dict[str, int] = {}
        for meta in (self.root / "layerdb").glob("*.json"):
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                sizes["sha256:" + meta.stem] = int(json.loads(meta.read_text())["size"])
        usage = [
            ImageUsage(
                id=image.id, repo_tags=image.repo_tags,
                size=sum(sizes.get(d, 0) for d in set(image.layers)),
                shared_size=sum(sizes.get(d, 0) for d in set(image.layers) if users.get(d, 0) > 1),
                layers=len(image.layers),
            )
            for image in images
        ]
        blob_bytes = 0
        for blob in (self.root / "blobs" / "sha256").iterdir():
            with contextlib.suppress(FileNotFoundError):
                blob_bytes += blob.stat().st_size
        return DiskUsage(images=usage, layer_count=len(sizes), layer_bytes=sum(sizes.values()),
                         blob_bytes=blob_bytes)

    def _collect_layers(self, candidates: list[str]) -> None:
        """After a failed import: delete layers it created that no image references."""
        with _flock(self._lock("gc"), fcntl.LOCK_EX), _flock(self._lock("meta"), fcntl.LOCK_EX):
            self._collect_unreferenced(tuple(candidates))

    def _collect_unreferenced(self, candidates: tuple[str, ...]) -> list[str]:
        """Caller holds gc (exclusive) and meta locks."""
        referenced = {d for image in self.list_images() for d in image.layers} | self._held_layers()
        removed = []
        for diff_id in dict.fromkeys(candidates):
            if diff_id in referenced:
                continue
            hexd = _hex(diff_id)
            with contextlib.suppress(FileNotFoundError):
                (self.root / "layerdb" / f"{hexd}.json").unlink()
            self._discard(self.root / "layers" / hexd)
            removed.append(diff_id)
        return removed

    # -- records, blobs and temporaries -------------------------------------------------------------

    def _lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    def _load(self, image_id: str, tags: dict[str, str]) -> Image:
        record = json.loads((self.root / "images" / f"{_hex(image_id)}.json").read_text())
        cfg = record["config"]
        config = ImageConfig(
            entrypoint=tuple(cfg["entrypoint"]), cmd=tuple(cfg["cmd"]), env=tuple(cfg["env"]),
            working_dir=cfg["working_dir"], user=cfg["user"], labels=dict(cfg["labels"]),
            exposed_ports=tuple(cfg["exposed_ports"]), stop_signal=cfg["stop_signal"],
        )
        return Image(
            id=record["id"],
            manifest_digest=record["manifest_digest"],
            repo_tags=tuple(sorted(t for t, i in tags.items() if i == image_id)),
            created=record["created"],
            size=int(record["size"]),
            layers=tuple(record["layers"]),
            architecture=record["architecture"],
            os=record["os"],
            config=config,
            repo_digests=tuple(record.get("repo_digests", ())),
        )

    def _read_tags(self) -> dict[str, str]:
        try:
            data = json.loads((self.root / "tags.json").read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _write_tags(self, tags: dict[str, str]) -> None:
        self._atomic_write(self.root / "tags.json", dict(sorted(tags.items())))

    def _atomic_write(self, path: Path, doc: Any) -> None:
        self._atomic_write_bytes(path, json.dumps(doc, indent=1).encode())

    def _atomic_write_bytes(self, path: Path, data: bytes) -> None:
        # Records and blobs are small; a full disk surfaces as ResourceExhausted naming the file.
        durable.write_file(path, data, mode=0o600)

    def _write_blob(self, digest: str, data: bytes) -> None:
        # The caller verified ``data`` against ``digest`` (importer.Archive.read_blob or the docker config
        # hash); the rename makes it visible only once complete.
        path = self.blob_path(digest)
        if not path.exists():
            self._atomic_write_bytes(path, data)

    def _discard(self, path: Path) -> None:
        """Removes a directory tree: first renamed into tmp/ so it disappears from view at once."""
        grave = self.root / "tmp" / f".discard-{uuid.uuid4().hex}"
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return
        shutil.rmtree(grave, ignore_errors=True)

    def _clean_stale_temporaries(self) -> None:
        # Leftovers of a crashed process; only safe when nobody is importing or removing right now.
        fd = os.open(self._lock("gc"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            for entry in (self.root / "tmp").iterdir():
                if _in_use(entry):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        finally:
            os.close(fd)
