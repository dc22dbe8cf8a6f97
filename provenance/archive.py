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
from typing import IO, Any

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


class SafeTarInfo(tarfile.TarInfo):
    """Refuses oversized pax / GNU long-name headers before tarfile reads them into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:  # type: ignore[override]
        meta = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE)
        if self.type in meta and self.size > _MAX_META_HEADER:
            raise ArchiveError(f"a {self.size}-byte extended header is larger than the "
                               f"{_MAX_META_HEADER}-byte limit")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise ArchiveError(f"member {self.name!r} is a sparse file; only regular files and folders are allowed")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


class _CountingRaw(io.RawIOBase):
    """The archive file as read from disk: counts bytes for the progress bar."""

    def __init__(self, f: IO[bytes], progress: Callable[[int], None] | None) -> None:
        self._f = f
        self._progress = progress
        self.count = 0
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(b)  # type: ignore[attr-defined]
        if n:
            self.count += n
            self.hash.update(memoryview(b)[:n])
            if self._progress is not None:
                self._progress(n)
        return n or 0


class _BoundedStream(io.RawIOBase):
    """The unpacked tar stream: refuses to produce more than `cap` bytes (a decompression bomb)."""

    def __init__(self, f: IO[bytes], cap: int, label: str) -> None:
        self._f = f
        self._cap = cap
        self._label = label
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._cap - self.count + 1
        data = self._f.read(min(n, self._cap - self.count + 1))
        self.count += len(data)
        if self.count > self._cap:
            raise ArchiveError(f"{self._label}: unpacks to more than {self._cap} bytes; refused as a decompression "
                               "bomb")
        return data


_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO", tarfile.CONTTYPE: "a contiguous file",
}


_BAD_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_BAD_PARTS = frozenset({"", ".", ".."})


def safe_member_name(raw: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """The relative posix name a member may be written under, or ArchiveError saying why not."""
    name = raw
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if not name:
        raise ArchiveError(f"member {raw!r} has an empty name")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArchiveError(f"member {raw!a} has a name that is not UTF-8; refused") from None
    if len(encoded) > limits.max_name_bytes:
        raise ArchiveError(f"member {raw[:80]!r}... has a name longer than {limits.max_name_bytes} bytes")
    if name.startswith("/") or name[1:2] == ":":
        raise ArchiveError(f"member {raw!r} has an absolute path; refused")
    if _BAD_NAME_CHARS.search(name) is not None:
        raise ArchiveError(f"member {raw!r} has a backslash or a control character in its name; refused")
    parts = name.split("/")
    if _BAD_PARTS.intersection(parts):
        if ".." in parts:
            raise ArchiveError(f"member {raw!r} escapes the destination ('..'); refused")
        raise ArchiveError(f"member {raw!r} has an empty or '.' path component; refused")
    if len(encoded) > 255 and any(len(p.encode("utf-8")) > 255 for p in parts):
        raise ArchiveError(f"member {raw!r} has a path component longer than 255 bytes")
    return name


@dataclass(frozen=True)
class Member:
    """One member of a tar as `iter_tar` yields it: a validated name and its kind."""

    name: str  # relative posix name, safe to join under a destination
    size: int
    is_dir: bool
    info: tarfile.TarInfo


def iter_tar(tar: tarfile.TarFile, label: str, limits: Limits = DEFAULT_LIMITS,
             ratio_cap: int | None = None) -> Iterator[Member]:
    """The members of an open tar, refusing (ArchiveError) the first hostile one as its header is read:
    more than limits.max_members members, names that escape or are not UTF-8, links, devices,
    FIFOs, sparse files, a file larger than the per-file limit, members whose sizes add up
    past the total limit (or past `ratio_cap`), and file/folder clashes and duplicates.
    The one tar reader of the package: unpacking an archive and checking a code snapshot use it."""
    members = 0
    declared = 0
    dirs: set[str] = set()
    files: set[str] = set()
    for m in tar:
        members += 1
        if members > limits.max_members:
            raise ArchiveError(f"{label}: more than {limits.max_members} members; refused")
        name = safe_member_name(m.name, limits)
        if m.isdir():
            if name in files:
                raise ArchiveError(f"{label}: member {name!r} is a folder and a file; refused")
            _add_parents(name, dirs, files, label, include_self=True)
            yield Member(name, 0, True, m)
            continue
        if m.issparse():
            raise ArchiveError(f"{label}: member {m.name!r} is a sparse file; only regular files and "
                               "folders are allowed")
        if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            what = _TYPE_NAMES.get(m.type, f"of unsupported type {m.type!r}")
            target = f" to {m.linkname!r}" if m.issym() or m.islnk() else ""
            raise ArchiveError(f"{label}: member {m.name!r} is {what}{target}; only regular files and "
                               "folders are allowed")
        if m.size > limits.max_file_bytes:
            raise ArchiveError(f"{label}: member {m.name!r} declares {m.size} bytes, more than the "
                               f"{limits.max_file_bytes}-byte limit for one file")
        declared += m.size
        if declared > limits.max_total_bytes:
            raise ArchiveError(f"{label}: members add up to more than the {limits.max_total_bytes}-byte "
                               f"limit (at {m.name!r})")
        if ratio_cap is not None and declared > ratio_cap:
            raise ArchiveError(f"{label}: member {m.name!r} takes the unpacked size past "
                               f"{limits.max_ratio:g} times the archive's size; refused as a decompression bomb")
        if name in files or name in dirs:
            raise ArchiveError(f"{label}: member {name!r} appears more than once; refused")
        _add_parents(name, dirs, files, label, include_self=False)
        files.add(name)
        yield Member(name, m.size, False, m)


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


def open_tar_stream(fileobj: IO[bytes]) -> tarfile.TarFile:
    """A streaming ("r|") tar reader over `fileobj` that refuses oversized pax / long-name headers."""
    return tarfile.open(fileobj=fileobj, mode="r|", tarinfo=SafeTarInfo)  # type: ignore[arg-type]


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
            counting = _CountingRaw(f0, progress)  # type: ignore[arg-type]
            buffered = io.BufferedReader(counting, buffer_size=_CHUNK)
            inner: IO[bytes] = gzip.GzipFile(fileobj=buffered, mode="rb") if kind == "tar.gz" else buffered
            # headers and padding come on top of the files' bytes: allow for them in the cap
            stream_cap = min(ratio_cap, limits.max_total_bytes) + (limits.max_members + 2) * 1024 + 2 * _CHUNK
            if kind == "tar":
                stream_cap = max(stream_cap, archive_size + 1)
            bounded = _BoundedStream(inner, stream_cap, label)
            with open_tar_stream(bounded) as tar:  # type: ignore[arg-type]
                for m in iter_tar(tar, label, limits, ratio_cap):
                    members += 1
                    if m.is_dir:
                        dir_names.add(m.name)
                        if not in_memory:
                            _make_dirs(dest, m.name, made)
                        continue
                    sizes[m.name] = m.size
                    if in_memory and m.size <= MEMORY_FILE_BYTES and in_mem + m.size <= MEMORY_BUDGET_BYTES:
                        src = tar.extractfile(m.info)
                        data = src.read(m.size) if src is not None else b""
                        if len(data) != m.size:
                            raise ArchiveError(f"{label}: member {m.name!r} is truncated ({len(data)} of {m.size} "
                                               "bytes)")
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
                    src = tar.extractfile(m.info)
                    if src is None:  # pragma: no cover - regular members always have data
                        raise ArchiveError(f"{label}: member {m.name!r} has no data")
                    parent = m.name.rpartition("/")[0]
                    if parent:
                        _make_dirs(dest, parent, made)
                    digests[m.name] = _write_member(dest, m.name, src, m.size, label)
                    written += m.size
            while buffered.read(_CHUNK):  # the rest of the file (end-of-archive padding): for its sha256
                pass
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{archive}: not a readable {kind} archive ({exc})") from None
    except OSError as exc:
        raise ArchiveError(f"{archive}: cannot unpack ({exc})") from None
    except UnicodeError as exc:
        raise ArchiveError(f"{archive}: a member name is not valid text ({exc})") from None
    except Exception as exc:  # tarfile's parsers raise ValueError & co. on crafted headers
        raise ArchiveError(f"{archive}: malformed archive ({type(exc).__name__}: {exc})") from None
    prefix = _bundle_prefix(set(sizes), dir_names)
    root = dest / prefix.rstrip("/") if prefix else dest
    root.mkdir(parents=True, exist_ok=True)
    n = len(prefix)
    return Unpacked(tmp=dest, root=root, digests={k[n:]: d for k, d in digests.items() if k.startswith(prefix)},
                    members=members, bytes=written, archive_sha256=counting.hash.hexdigest(),
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


def _write_member(dest: Path, name: str, src: IO[bytes], size: int, label: str) -> str:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(dest / name, flags, 0o644)
    except FileExistsError:
        raise ArchiveError(f"{label}: member {name!r} appears more than once; refused") from None
    h = hashlib.sha256()
    n = 0
    with os.fdopen(fd, "wb") as out:
        while n < size:
            chunk = src.read(min(_CHUNK, size - n))
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
    if n != size:
        raise ArchiveError(f"{label}: member {name!r} is truncated ({n} of {size} bytes)")
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
