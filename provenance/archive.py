"""Release archives of a bundle: deterministic packing and hostile-input-safe unpacking.

    pack(run_dir, "run.tar.gz")      -> PackResult      (same bundle, same bytes)
    with unpacked("run.tar.gz") as x:   x.root, x.digests  (a temporary folder, removed after)

An archive holds one folder, named after the run, with every sealed file of the
bundle, its manifest.json and the signatures made after the seal: regular files only, sorted, mtime 0, uid/gid 0, mode
0644, pax format; `.tar.gz` adds a gzip layer with mtime 0 and no file name. The
bytes depend only on the bundle's files and the zlib build (gzip output is stable
for one zlib version and level).

Unpacking never trusts the archive: only regular files and folders are accepted
(links, devices, FIFOs, sparse files are refused), every name must stay inside
the destination, and the number of members, each file's size, the total size and
the compression ratio are bounded before anything is written. Files are written
with O_EXCL|O_NOFOLLOW into a fresh temporary folder and hashed as they are
written, so an audit of an archive reads every byte once.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

from provenance import formats
from provenance.bundle import BundleError, sealable_files

GZIP_LEVEL = 6
_CHUNK = 1 << 20
_MAX_META_HEADER = 1 << 20  # a pax or GNU long-name header larger than this is hostile
_GZIP_MAGIC = b"\x1f\x8b"


class ArchiveError(ValueError):
    """An archive was refused or cannot be read; the message names the archive and the member."""


class PackError(RuntimeError):
    """A bundle cannot be packed as it is (not sealed, files do not match the seal, ...)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what unpacking an archive may produce. Every default is generous for a real
    bundle and small enough that a hostile archive cannot exhaust memory, disk or time."""

    max_members: int = 200_000
    max_file_bytes: int = 256 << 30  # one file
    max_total_bytes: int = 1 << 40  # all files together
    max_ratio: float = 200.0  # unpacked bytes / archive bytes
    ratio_floor_bytes: int = 64 << 20  # the ratio is enforced once this much has been unpacked
    max_name_bytes: int = 4096
    disk_headroom_bytes: int = 64 << 20  # keep this much free in the temporary folder


DEFAULT_LIMITS = Limits()


# --- packing -------------------------------------------------------------------------


@dataclass
class PackResult:
    path: Path
    size: int
    sha256: str  # of the archive file
    root_digest: str  # of the bundle (manifest subject)
    files: int  # bundle files, manifest.json included


class _HashingReader(io.RawIOBase):
    """A file object that hashes what tarfile reads from it."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data


