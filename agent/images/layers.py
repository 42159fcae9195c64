"""Safe extraction of one image layer tar into an overlayfs-ready directory.

``unpack_layer`` reads a layer (plain tar or gzip, detected by magic) as a stream, parses the tar headers
itself and creates every entry with directory file descriptors, so no path in the archive is ever resolved
through a symlink and nothing can be written outside the layer. It hashes the uncompressed stream to check
the layer's diff_id, translates OCI whiteouts to what overlayfs expects (``.wh.NAME`` → character device
0/0, ``.wh..wh..opq`` → ``trusted.overlay.opaque=y``) and keeps what an image needs (ownership, setuid,
sticky bits, device nodes, hard links, xattrs, mtimes). Everything lands in a temporary directory that is
renamed into place only after the whole layer verified; on any failure the temporary directory is removed.

Python's ``tarfile`` extraction is deliberately not used: none of its filters both keeps image semantics
(absolute symlinks, devices, setuid, sticky bits) and refuses writes through symlinked parents.
"""

from __future__ import annotations

import base64
import contextlib
import decimal
import errno
import hashlib
import os
import queue
import shutil
import stat
import tempfile
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.errors import DigestMismatch, HostileArchive, InvalidArgument, ResourceExhausted

BLOCK = 512
# Big reads keep per-chunk Python overhead negligible; zlib and hashlib release the GIL on chunks this size.
READ_CHUNK = 1 << 20
MAX_INFLATE = 4 << 20  # cap on one decompression step, so a gzip bomb cannot balloon memory
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# xattr namespaces overlayfs interprets; an archive setting them could fake whiteouts or redirects.
FORBIDDEN_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
DIR_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FD_CACHE_LIMIT = 128

REGULAR_TYPES = (b"0", b"\0", b"7")
HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO = b"1", b"2", b"3", b"4", b"5", b"6"
PAX_LOCAL, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"


@dataclass(frozen=True)
class UnpackLimits:
    """How far a layer may expand (the agent's ``--max-unpacked-layer-size`` and
    ``--max-compression-ratio``). Checked as the stream inflates, so a gzip bomb is refused after at
    most ``max_bytes`` (or ``ratio_floor``) bytes rather than when the disk is full. The ratio is
    uncompressed tar bytes over compressed bytes read so far; it is not applied below ``ratio_floor``
    uncompressed bytes, where small layers of zeros would trip it for no gain."""

    max_bytes: int = 32 << 30
    max_ratio: float = 100.0
    ratio_floor: int = 256 << 20

    def check(self, *, unpacked: int, compressed: int, what: str) -> None:
        if unpacked > self.max_bytes:
            raise HostileArchive(
                f"{what} unpacks to more than {self.max_bytes} bytes, the agent's limit"
                " (--max-unpacked-layer-size); nothing was kept")
        if unpacked > self.ratio_floor and compressed and unpacked > self.max_ratio * compressed:
            raise HostileArchive(
                f"{what} expands more than {self.max_ratio:g} times ({unpacked} bytes from {compressed}"
                " compressed), the agent's limit (--max-compression-ratio): a decompression bomb?"
                " nothing was kept")


@dataclass(frozen=True)
class LayerInfo:
    """What one unpack produced: the verified diff_id, the uncompressed tar size and the entry count."""

    diff_id: str
    size: int
    entries: int
    path: Path


@dataclass(frozen=True)
class TarEntry:
    """One tar member after PAX/GNU extensions are applied. ``path`` is the raw archive name."""

    path: str
    kind: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: str
    devmajor: int
    devminor: int
    xattrs: tuple[tuple[str, bytes], ...]


