"""The agent's content-addressed image store: blobs, shared unpacked layers, image records and tags.

Layout under ``root`` (``<agent-root>/images``)::

    blobs/sha256/<hex>     manifest and config blobs, verified before they become visible
    layers/<hex>/          one unpacked layer per diff_id, used directly as an overlay lowerdir
    layerdb/<hex>.json     layer metadata (kept outside the layer so the lowerdir holds only the rootfs)
    images/<hex>.json      image records keyed by image id (the config digest)
    tags.json              "name:tag" → image id
    locks/, tmp/           flock files; temporaries (same filesystem, so commits are renames)

Concurrency: a layer is unpacked under its own flock and committed by rename, so concurrent imports of
the same layer (threads or processes) unpack it once. Imports hold ``gc.lock`` shared; ``remove`` holds
it exclusive, so garbage collection never deletes a layer an import is about to reference. Record and
tag updates are serialised by ``meta.lock`` and written temp+rename. Compressed layer blobs are not
kept after a verified unpack: the unpacked directory is what containers use and the diff_id identifies it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import FailedPrecondition, InvalidArgument, NotFound
from agent.images import importer, layers, refs


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


@dataclass(frozen=True)
class ImportProgress:
    """One progress event of an import.

    phase: "resolving" (reading index/manifest/config), "unpacking" (``bytes`` of ``bytes_total``
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


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64:
        raise InvalidArgument(f"malformed digest {digest!r}")
    return hexpart


class ImageStore:
    """Content-addressed images on the local disk; see the module docstring for layout and locking."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("blobs/sha256", "layers", "layerdb", "images", "locks", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
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
        created: list[str] = []
        try:
            with _flock(self._lock("gc"), fcntl.LOCK_SH), importer.Archive(path) as archive:
                report(ImportProgress("resolving"))
                found = archive.find_image(select)
                config_doc = json.loads(found.config)
                config, arch, os_name, created_at = image_config_from_json(config_doc)
                total = len(found.layers)
                sizes: list[int] = []
                for index, source in enumerate(found.layers, start=1):
                    size, new = self._ensure_layer(archive, source, index=index, total=total, report=report)
                    sizes.append(size)
                    if new:
                        created.append(source.diff_id)
                names = (target.name_tag,) if target is not None else found.names
                with _flock(self._lock("meta"), fcntl.LOCK_EX):
                    self._write_blob(found.config_digest, found.config)
                    if found.manifest is not None and found.manifest_digest is not None:
                        self._write_blob(found.manifest_digest, found.manifest)
                    record = {
                        "id": found.config_digest,
                        "manifest_digest": found.manifest_digest,
                        "created": created_at,
                        "size": sum(sizes),
                        "layers": [s.diff_id for s in found.layers],
                        "architecture": arch,
                        "os": os_name,
                        "config": asdict(config),
                    }
                    self._atomic_write(self.root / "images" / f"{_hex(found.config_digest)}.json", record)
                    tags = self._read_tags()
                    tags.update({n: found.config_digest for n in names})
                    self._write_tags(tags)
                    image = self._load(found.config_digest, tags)
        except BaseException:
            if created:
                self._collect_layers(created)
            raise
        report(ImportProgress("done", total=total))
        return image

    def _ensure_layer(
        self,
        archive: importer.Archive,
        source: importer.LayerSource,
        *,
        index: int,
        total: int,
        report: Callable[[ImportProgress], None],
    ) -> tuple[int, bool]:
        """Unpacks a layer unless present; returns (uncompressed size, newly unpacked)."""
        hexd = _hex(source.diff_id)
        meta_path = self.root / "layerdb" / f"{hexd}.json"
        dest = self.root / "layers" / hexd
        with _flock(self.root / "locks" / f"layer-{hexd}.lock", fcntl.LOCK_EX):
            if dest.is_dir() and meta_path.is_file():
                report(ImportProgress("layer-exists", source.diff_id, index, total, already_present=True))
                return int(json.loads(meta_path.read_text())["size"]), False
            if dest.exists():  # a crash between rename and metadata write: redo it
                self._discard(dest)

            def on_bytes(done: int) -> None:
                report(ImportProgress("unpacking", source.diff_id, index, total, done, source.size))

            stream = archive.open_layer(source)
            try:
                info = layers.unpack_layer(
                    stream, dest, expected_diff_id=source.diff_id, work_dir=self.root / "tmp",
                    progress=on_bytes,
                )
            finally:
                stream.close()
            try:
                self._atomic_write(meta_path, {"diff_id": source.diff_id, "size": info.size,
                                               "entries": info.entries, "media_type": source.media_type})
            except BaseException:
                self._discard(dest)
                raise
            report(ImportProgress("layer-done", source.diff_id, index, total, source.size or 0, source.size))
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
                if parsed.digest in (image.manifest_digest, image.id):
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

    def _collect_layers(self, candidates: list[str]) -> None:
        """After a failed import: delete layers it created that no image references."""
        with _flock(self._lock("gc"), fcntl.LOCK_EX), _flock(self._lock("meta"), fcntl.LOCK_EX):
            self._collect_unreferenced(tuple(candidates))

    def _collect_unreferenced(self, candidates: tuple[str, ...]) -> list[str]:
        """Caller holds gc (exclusive) and meta locks."""
        referenced = {d for image in self.list_images() for d in image.layers}
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
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix=".write-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

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
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        finally:
            os.close(fd)