def archive_kind(path: str | os.PathLike[str]) -> str:
    """'tar.gz' or 'tar' from the output file name; anything else is refused."""
    name = Path(path).name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if name.endswith(".tar"):
        return "tar"
    raise PackError(f"{path}: an archive name must end in .tar, .tar.gz or .tgz")


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def pack(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
         progress: Callable[[int], None] | None = None) -> PackResult:
    """Write the release archive of a sealed bundle; return what was written.

    Every file is checked against the seal while it is archived (one read): a file that
    changed, or a file set that differs from the manifest, aborts with PackError and
    leaves no archive behind. The output is written to a temporary name and renamed.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise PackError(f"{root}: not a folder")
    if not (root / formats.RUN_JSON).is_file():
        raise PackError(f"{root}: not a run folder ({formats.RUN_JSON} is missing)")
    if not (root / formats.MANIFEST).is_file():
        raise PackError(f"{root}: the bundle is not sealed ({formats.MANIFEST} is missing); run `prov seal` first")
    try:
        manifest = formats.read_json(root / formats.MANIFEST)
        root_hex, resources = formats.parse_oms_statement(manifest)
        names = sealable_files(root)
    except (formats.FormatError, BundleError) as exc:
        raise PackError(f"{root}: {exc}") from None
    missing = sorted(set(resources) - set(names), key=formats.resource_sort_key)
    extra = [n for n in names if n not in resources]
    if missing or extra:
        parts = ([f"missing: {', '.join(missing)}"] if missing else []) + (
            [f"not covered by the seal: {', '.join(extra)}"] if extra else [])
        raise PackError(f"{root}: the files differ from the seal ({'; '.join(parts)}); "
                        "audit it with `prov audit`, or reseal it")
    # files written after the seal (signatures) travel with it; the live writer's lock never does
    after_seal = sorted((n for n in formats.UNSEALED - {formats.MANIFEST, formats.LOCK} if (root / n).is_file()
                         and not (root / n).is_symlink()), key=formats.resource_sort_key)
    out_path = Path(out) if out is not None else Path.cwd() / f"{root.name}.tar.gz"
    kind = archive_kind(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    tmp = Path(tmp_name)
    prefix = root.name
    try:
        os.fchmod(fd, formats.file_mode())
        with os.fdopen(fd, "wb") as raw:
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                               compresslevel=GZIP_LEVEL) if kind == "tar.gz" else None
            sink: IO[bytes] = gz if gz is not None else raw
            with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in [formats.MANIFEST, *after_seal, *names]:
                    src = root / name
                    size = src.stat().st_size
                    with open(src, "rb") as f:
                        reader = _HashingReader(f)
                        try:
                            tar.addfile(_member_info(f"{prefix}/{name}", size), reader)
                        except OSError as exc:
                            raise PackError(f"{name}: changed while it was archived ({exc})") from None
                    if name in resources:
                        actual = reader.hash.hexdigest()
                        if actual != resources[name]:
                            raise PackError(f"{name}: does not match the seal: expected sha256:{resources[name]}, "
                                            f"found sha256:{actual}; audit it with `prov audit`")
                    if progress is not None:
                        progress(size)
            if gz is not None:
                gz.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    h = hashlib.sha256()
    with open(out_path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return PackResult(path=out_path, size=out_path.stat().st_size, sha256=h.hexdigest(), root_digest=root_hex,
                      files=len(names) + 1 + len(after_seal))


# --- unpacking -----------------------------------------------------------------------


@dataclass
class Unpacked:
    """An archive unpacked into a temporary folder."""

    tmp: Path  # the temporary folder (removed by `unpacked`)
    root: Path  # the bundle folder inside it
    digests: dict[str, str] = field(default_factory=dict)  # bundle-relative name -> hex sha256
    members: int = 0
    bytes: int = 0
    archive_sha256: str = ""
    sizes: dict[str, int] = field(default_factory=dict)  # bundle-relative name -> size, every file
    memory: dict[str, bytes] = field(default_factory=dict)  # files kept in memory (in_memory=True), not on disk


def detect_archive(path: str | os.PathLike[str]) -> str | None:
    """'tar.gz', 'tar' or None, from the file's first bytes (never from its name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head[:2] == _GZIP_MAGIC:
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


# --- reading tars --------------------------------------------------------------------
#
# One tar reader for every tar the package reads (release archives, the code snapshot of a bundle):
# headers are parsed from a large buffer of the (decompressed) stream, 512 bytes at a time, and member
# data is hashed (or copied) straight from that buffer. It understands ustar, old V7 and GNU headers
# (octal and base-256 numbers, GNU long names and long link names) and pax extended headers (local
# and global; `path` and `size` are applied, the other keys are ignored), and refuses, as the header
# is read and before any data: bad header checksums, a stream that ends inside a header or a member
# or without its end-of-archive block, links, devices, FIFOs, sparse and contiguous files, names that
# escape, are absolute, hold a backslash or a control character or are not UTF-8, duplicates and
# file/folder clashes, extended headers over 1 MiB or more than 16 of them in a row, and every limit
# of `Limits` (member count, per-file and total declared sizes, the ratio cap).

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0")
_DIRTYPE = b"5"
_PAX_TYPES = (b"x", b"X")  # X: the Solaris spelling of a pax header
_META_TYPES = (b"x", b"X", b"g", b"L", b"K")
_MAX_META_RUN = 16  # extended headers in a row before one member
_LOW_BYTES = bytes(range(128))
_adler32 = zlib.adler32

