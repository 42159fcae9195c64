"""Reading image archives: OCI image layout (directory or tar) and docker-archive tar.

An ``Archive`` finds the one image the caller asked for and describes it as an ``ArchiveImage`` (manifest,
config, layer sources, suggested names) with every small blob already digest- and size-checked; layer
streams are handed out wrapped in a ``VerifyingReader`` that raises ``DigestMismatch`` when it reaches the
end of a blob that does not match its descriptor. Tars are read member by member through ``tarfile``'s
index (never extracted to disk). Writing anything to the store is ``agent.images.store``'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO

from agent.errors import DigestMismatch, InvalidArgument, NotFound
from agent.images import refs

MAX_JSON_BLOB = 16 << 20  # manifests, indexes and configs are small; refuse to buffer more
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})

_MACHINE_TO_OCI_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                        "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_platform() -> tuple[str, str]:
    """(os, architecture) in OCI terms for this host, e.g. ("linux", "amd64")."""
    machine = platform.machine()
    return "linux", _MACHINE_TO_OCI_ARCH.get(machine, machine)


@dataclass(frozen=True)
class LayerSource:
    """Where one layer lives in the archive and what it must hash to."""

    diff_id: str  # digest of the uncompressed tar (the layer's identity in the store)
    member: str  # path inside the archive
    digest: str | None  # digest of the blob as stored (None for docker-archive: the diff_id covers it)
    size: int | None
    media_type: str


@dataclass(frozen=True)
class ArchiveImage:
    """One image found in an archive; manifest/config bytes are verified against their descriptors."""

    config: bytes
    config_digest: str  # = the image id
    manifest: bytes | None  # None for docker-archive, which has no manifest
    manifest_digest: str | None
    layers: tuple[LayerSource, ...]  # bottom-first
    names: tuple[str, ...]  # "repo:tag" names suggested by the archive itself


class VerifyingReader:
    """A read-only stream that hashes what passes through and raises DigestMismatch at the end of the
    stream (or as soon as it exceeds ``size``) if the blob is not what its descriptor promised."""

    def __init__(self, stream: IO[bytes], *, digest: str | None, size: int | None, what: str) -> None:
        self._stream = stream
        self._digest = digest
        self._size = size
        self._what = what
        self._hasher = hashlib.sha256()
        self._seen = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._seen += len(data)
        if self._size is not None and self._seen > self._size:
            raise DigestMismatch(f"{self._what} is larger than the {self._size} bytes its descriptor says")
        if data:
            self._hasher.update(data)
            return data
        if self._size is not None and self._seen != self._size:
            raise DigestMismatch(f"{self._what} has {self._seen} bytes, its descriptor says {self._size}")
        actual = "sha256:" + self._hasher.hexdigest()
        if self._digest is not None and actual != self._digest:
            raise DigestMismatch(f"{self._what} hashes to {actual}, expected {self._digest}")
        return data

    def close(self) -> None:
        self._stream.close()


def _member_path(raw: str) -> str:
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise InvalidArgument(f"archive refers to an invalid member path {raw!r}")
    return "/".join(parts)


def _blob_member(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise InvalidArgument(f"unsupported or malformed digest {digest!r} (only sha256 is supported)")
    return f"blobs/sha256/{hexpart}"


class Archive:
    """An opened image archive (OCI layout directory, OCI layout tar or docker-archive tar)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if path.is_dir():
            self.format = "oci-dir"
            if not (path / "index.json").is_file():
                raise InvalidArgument(f"{path} is a directory but not an OCI image layout (no index.json)")
            return
        if not path.exists():
            raise NotFound(f"no such file: {path}")
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115  # closed by close()
            for info in self._tar:  # headers only: seeks past the data
                try:
                    self._members[_member_path(info.name)] = info
                except InvalidArgument:
                    continue  # odd names cannot be referenced by our own lookups anyway
        except (tarfile.TarError, EOFError, OSError) as exc:
            self.close()
            raise InvalidArgument(f"{path} is not a readable tar archive: {exc}") from None
        if "index.json" in self._members:
            self.format = "oci-tar"
        elif "manifest.json" in self._members:
            self.format = "docker-archive"
        else:
            self.close()
            raise InvalidArgument(
                f"{path} is neither an OCI image layout (index.json) nor a docker-archive (manifest.json)"
            )

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    # -- member access -------------------------------------------------------------------------------

    def open_member(self, member: str) -> IO[bytes]:
        member = _member_path(member)
        if self._tar is None:
            try:
                # O_NOFOLLOW on the last component: a layout should hold plain files, not links elsewhere.
                fd = os.open(self.path / member, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                raise InvalidArgument(f"{self.path}: {member} is missing from the image layout") from None
            return os.fdopen(fd, "rb", buffering=1 << 20)
        info = self._members.get(member)
        if info is None:
            raise InvalidArgument(f"{self.path}: {member} is missing from the archive")
        stream = self._tar.extractfile(info)
        if stream is None:
            raise InvalidArgument(f"{self.path}: {member} is not a regular file")
        return stream

    def member_size(self, member: str) -> int:
        member = _member_path(member)
        if self._tar is None:
            return (self.path / member).stat().st_size
        info = self._members.get(member)
        if info is None:
            raise InvalidArgument(f"{self.path}: {member} is missing from the archive")
        return info.size

    def read_json_member(self, member: str) -> Any:
        with self.open_member(member) as stream:
            data = stream.read(MAX_JSON_BLOB + 1)
        if len(data) > MAX_JSON_BLOB:
            raise InvalidArgument(f"{self.path}: {member} is larger than {MAX_JSON_BLOB} bytes")
        return _parse_json(data, f"{self.path}: {member}")

    def read_blob(self, descriptor: dict[str, Any], what: str) -> bytes:
        """A small blob named by an OCI descriptor, verified against its digest and size."""
        digest, size = _descriptor_digest(descriptor, what)
        if size > MAX_JSON_BLOB:
            raise InvalidArgument(f"{what} {digest} is {size} bytes; refusing to buffer that much")
        with self.open_member(_blob_member(digest)) as raw:
            reader = VerifyingReader(raw, digest=digest, size=size, what=f"{what} {digest}")
            data = reader.read(size + 1)
            reader.read()  # EOF: triggers the digest/size check
        return data

    def open_layer(self, layer: LayerSource) -> BinaryIO:
        """The layer blob as stored (maybe gzip), verified against its digest when read to the end."""
        what = f"layer blob {layer.member}"
        raw = self.open_member(layer.member)
        stream = VerifyingReader(raw, digest=layer.digest, size=layer.size, what=what)
        return stream  # type: ignore[return-value]  # read()/close() is all unpack_layer uses

    # -- image selection ----------------------------------------------------------------------------

    def find_image(self, select: str | None = None) -> ArchiveImage:
        """The image to import. ``select`` picks one by tag or name when the archive holds several."""
        if self.format == "docker-archive":
            return self._docker_image(select)
        return self._oci_image(select)

    def _oci_image(self, select: str | None) -> ArchiveImage:
        index = self.read_json_member("index.json")
        candidates = list(self._walk_index(index, inherited_names=(), what="index.json"))
        if select is not None:
            candidates = [c for c in candidates if _name_matches(c[1], select)]
        unique: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {}
        for descriptor, names in candidates:
            digest = str(descriptor.get("digest"))
            prev = unique.get(digest)
            unique[digest] = (descriptor, (prev[1] if prev else ()) + names)
        if not unique:
            wanted = f" named {select!r}" if select else ""
            os_name, arch = host_platform()
            raise NotFound(f"{self.path}: no image{wanted} for {os_name}/{arch} in the archive")
        if len(unique) > 1:
            listed = ", ".join(sorted({n for _, names in unique.values() for n in names} or {"<unnamed>"}))
            raise InvalidArgument(f"{self.path} holds several images ({listed}); choose one by tag")
        descriptor, raw_names = next(iter(unique.values()))
        manifest = self.read_blob(descriptor, "manifest")
        manifest_doc = _parse_json(manifest, "manifest")
        config_desc = manifest_doc.get("config")
        if not isinstance(config_desc, dict):
            raise InvalidArgument(f"{self.path}: manifest {descriptor['digest']} has no config descriptor")
        config = self.read_blob(config_desc, "image config")
        diff_ids = _diff_ids(config)
        layer_descs = manifest_doc.get("layers")
        if not isinstance(layer_descs, list):
            raise InvalidArgument(f"{self.path}: manifest {descriptor['digest']} has no layers list")
        if len(layer_descs) != len(diff_ids):
            raise InvalidArgument(
                f"{self.path}: manifest lists {len(layer_descs)} layers"
                f" but the config has {len(diff_ids)} diff_ids"
            )
        layers = []
        for desc, diff_id in zip(layer_descs, diff_ids, strict=True):
            digest, size = _descriptor_digest(desc, "layer")
            media_type = str(desc.get("mediaType", ""))
            if media_type not in LAYER_TYPES:
                raise InvalidArgument(f"layer {digest} has unsupported media type {media_type!r}")
            layers.append(LayerSource(diff_id, _blob_member(digest), digest, size, media_type))
        return ArchiveImage(
            config=config,
            config_digest=_config_digest(config_desc),
            manifest=manifest,
            manifest_digest=str(descriptor["digest"]),
            layers=tuple(layers),
            names=self._names_from_annotations(raw_names),
        )

    def _walk_index(
        self, index: Any, *, inherited_names: tuple[str, ...], what: str
    ) -> Iterator[tuple[dict[str, Any], tuple[str, ...]]]:
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise InvalidArgument(f"{self.path}: {what} is not an image index")
        os_name, arch = host_platform()
        for descriptor in index["manifests"]:
            if not isinstance(descriptor, dict):
                raise InvalidArgument(f"{self.path}: {what} has a malformed descriptor")
            plat = descriptor.get("platform")
            if isinstance(plat, dict) and (plat.get("os"), plat.get("architecture")) != (os_name, arch):
                continue  # another platform (or an attestation manifest, "unknown/unknown")
            annotations = descriptor.get("annotations") or {}
            names = inherited_names
            for key in (CONTAINERD_NAME_ANNOTATION, REF_NAME_ANNOTATION):
                if isinstance(annotations.get(key), str):
                    names = (*names, annotations[key])
            media_type = descriptor.get("mediaType")
            if media_type in INDEX_TYPES:
                nested = _parse_json(self.read_blob(descriptor, "image index"), "image index")
                where = f"index {descriptor['digest']}"
                yield from self._walk_index(nested, inherited_names=names, what=where)
            elif media_type in MANIFEST_TYPES or media_type is None:
                yield descriptor, names

    def _names_from_annotations(self, raw_names: tuple[str, ...]) -> tuple[str, ...]:
        names: list[str] = []
        for raw in raw_names:
            name = self._name_from_ref(raw)
            if name is not None and name not in names:
                names.append(name)
        return tuple(names)

    def _name_from_ref(self, raw: str) -> str | None:
        """A ref.name is either a full reference or just a tag; a bare tag is combined with the archive's
        basename (``busybox.tar`` + ``v1`` → ``busybox:v1``)."""
        if "/" in raw or ":" in raw:
            try:
                ref = refs.parse_reference(raw)
            except InvalidArgument:
                return None
            return refs.familiar_name(ref.name_tag) if ref.tag is not None else None
        base = archive_basename(self.path)
        if base is None:
            return None
        try:
            return refs.parse_reference(f"{base}:{raw}").name_tag
        except InvalidArgument:
            return None

    def _docker_image(self, select: str | None) -> ArchiveImage:
        manifest = self.read_json_member("manifest.json")
        if not isinstance(manifest, list) or not manifest:
            raise InvalidArgument(f"{self.path}: manifest.json is not a non-empty list")
        entries = [e for e in manifest if isinstance(e, dict)]
        if select is not None:
            entries = [e for e in entries if _name_matches(tuple(e.get("RepoTags") or ()), select)]
        if not entries:
            raise NotFound(f"{self.path}: no image named {select!r} in the archive")
        if len(entries) > 1:
            listed = ", ".join(t for e in entries for t in (e.get("RepoTags") or ["<unnamed>"]))
            raise InvalidArgument(f"{self.path} holds several images ({listed}); choose one by tag")
        entry = entries[0]
        config_member = str(entry.get("Config", ""))
        with self.open_member(config_member) as stream:
            config = stream.read(MAX_JSON_BLOB + 1)
        if len(config) > MAX_JSON_BLOB:
            raise InvalidArgument(f"{self.path}: config {config_member} is too large")
        diff_ids = _diff_ids(config)
        members = entry.get("Layers")
        if not isinstance(members, list) or len(members) != len(diff_ids):
            raise InvalidArgument(
                f"{self.path}: manifest.json lists {len(members) if isinstance(members, list) else 0} layers"
                f" but the config has {len(diff_ids)} diff_ids"
            )
        layers = tuple(
            LayerSource(diff_id, _member_path(str(m)), None, self.member_size(str(m)), "docker-archive")
            for m, diff_id in zip(members, diff_ids, strict=True)
        )
        names: list[str] = []
        for tag in entry.get("RepoTags") or ():
            try:
                names.append(refs.familiar_name(refs.parse_reference(str(tag)).name_tag))
            except InvalidArgument:
                continue
        return ArchiveImage(
            config=config,
            config_digest="sha256:" + hashlib.sha256(config).hexdigest(),
            manifest=None,
            manifest_digest=None,
            layers=layers,
            names=tuple(names),
        )


def archive_basename(path: Path) -> str | None:
    """``/x/busybox.tar`` → ``busybox`` (lowercased), or None if that is no valid repository name."""
    base = path.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".oci"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = base.lower()
    return base if refs.is_valid_repository(base) else None


def _name_matches(names: tuple[str, ...], select: str) -> bool:
    for name in names:
        if name == select or name.rpartition(":")[2] == select:
            return True
        try:
            if refs.parse_reference(name).name_tag == refs.parse_reference(select).name_tag:
                return True
        except InvalidArgument:
            continue
    return False


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None


def _descriptor_digest(descriptor: Any, what: str) -> tuple[str, int]:
    if not isinstance(descriptor, dict):
        raise InvalidArgument(f"malformed {what} descriptor")
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
        raise InvalidArgument(f"{what} descriptor needs a digest and a size")
    _blob_member(digest)  # validates the digest's shape
    return digest, size


def _config_digest(descriptor: dict[str, Any]) -> str:
    return str(descriptor["digest"])


def _diff_ids(config: bytes) -> list[str]:
    doc = _parse_json(config, "image config")
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument("image config has no rootfs.diff_ids list")
    for d in diff_ids:
        _blob_member(d)
    return [str(d) for d in diff_ids]