class _ChunkSource:
    """Yields the uncompressed layer bytes in chunks, hashing everything (including padding and trailing
    zero blocks) so the digest is the diff_id. Decompression runs in a producer thread: zlib, hashlib and
    file writes all release the GIL, so inflating overlaps with writing files."""

    def __init__(self, stream: BinaryIO, *, progress: Callable[[int], None] | None,
                 limits: UnpackLimits, what: str) -> None:
        self._stream = stream
        self._progress = progress
        self._limits = limits
        self._what = what
        self.hasher = hashlib.sha256()
        self.total = 0
        self.raw_total = 0  # written by the producer, read by the consumer for progress reports
        self._reported = 0
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="layer-inflate", daemon=True)
        self._thread.start()

    def _raw_chunks(self) -> Iterator[bytes]:
        while True:
            data = self._stream.read(READ_CHUNK)
            if not data:
                return
            self.raw_total += len(data)
            yield data

    def _inflated(self) -> Iterator[bytes]:
        raw = self._raw_chunks()
        first = next(raw, b"")
        if first[:4] == b"\x28\xb5\x2f\xfd":
            raise InvalidArgument("zstd-compressed layers are not supported (use tar or tar+gzip)")
        if first[:2] != b"\x1f\x8b":
            if first:
                yield first
            yield from raw
            return
        inflater = zlib.decompressobj(wbits=31)
        pending = first
        while True:
            while pending:
                out = inflater.decompress(pending, MAX_INFLATE)
                pending = inflater.unconsumed_tail
                if out:
                    yield out
                if inflater.eof:
                    rest = inflater.unused_data + pending
                    # Concatenated gzip members are one stream (as gzip -d treats them); other trailing
                    # bytes after the last member are ignored, as GNU tar's gzip does with zero padding.
                    if rest[:2] == b"\x1f\x8b":
                        inflater = zlib.decompressobj(wbits=31)
                        pending = rest
                    else:
                        pending = b""
            data = next(raw, b"")
            if not data:
                break
            if inflater.eof:
                continue  # trailing bytes after the final member: read to EOF, ignore
            pending = data
        if not inflater.eof:
            raise _Truncated("gzip stream ends before its end marker")

    def _produce(self) -> None:
        try:
            for chunk in self._inflated():
                self.hasher.update(chunk)
                self.total += len(chunk)
                self._limits.check(unpacked=self.total, compressed=self.raw_total, what=self._what)
                while not self._stop.is_set():
                    try:
                        self._queue.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._put_final(None)
        except BaseException as exc:  # handed to the consumer thread, which re-raises it
            self._put_final(exc)

    def _put_final(self, item: BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next_chunk(self) -> bytes:
        """The next chunk, or b"" at the end of the stream; re-raises the producer's error."""
        item = self._queue.get()
        if item is None:
            self._queue.put(None)  # stay at EOF for later calls
            return b""
        if isinstance(item, BaseException):
            self._queue.put(item)
            raise item
        if self._progress is not None and self.raw_total != self._reported:
            self._reported = self.raw_total
            self._progress(self._reported)
        return item

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join()


class _Truncated(Exception):
    """Internal: the stream ended in the middle of the archive."""


class _TarReader:
    """Byte-exact reads over a chunk source: headers by the block, file data straight to a descriptor."""

    def __init__(self, source: _ChunkSource) -> None:
        self._source = source
        self._buf = memoryview(b"")

    def _fill(self) -> bool:
        chunk = self._source.next_chunk()
        if not chunk:
            return False
        self._buf = memoryview(chunk) if not self._buf else memoryview(bytes(self._buf) + chunk)
        return True

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise _Truncated(f"archive ends after a partial read ({len(self._buf)} of {n} bytes)")
        out = bytes(self._buf[:n])
        self._buf = self._buf[n:]
        return out

    def read_block_or_eof(self) -> bytes | None:
        """One 512-byte header block, or None at a clean end of stream."""
        while len(self._buf) < BLOCK:
            if not self._fill():
                if self._buf:
                    raise _Truncated("archive ends inside a header block")
                return None
        out = bytes(self._buf[:BLOCK])
        self._buf = self._buf[BLOCK:]
        return out

    def copy_to(self, fd: int, n: int) -> None:
        while n > 0:
            if not self._buf and not self._fill():
                raise _Truncated(f"archive ends with {n} bytes of file data missing")
            piece = self._buf[:n]
            written = os.write(fd, piece)
            self._buf = self._buf[written:]
            n -= written

    def skip(self, n: int) -> None:
        while n > 0:
            if not self._buf and not self._fill():
                raise _Truncated(f"archive ends with {n} bytes missing")
            step = min(n, len(self._buf))
            self._buf = self._buf[step:]
            n -= step

    def drain(self) -> None:
        self._buf = memoryview(b"")
        while self._source.next_chunk():
            pass


def _parse_number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for values that do not fit in octal
        value = int.from_bytes(field, "big", signed=False) & ~(0x80 << (8 * (len(field) - 1)))
        if field[0] & 0x40:
            value -= 1 << (8 * len(field) - 1)
        return value
    text = field.split(b"\0", 1)[0].strip(b" \0")
    return int(text, 8) if text else 0


def _parse_str(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _checksum_ok(block: bytes) -> bool:
    stored = _parse_number(block[148:156])
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - sum(256 for b in block[:148] + block[156:] if b > 127)
    return stored in (unsigned, signed)


def _parse_pax(data: bytes, where: str) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise HostileArchive(f"malformed PAX header near {where}")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise HostileArchive(f"malformed PAX record length near {where}") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise HostileArchive(f"malformed PAX record near {where}")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos += length
    return records


def _pax_xattrs(records: dict[str, bytes]) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    for key, value in records.items():
        if key.startswith("SCHILY.xattr."):
            found.append((key[len("SCHILY.xattr.") :], value))
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            found.append((name, base64.b64decode(value + b"=" * (-len(value) % 4))))
    return found


def _pax_mtime_ns(value: bytes) -> int:
    try:
        return int(decimal.Decimal(value.decode()) * 1_000_000_000)
    except (decimal.InvalidOperation, UnicodeDecodeError):
        raise HostileArchive(f"malformed PAX mtime {value!r}") from None


def iter_tar_entries(reader: _TarReader) -> Iterator[TarEntry]:
    """Parses headers until the end-of-archive block. The caller must consume or skip each entry's data
    (``entry.size`` bytes, padded to a block) before asking for the next one."""
    global_pax: dict[str, bytes] = {}
    local_pax: dict[str, bytes] = {}
    long_name: str | None = None
    long_link: str | None = None
    last_name = "<start of archive>"
    while True:
        block = reader.read_block_or_eof()
        if block is None:
            raise _Truncated(f"archive ends after {last_name!r} without an end-of-archive marker")
        if block == b"\0" * BLOCK:
            return  # end of archive; a second zero block and any padding are drained by the caller
        if not _checksum_ok(block):
            raise HostileArchive(f"corrupt tar header after {last_name!r} (checksum mismatch)")
        kind = block[156:157]
        size = _parse_number(block[124:136])
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in (PAX_LOCAL, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK):
            if size > 16 << 20:
                raise HostileArchive(f"oversized extended header ({size} bytes) after {last_name!r}")
            data = reader.read_exact(padded)[:size]
            if kind == PAX_LOCAL:
                local_pax.update(_parse_pax(data, last_name))
            elif kind == PAX_GLOBAL:
                global_pax.update(_parse_pax(data, last_name))
            elif kind == GNU_LONGNAME:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        pax = {**global_pax, **local_pax}
        name = _parse_str(block[0:100])
        if block[257:263] == b"ustar\0":  # POSIX ustar: the prefix field extends the name
            prefix = _parse_str(block[345:500])
            if prefix:
                name = f"{prefix}/{name}"
        if long_name is not None:
            name = long_name
        linkname = long_link if long_link is not None else _parse_str(block[157:257])
        mtime_ns = _parse_number(block[136:148]) * 1_000_000_000
        if "path" in pax:
            name = pax["path"].decode("utf-8", "surrogateescape")
        if "linkpath" in pax:
            linkname = pax["linkpath"].decode("utf-8", "surrogateescape")
        if "size" in pax:
            size = int(pax["size"])
        if "mtime" in pax:
            mtime_ns = _pax_mtime_ns(pax["mtime"])
        uid = int(pax["uid"]) if "uid" in pax else _parse_number(block[108:116])
        gid = int(pax["gid"]) if "gid" in pax else _parse_number(block[116:124])
        entry = TarEntry(
            path=name,
            kind=kind,
            mode=_parse_number(block[100:108]) & 0o7777,
            uid=uid,
            gid=gid,
            size=size,
            mtime_ns=mtime_ns,
            linkname=linkname,
            devmajor=_parse_number(block[329:337]),
            devminor=_parse_number(block[337:345]),
            xattrs=tuple(_pax_xattrs(pax)),
        )
        local_pax, long_name, long_link = {}, None, None
        last_name = name
        yield entry


def split_archive_path(raw: str) -> tuple[str, ...]:
    """Archive path → components inside the layer. A leading ``/`` is normal in tars and stripped; ``..``
    is refused outright rather than resolved, since no legitimate layer needs it."""
    parts = tuple(p for p in raw.split("/") if p not in ("", "."))
    if ".." in parts:
        raise HostileArchive(f"entry {raw!r}: path contains '..'")
    return parts


class _Extractor:
    """Creates entries below ``root_fd`` without ever following a symlink in a path component."""

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._dir_fds: dict[tuple[str, ...], int] = {}
        self._dir_times: list[tuple[tuple[str, ...], int]] = []
        self.root_meta_set = False

    def close(self) -> None:
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds.clear()

    def trim_cache(self) -> None:
        """Bounds the open directory fds. Only called between entries, never while an fd is in use."""
        if len(self._dir_fds) > FD_CACHE_LIMIT:
            self.close()

    def _forget_fds(self, removed: tuple[str, ...]) -> None:
        n = len(removed)
        for key in [k for k in self._dir_fds if k[:n] == removed]:
            os.close(self._dir_fds.pop(key))

    def _open_dir(self, parts: tuple[str, ...], raw: str, *, create: bool) -> int:
        if not parts:
            return self._root_fd
        cached = self._dir_fds.get(parts)
        if cached is not None:
            return cached
        parent = self._open_dir(parts[:-1], raw, create=create)
        name = parts[-1]
        try:
            fd = os.open(name, DIR_OPEN_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            # tar creates missing parents implicitly; so do we, with tar's default mode.
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, DIR_OPEN_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                where = "/".join(parts)
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise HostileArchive(
                    f"entry {raw!r}: parent {where!r} is {what}; refusing to write through it"
                ) from None
            raise
        self._dir_fds[parts] = fd
        return fd

    def _remove_existing(self, parent_fd: int, parts: tuple[str, ...]) -> None:
        name = parts[-1]
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            self._forget_fds(parts)
            shutil.rmtree(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)

    def _apply_meta(self, parent_fd: int, name: str, entry: TarEntry) -> None:
        """Ownership, then mode (chown clears setuid/setgid), then xattrs, then mtime."""
        os.chown(name, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
        os.chmod(name, entry.mode, dir_fd=parent_fd)  # devices/fifos only: the entry cannot be a symlink
        self._set_xattrs(f"/proc/self/fd/{parent_fd}/{name}", entry)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    @staticmethod
    def _set_xattrs(target: int | str, entry: TarEntry) -> None:
        for key, value in entry.xattrs:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)

    def extract(self, entry: TarEntry, reader: _TarReader) -> None:
        raw = entry.path
        for key, _ in entry.xattrs:
            if key.startswith(FORBIDDEN_XATTR_PREFIXES):
                raise HostileArchive(f"entry {raw!r}: refusing overlayfs xattr {key!r} from the archive")
        parts = split_archive_path(raw)
        if not parts:
            if entry.kind != DIRECTORY:
                raise HostileArchive(f"entry {raw!r}: the layer root must be a directory")
            os.chown(self._root_fd, entry.uid, entry.gid)
            os.chmod(self._root_fd, entry.mode)
            self._set_xattrs(self._root_fd, entry)
            self._dir_times.append(((), entry.mtime_ns))
            self.root_meta_set = True
            return
        name = parts[-1]
        self.trim_cache()
        parent_fd = self._open_dir(parts[:-1], raw, create=True)

        if name.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, parent_fd, raw)
            reader.skip(_padded(entry.size) if entry.kind in REGULAR_TYPES else 0)
            return
        if entry.kind in REGULAR_TYPES:
            self._regular(parent_fd, parts, entry, reader)
        elif entry.kind == DIRECTORY:
            self._directory(parent_fd, parts, entry)
        elif entry.kind == SYMLINK:
            self._create(parent_fd, parts, lambda: os.symlink(entry.linkname, name, dir_fd=parent_fd))
            os.chown(name, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
            self._set_xattrs(f"/proc/self/fd/{parent_fd}/{name}", entry)
            os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
        elif entry.kind == HARDLINK:
            self._hardlink(parent_fd, parts, entry)
        elif entry.kind in (CHARDEV, BLOCKDEV, FIFO):
            if entry.kind == CHARDEV and entry.devmajor == 0 and entry.devminor == 0:
                raise HostileArchive(
                    f"entry {raw!r}: character device 0/0 in the archive would fake an overlay whiteout"
                )
            if entry.kind == FIFO:
                self._create(parent_fd, parts, lambda: os.mkfifo(name, 0o600, dir_fd=parent_fd))
            else:
                fmt = stat.S_IFCHR if entry.kind == CHARDEV else stat.S_IFBLK
                dev = os.makedev(entry.devmajor, entry.devminor)
                self._create(parent_fd, parts, lambda: os.mknod(name, fmt | 0o600, dev, dir_fd=parent_fd))
            self._apply_meta(parent_fd, name, entry)
        else:
            raise HostileArchive(f"entry {raw!r}: unsupported tar entry type {entry.kind!r}")

    def _create(self, parent_fd: int, parts: tuple[str, ...], make: Callable[[], None]) -> None:
        try:
            make()
        except FileExistsError:
            self._remove_existing(parent_fd, parts)  # tar semantics: a later entry replaces an earlier one
            make()

    def _regular(self, parent_fd: int, parts: tuple[str, ...], entry: TarEntry, reader: _TarReader) -> None:
        name = parts[-1]
        try:
            fd = os.open(name, FILE_CREATE_FLAGS, 0o600, dir_fd=parent_fd)
        except FileExistsError:
            self._remove_existing(parent_fd, parts)
            fd = os.open(name, FILE_CREATE_FLAGS, 0o600, dir_fd=parent_fd)
        try:
            reader.copy_to(fd, entry.size)
            os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode)
            self._set_xattrs(fd, entry)  # after chown: chown drops security.capability
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
        reader.skip(_padded(entry.size) - entry.size)

    def _directory(self, parent_fd: int, parts: tuple[str, ...], entry: TarEntry) -> None:
        name = parts[-1]
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):  # a directory replacing a file/symlink: tar semantics
                os.unlink(name, dir_fd=parent_fd)
                os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = self._open_dir(parts, entry.path, create=False)
        os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)
        self._set_xattrs(fd, entry)
        self._dir_times.append((parts, entry.mtime_ns))  # set last: creating children changes it

    def _hardlink(self, parent_fd: int, parts: tuple[str, ...], entry: TarEntry) -> None:
        raw, name = entry.path, parts[-1]
        target = split_archive_path(entry.linkname)
        if not target:
            raise HostileArchive(f"entry {raw!r}: hard link to the layer root")
        try:
            target_parent = self._open_dir(target[:-1], raw, create=False)
            st = os.stat(target[-1], dir_fd=target_parent, follow_symlinks=False)
        except FileNotFoundError:
            raise HostileArchive(
                f"entry {raw!r}: hard link target {entry.linkname!r} is not an earlier entry of this layer"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise HostileArchive(f"entry {raw!r}: hard link to directory {entry.linkname!r}")

        def make() -> None:
            os.link(target[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent_fd, follow_symlinks=False)

        self._create(parent_fd, parts, make)

    def _whiteout(self, parts: tuple[str, ...], parent_fd: int, raw: str) -> None:
        name = parts[-1]
        if name == OPAQUE_WHITEOUT:
            os.setxattr(parent_fd, OPAQUE_XATTR, b"y")
            return
        if name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless to overlayfs
        hidden = name[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise HostileArchive(f"entry {raw!r}: whiteout of {hidden!r} is meaningless")
        try:
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd)
        except FileExistsError:
            return  # the layer has both the file and its whiteout: the file wins
        os.chmod(hidden, 0o000, dir_fd=parent_fd)

    def finish(self) -> None:
        """Sets directory mtimes, deepest first, by safe walks (a directory may have been replaced)."""
        self.close()
        for parts, mtime_ns in sorted(self._dir_times, key=lambda item: -len(item[0])):
            try:
                fd = self._open_dir(parts, "/".join(parts), create=False)
            except (FileNotFoundError, HostileArchive):
                continue
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        self.close()


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def unpack_layer(
    stream: BinaryIO,
    dest_dir: Path,
    *,
    expected_diff_id: str,
    work_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    limits: UnpackLimits | None = None,
) -> LayerInfo:
    """Extracts the layer tar in ``stream`` (plain or gzip) to ``dest_dir``, which must not exist yet.

    ``work_dir`` (default: ``dest_dir``'s parent) holds the temporary directory; it must be on the same
    filesystem as ``dest_dir``. ``progress`` is called (in the caller's thread) with the
    raw (compressed) bytes read so far.
    ``stream`` is read to its end, so a verifying wrapper around it can check the compressed digest
    before anything is committed.

    ``limits`` bound how far the layer may expand (default: ``UnpackLimits()``).

    Raises DigestMismatch, HostileArchive (nothing kept; also past ``limits``), ResourceExhausted (out of
    disk space),
    InvalidArgument (unsupported compression); ``FileExistsError`` if ``dest_dir`` appeared meanwhile.
    """
    if not expected_diff_id.startswith("sha256:"):
        raise InvalidArgument(f"unsupported diff_id {expected_diff_id!r}: only sha256 is supported")
    parent = work_dir if work_dir is not None else dest_dir.parent
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=parent))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(
                f"no space left on device while unpacking layer {expected_diff_id} into {dest_dir}"
            ) from None
        raise
    committed = False
    source = _ChunkSource(stream, progress=progress, limits=limits if limits is not None else UnpackLimits(),
                          what=f"layer {expected_diff_id}")
    try:
        root_fd = os.open(tmp, DIR_OPEN_FLAGS)
        extractor = _Extractor(root_fd)
        entries = 0
        try:
            reader = _TarReader(source)
            for entry in iter_tar_entries(reader):
                extractor.extract(entry, reader)
                entries += 1
            reader.drain()  # trailing zero blocks count towards the diff_id
            extractor.finish()
            if not extractor.root_meta_set:
                os.chmod(root_fd, 0o755)  # mkdtemp made it 0700; the layer root becomes the container's /
        finally:
            extractor.close()
            os.close(root_fd)
        actual = "sha256:" + source.hasher.hexdigest()
        if actual != expected_diff_id:
            raise DigestMismatch(
                f"layer content hashes to {actual}, but the image config says {expected_diff_id}"
            )
        os.rename(tmp, dest_dir)
        committed = True
        return LayerInfo(diff_id=expected_diff_id, size=source.total, entries=entries, path=dest_dir)
    except _Truncated as exc:
        raise HostileArchive(f"layer {expected_diff_id} is truncated: {exc}") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(
                f"no space left on device while unpacking layer {expected_diff_id} into {dest_dir}"
            ) from None
        raise
    finally:
        source.close()
        if not committed:
            shutil.rmtree(tmp, ignore_errors=True)