_TYPE_NAMES = {
    b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device", b"4": "a block device",
    b"6": "a FIFO", b"7": "a contiguous file",
}


def _number(field: bytes, what: str, label: str) -> int:
    """A numeric header field: octal digits (NUL or space terminated) or GNU base-256."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        raise ArchiveError(f"{label}: a header holds a negative {what}; refused")
    s = field.split(b"\0", 1)[0].strip()
    if not s:
        return 0
    if not s.isdigit():
        raise ArchiveError(f"{label}: a header's {what} is not a number ({s[:16]!r}); refused")
    try:
        return int(s, 8)
    except ValueError:
        raise ArchiveError(f"{label}: a header's {what} is not an octal number ({s[:16]!r}); refused") from None


def _checksum_ok(h: bytes, label: str) -> None:
    """The header checksum: the byte sum with the checksum field read as spaces (unsigned or, as some old
    tars wrote it, signed). Each piece is under 256 bytes, so its Adler-32 low half is its exact byte sum
    plus one."""
    a, b, c = h[:148], h[156:356], h[356:]
    unsigned = (_adler32(a) & 0xFFFF) + (_adler32(b) & 0xFFFF) + (_adler32(c) & 0xFFFF) - 3 + 256
    try:
        stored = _number(h[148:156], "checksum", label)
    except ArchiveError:
        raise ArchiveError(f"{label}: a header has a bad checksum (not a number): not a tar, or a damaged "
                           "one; refused") from None
    if stored == unsigned:
        return
    high = len(a.translate(None, _LOW_BYTES)) + len(b.translate(None, _LOW_BYTES)) + len(c.translate(None, _LOW_BYTES))
    if stored != unsigned - 256 * high:
        raise ArchiveError(f"{label}: a header has a bad checksum (stored {stored}, computed {unsigned}): "
                           "not a tar, or a damaged one; refused")


def _parse_pax(data: bytes, label: str) -> dict[str, bytes]:
    """The records of a pax extended header ('<len> <key>=<value>\\n'), keys as text, values as bytes."""
    out: dict[str, bytes] = {}
    pos, n = 0, len(data)
    while pos < n:
        if not data[pos:].strip(b"\0"):
            break  # NUL padding after the last record
        sp = data.find(b" ", pos, pos + 21)
        digits = data[pos:sp] if sp > pos else b""
        length = int(digits) if digits.isdigit() else 0
        end = pos + length
        if length <= len(digits) + 1 or end > n or data[end - 1:end] != b"\n":
            raise ArchiveError(f"{label}: a malformed pax extended header (record at byte {pos}); refused")
        key, eq, value = data[sp + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise ArchiveError(f"{label}: a malformed pax extended header (record at byte {pos}); refused")
        try:
            out[key.decode("utf-8")] = value
        except UnicodeDecodeError:
            raise ArchiveError(f"{label}: a pax extended header has a key that is not UTF-8; refused") from None
        pos = end
    return out


class Member(NamedTuple):
    """One member of a tar as `TarReader` yields it: a validated name and its kind."""

    name: str  # relative posix name, safe to join under a destination
    size: int
    is_dir: bool


class TarReader:
    """The members of a tar stream, refusing (ArchiveError) the first hostile one as its header is read.

        reader = TarReader(read, "code/source.tar")     # read(): the next chunk of the tar stream, b"" at its end
        for m in reader:                                # Member(name, size, is_dir)
            data = reader.read()                        # the current file's bytes (small files), or
            digest = reader.sha256()                    # its hex sha256, or
            for chunk in reader.chunks(): ...           # its bytes in pieces (large files)

    Data the caller does not read is skipped. More than limits.max_members members, names that escape or
    are not UTF-8, links, devices, FIFOs, sparse files, a file larger than the per-file limit, members
    whose sizes add up past the total limit (or past `ratio_cap`), file/folder clashes and duplicates,
    bad checksums and truncation are refused. The one tar reader of the package: unpacking an archive
    and checking a code snapshot use it."""

    def __init__(self, read: Callable[[], bytes], label: str, limits: Limits = DEFAULT_LIMITS,
                 ratio_cap: int | None = None) -> None:
        self._read = read
        self.label = label
        self.limits = limits
        self.ratio_cap = ratio_cap
        self._buf = b""
        self._pos = 0
        self._left = 0  # unread data bytes of the current member
        self._pad = 0  # and the padding after them
        self._current = ""
        self.members = 0
        self.ended = False  # the end-of-archive block was read

    @classmethod
    def from_file(cls, f: IO[bytes], label: str, limits: Limits = DEFAULT_LIMITS,
                  ratio_cap: int | None = None) -> TarReader:
        return cls(lambda: f.read(_CHUNK), label, limits, ratio_cap)

    # the buffer
    def _fill(self, n: int) -> int:
        """Make at least n bytes available at self._pos if the stream has them; the number available."""
        have = len(self._buf) - self._pos
        if have >= n:
            return have
        parts = [self._buf[self._pos:]]
        while have < n:
            chunk = self._read()
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self._buf = b"".join(parts)
        self._pos = 0
        return have

    def _skip(self, n: int) -> None:
        avail = len(self._buf) - self._pos
        while n > avail:
            n -= avail
            self._buf = self._read()
            self._pos = 0
            avail = len(self._buf)
            if not avail:
                raise ArchiveError(f"{self.label}: truncated: the archive ends inside member {self._current!r}")
        self._pos += n

    def _take(self, n: int) -> bytes:
        """The next n bytes (n is small: an extended header), then skip their padding."""
        if self._fill(n) < n:
            raise ArchiveError(f"{self.label}: truncated: the archive ends inside an extended header")
        data = self._buf[self._pos:self._pos + n]
        self._pos += n
        self._skip(-n % _BLOCK)
        return data

    # the current member's data
    def chunks(self) -> Iterator[memoryview]:
        """The rest of the current member's data, in pieces (views of the buffer: use each before the next)."""
        while self._left:
            avail = len(self._buf) - self._pos
            if not avail:
                self._buf = self._read()
                self._pos = 0
                if not self._buf:
                    raise ArchiveError(f"{self.label}: member {self._current!r} is truncated (the archive ends "
                                       "inside its data)")
                continue
            take = avail if avail < self._left else self._left
            start = self._pos
            self._pos += take
            self._left -= take
            yield memoryview(self._buf)[start:start + take]

    def read(self) -> bytes:
        """The rest of the current member's data as bytes (meant for small files: it is held whole)."""
        n = self._left
        if self._fill(n) >= n:
            data = self._buf[self._pos:self._pos + n]
            self._pos += n
            self._left = 0
            return data
        return b"".join(bytes(c) for c in self.chunks())

    def sha256(self) -> str:
        h = hashlib.sha256()
        for chunk in self.chunks():
            h.update(chunk)
        return h.hexdigest()

    # the headers
    def __iter__(self) -> Iterator[Member]:
        label, limits, ratio_cap = self.label, self.limits, self.ratio_cap
        adler = _adler32
        max_members, max_file = limits.max_members, limits.max_file_bytes
        max_total = limits.max_total_bytes
        declared = 0
        dirs: set[str] = set()
        files: set[str] = set()
        pax_global: dict[str, bytes] = {}
        pax: dict[str, bytes] | None = None
        longname: bytes | None = None
        longlink: bytes | None = None
        meta_run = 0
        while True:
            n = self._left + self._pad
            if n:
                self._left = self._pad = 0
                if n <= len(self._buf) - self._pos:
                    self._pos += n
                else:
                    self._skip(n)
            have = len(self._buf) - self._pos
            if have < _BLOCK:
                have = self._fill(_BLOCK)
                if have < _BLOCK:
                    where = "inside a header" if have else "without its end-of-archive block"
                    raise ArchiveError(f"{label}: truncated: the archive ends {where}")
            pos = self._pos
            h = self._buf[pos:pos + _BLOCK]
            self._pos = pos + _BLOCK
            if h == _ZERO_BLOCK:
                if pax is not None or longname is not None or longlink is not None:
                    raise ArchiveError(f"{label}: an extended header with no member after it; refused")
                self.ended = True
                return
            # the checksum and the size, inline for the common octal case (see _checksum_ok, _number)
            chk = h[148:156]
            if chk[:1] < b"\x80" and chk[6:7] == b"\0":
                try:
                    stored = int(chk[:6], 8)
                except ValueError:
                    stored = -1
                if stored != ((adler(h[:148]) & 0xFFFF) + (adler(h[156:356]) & 0xFFFF)
                              + (adler(h[356:]) & 0xFFFF) + 253):
                    _checksum_ok(h, label)
            else:
                _checksum_ok(h, label)
            typ = h[156:157]
            field = h[124:136]
            if field[11:12] == b"\0" and field[:1] < b"\x80" and field[:11].isdigit():
                size = int(field[:11], 8) if b"8" not in field and b"9" not in field else _number(field, "size", label)
            else:
                size = _number(field, "size", label)
            if typ in _META_TYPES:
                meta_run += 1
                if meta_run > _MAX_META_RUN:
                    raise ArchiveError(f"{label}: more than {_MAX_META_RUN} extended headers in a row; refused")
                if size > _MAX_META_HEADER:
                    raise ArchiveError(f"{label}: a {size}-byte extended header is larger than the "
                                       f"{_MAX_META_HEADER}-byte limit")
                data = self._take(size)
                if typ == b"L":
                    longname = data.split(b"\0", 1)[0]
                elif typ == b"K":
                    longlink = data.split(b"\0", 1)[0]
                elif typ == b"g":
                    pax_global.update(_parse_pax(data, label))
                else:
                    pax = {**(pax or {}), **_parse_pax(data, label)}
                continue
            meta_run = 0
            # the name: pax path, else GNU long name, else the header's (ustar prefix + name)
            raw = h[:100]
            i = raw.find(b"\0")
            if i >= 0:
                raw = raw[:i]
            if typ == b"\0" and raw.endswith(b"/"):
                typ = _DIRTYPE  # old V7 tars mark a folder by a trailing slash
            prefix = h[345:500]
            if prefix[:1] != b"\0" and typ != b"S":
                i = prefix.find(b"\0")
                raw = (prefix[:i] if i >= 0 else prefix) + b"/" + raw
            info = {**pax_global, **pax} if pax is not None else pax_global
            pax = None
            if info:
                if "path" in info:
                    if longname is not None:
                        raise ArchiveError(f"{label}: a member with both a pax path and a GNU long name; refused")
                    raw = info["path"]
                elif longname is not None:
                    raw = longname
                if "size" in info:
                    if not info["size"].isdigit() or len(info["size"]) > 20:
                        raise ArchiveError(f"{label}: a pax header's size is not a number; refused")
                    size = int(info["size"])
            elif longname is not None:
                raw = longname
            longname = None
            text = raw.decode("utf-8", "surrogateescape")
            self.members += 1
            if self.members > max_members:
                raise ArchiveError(f"{label}: more than {max_members} members; refused")
            try:
                name = safe_member_name(text, limits)
            except ArchiveError as exc:
                raise ArchiveError(f"{label}: {exc}") from None
            if typ == _DIRTYPE:
                longlink = None
                if name in files:
                    raise ArchiveError(f"{label}: member {name!r} is a folder and a file; refused")
                if name not in dirs:
                    _add_parents(name, dirs, files, label, include_self=True)
                self._current = name
                yield Member(name, 0, True)
                continue
            if typ == b"S" or (info and any(k.startswith("GNU.sparse.") for k in info)):
                raise ArchiveError(f"{label}: member {text!r} is a sparse file; only regular files and "
                                   "folders are allowed")
            if typ not in _REGULAR:
                what = _TYPE_NAMES.get(typ, f"of unsupported type {typ!r}")
                target = ""
                if typ in (b"1", b"2"):
                    link = info.get("linkpath") if info else None
                    if link is None:
                        link = longlink
                    if link is None:
                        link = h[157:257].split(b"\0", 1)[0]
                    target = f" to {link.decode('utf-8', 'surrogateescape')!r}"
                raise ArchiveError(f"{label}: member {text!r} is {what}{target}; only regular files and "
                                   "folders are allowed")
            longlink = None
            if size > max_file:
                raise ArchiveError(f"{label}: member {text!r} declares {size} bytes, more than the "
                                   f"{max_file}-byte limit for one file")
            declared += size
            if declared > max_total:
                raise ArchiveError(f"{label}: members add up to more than the {max_total}-byte "
                                   f"limit (at {text!r})")
            if ratio_cap is not None and declared > ratio_cap:
                raise ArchiveError(f"{label}: member {text!r} takes the unpacked size past "
                                   f"{limits.max_ratio:g} times the archive's size; refused as a decompression bomb")
            if name in files or name in dirs:
                raise ArchiveError(f"{label}: member {name!r} appears more than once; refused")
            parent = name.rpartition("/")[0]
            if parent and parent not in dirs:
                _add_parents(name, dirs, files, label, include_self=False)
            files.add(name)
            self._left = size
            self._pad = -size % _BLOCK
            self._current = name
            yield Member(name, size, False)


_BAD_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_BAD_PARTS = frozenset({"", ".", ".."})


def safe_member_name(raw: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """The relative posix name a member may be written under, or ArchiveError saying why not."""
    name = raw
    while name[:2] == "./":
        name = name[2:]
    if name[-1:] == "/":
        name = name.rstrip("/")
    if not name:
        raise ArchiveError(f"member {raw!r} has an empty name")
    if name.isascii():
        nbytes = len(name)
    else:
        try:
            nbytes = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            raise ArchiveError(f"member {raw!a} has a name that is not UTF-8; refused") from None
    if nbytes > limits.max_name_bytes:
        raise ArchiveError(f"member {raw[:80]!r}... has a name longer than {limits.max_name_bytes} bytes")
    if name[:1] == "/" or name[1:2] == ":":
        raise ArchiveError(f"member {raw!r} has an absolute path; refused")
    if _BAD_NAME_CHARS.search(name) is not None:
        raise ArchiveError(f"member {raw!r} has a backslash or a control character in its name; refused")
    parts = name.split("/")
    if _BAD_PARTS.intersection(parts):
        if ".." in parts:
            raise ArchiveError(f"member {raw!r} escapes the destination ('..'); refused")
        raise ArchiveError(f"member {raw!r} has an empty or '.' path component; refused")
    if nbytes > 255 and any(len(p.encode("utf-8")) > 255 for p in parts):
        raise ArchiveError(f"member {raw!r} has a path component longer than 255 bytes")
    return name


def iter_tar(f: IO[bytes], label: str, limits: Limits = DEFAULT_LIMITS,
             ratio_cap: int | None = None) -> Iterator[Member]:
    """The members of the tar in the binary file `f` (their data skipped), through `TarReader`."""
    return iter(TarReader.from_file(f, label, limits, ratio_cap))


def _add_parents(name: str, dirs: set[str], files: set[str], label: str, include_self: bool) -> None:
    parent = name if include_self else name.rpartition("/")[0]
    if not parent or parent in dirs:
        return
    parts = parent.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if sub in files:
            raise ArchiveError(f"{label}: member {name!r} needs {sub!r} to be a folder, but it is a file")
        dirs.add(sub)


class _Source:
    """The tar stream of an archive file: read in large chunks, hashed (the archive's sha256) and counted
    (progress) as read from disk, gunzipped with zlib for a .tar.gz (concatenated gzip members and
    trailing NUL padding accepted, a truncated or corrupt stream refused), and capped: producing more
    than `cap` bytes is refused as a decompression bomb."""

    def __init__(self, f: IO[bytes], kind: str, cap: int, label: str,
                 progress: Callable[[int], None] | None) -> None:
        self._f = f
        self._gz = kind == "tar.gz"
        self._cap = cap
        self._label = label
        self._progress = progress
        self.hash = hashlib.sha256()
        self.count = 0  # bytes read from the file
        self.produced = 0  # bytes of tar stream produced
        self._d = zlib.decompressobj(31) if self._gz else None
        self._in = b""  # compressed input not yet given to zlib

    def _raw(self) -> bytes:
        data = self._f.read(_CHUNK)
        if data:
            self.count += len(data)
            self.hash.update(data)
            if self._progress is not None:
                self._progress(len(data))
        return data

    def read(self) -> bytes:
        if not self._gz:
            out = self._raw()
        else:
            out = self._inflate()
        self.produced += len(out)
        if self.produced > self._cap:
            raise ArchiveError(f"{self._label}: unpacks to more than {self._cap} bytes; refused as a decompression "
                               "bomb")
        return out

    def _inflate(self) -> bytes:
        d = self._d
        assert d is not None
        while True:
            if d.unconsumed_tail:
                out = d.decompress(d.unconsumed_tail, _CHUNK)
            elif d.eof:
                rest = d.unused_data.lstrip(b"\0")
                while not rest:
                    more = self._raw()
                    if not more:
                        return b""
                    rest = more.lstrip(b"\0")
                if rest[:2] != _GZIP_MAGIC[:len(rest[:2])]:
                    raise ArchiveError(f"{self._label}: not a readable tar.gz archive (data after the gzip "
                                       "stream is not gzip)")
                d = self._d = zlib.decompressobj(31)
                out = d.decompress(rest, _CHUNK)
            else:
                data = self._raw()
                if not data:
                    raise ArchiveError(f"{self._label}: not a readable tar.gz archive (truncated: the compressed "
                                       "stream ends early)")
                out = d.decompress(data, _CHUNK)
            if out:
                return out

    def drain(self) -> None:
        """Read the rest of the file (after the end-of-archive block), for the archive's sha256."""
        while self._raw():
            pass


MEMORY_FILE_BYTES = 1 << 20  # with in_memory: files up to this size stay in memory ...
MEMORY_BUDGET_BYTES = 256 << 20  # ... up to this much in all; the rest is written to disk


def extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS,
            progress: Callable[[int], None] | None = None, *, in_memory: bool = False) -> Unpacked:
    """Unpack `archive` into the empty folder `dest`, refusing anything hostile (ArchiveError).

    Returns the folder of the bundle inside dest and the sha256 of every file written,
    keyed by its name relative to that folder. With in_memory, small files (MEMORY_FILE_BYTES,
    MEMORY_BUDGET_BYTES in all) are kept in `Unpacked.memory` instead of being written: an
    archive of 100,000 tiny files is read without 100,000 file creations (and removals).
    """
    archive = Path(archive)
    dest = Path(dest)
    label = archive.name
    kind = detect_archive(archive)
    if kind is None:
        raise ArchiveError(f"{archive}: not a tar or tar.gz archive")
    if any(dest.iterdir()):
        raise ArchiveError(f"{dest}: the destination must be empty")
    archive_size = archive.stat().st_size
    ratio_cap = max(int(limits.max_ratio * archive_size), limits.ratio_floor_bytes)
    digests: dict[str, str] = {}
    sizes: dict[str, int] = {}
    memory: dict[str, bytes] = {}
    dir_names: set[str] = set()
    in_mem = 0
    made: set[str] = set()
    members = 0
    written = 0
    free = shutil.disk_usage(dest).free
    try:
        with open(archive, "rb", buffering=0) as f0:
            # headers and padding come on top of the files' bytes: allow for them in the cap
            stream_cap = min(ratio_cap, limits.max_total_bytes) + (limits.max_members + 2) * 1024 + 2 * _CHUNK
            if kind == "tar":
                stream_cap = max(stream_cap, archive_size + 1)
            source = _Source(f0, kind, stream_cap, label, progress)  # type: ignore[arg-type]
            tar = TarReader(source.read, label, limits, ratio_cap)
            for m in tar:
                if m.is_dir:
                    dir_names.add(m.name)
                    if not in_memory:
                        _make_dirs(dest, m.name, made)
                    continue
                sizes[m.name] = m.size
                if in_memory and m.size <= MEMORY_FILE_BYTES and in_mem + m.size <= MEMORY_BUDGET_BYTES:
                    data = tar.read()
                    memory[m.name] = data
                    digests[m.name] = hashlib.sha256(data).hexdigest()
                    in_mem += m.size
                    written += m.size
                    continue
                # free space: asked again only when the members written since could have used it up
                if m.size + limits.disk_headroom_bytes > free:
                    free = shutil.disk_usage(dest).free
                    if m.size + limits.disk_headroom_bytes > free:
                        raise ArchiveError(f"{label}: not enough space in {dest} for member {m.name!r} "
                                           f"({m.size} bytes, {free} free)")
                free -= m.size + 4096
                parent = m.name.rpartition("/")[0]
                if parent:
                    _make_dirs(dest, parent, made)
                digests[m.name] = _write_member(dest, m.name, tar, label)
                written += m.size
            members = tar.members
            source.drain()  # the rest of the file (end-of-archive padding): for its sha256
    except ArchiveError:
        raise
    except zlib.error as exc:
        raise ArchiveError(f"{archive}: not a readable {kind} archive ({exc})") from None
    except OSError as exc:
        raise ArchiveError(f"{archive}: cannot unpack ({exc})") from None
    except Exception as exc:  # pragma: no cover - the reader raises ArchiveError; a last line of defence
        raise ArchiveError(f"{archive}: malformed archive ({type(exc).__name__}: {exc})") from None
    prefix = _bundle_prefix(set(sizes), dir_names)
    root = dest / prefix.rstrip("/") if prefix else dest
    root.mkdir(parents=True, exist_ok=True)
    n = len(prefix)
    return Unpacked(tmp=dest, root=root, digests={k[n:]: d for k, d in digests.items() if k.startswith(prefix)},
                    members=members, bytes=written, archive_sha256=source.hash.hexdigest(),
                    sizes={k[n:]: v for k, v in sizes.items() if k.startswith(prefix)},
                    memory={k[n:]: v for k, v in memory.items() if k.startswith(prefix)})


def _make_dirs(dest: Path, name: str, made: set[str]) -> None:
    if name in made:
        return
    parts = name.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if sub not in made:
            (dest / sub).mkdir(mode=0o755, exist_ok=True)
            made.add(sub)


def _write_member(dest: Path, name: str, tar: TarReader, label: str) -> str:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(dest / name, flags, 0o644)
    except FileExistsError:
        raise ArchiveError(f"{label}: member {name!r} appears more than once; refused") from None
    h = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        for chunk in tar.chunks():
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _bundle_prefix(files: set[str], dirs: set[str]) -> str:
    """The bundle is the archive's single top folder ("<top>/"), or the archive's top level itself ("")."""
    tops = {n.split("/", 1)[0] for n in files | dirs}
    if len(tops) == 1:
        (top,) = tops
        if top in dirs or any(n.startswith(f"{top}/") for n in files):
            return f"{top}/"
    return ""


@contextlib.contextmanager
def unpacked(archive: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS,
             tmp_dir: str | os.PathLike[str] | None = None,
             progress: Callable[[int], None] | None = None) -> Iterator[Unpacked]:
    """Unpack into a new temporary folder, yield it, and remove it whatever happens."""
    tmp = Path(tempfile.mkdtemp(prefix="prov-unpack-", dir=tmp_dir))
    try:
        yield extract(archive, tmp, limits, progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
