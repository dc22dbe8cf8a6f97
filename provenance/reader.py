"""The one reader of a bundle (a run folder or a release archive), safe on hostile input.

    with Bundle("runs/<run_id>") as b:        # or Bundle("release.tar.gz"): unpacked, removed on close
        b.files, b.has("run.json"), b.size(rel)
        b.json("run.json")                     # bounded, parsed once; BundleFileError names the file
        b.jsonl("logs/metrics.jsonl")          # ([(line, record)], problems)
        b.safetensors_header("model/model.safetensors")
        b.tar_members("code/source.tar")       # (member, sha256) of a tar inside the bundle
        b.run_record(), b.config_record(), b.checkpoint_index(), b.data_manifest(name),
        b.order_header(rank), b.notes(), b.record(records.CommandRecord, rel)   # typed records (provenance.records)
        b.records("logs/metrics.jsonl")        # strict JSON lines: [record], a bad line is an error
        b.order(rank)                          # one rank's recorded data order (formats.OrderStep)

Rules (the audit's since the first version, now the whole package's):
- the folder is scanned once, without following anything: a symbolic link, FIFO, socket
  or device anywhere, a name that is not UTF-8, or more than `max_files` files refuse the
  bundle (Refused); nothing is ever opened that is not a regular file found by that scan;
- every name a bundle file gives (an index, a manifest) goes through `path()`, which
  refuses names that escape the bundle and names that are not files of the bundle;
- reads are bounded (a file larger than its limit is refused before it is read); JSON goes
  through provenance.untrusted.loads (UTF-8, depth, digits, size); tensors are read as
  safetensors headers only; tars through provenance.archive.TarReader; nothing is unpickled,
  nothing is executed.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from provenance import formats, records
from provenance.archive import DEFAULT_LIMITS as DEFAULT_ARCHIVE_LIMITS
from provenance.archive import ArchiveError, Limits, TarReader, Unpacked, detect_archive, extract
from provenance.bundle import BundleError, safe_relpath
from provenance.untrusted import DEFAULT_JSON_LIMITS, JSONLimits, UntrustedJSONError, escape, loads

MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors format's own limit

R = TypeVar("R")


class Refused(ValueError):
    """The bundle was refused as hostile or unusable; the message names what was refused."""


class BundleFileError(Exception):
    """A bundle file that is needed is missing, malformed or refused; names the file."""

    def __init__(self, rel: str, message: str) -> None:
        super().__init__(f"{rel}: {message}")
        self.rel = rel
        self.message = message


@dataclass(frozen=True)
class ReadLimits:
    max_json_bytes: int = formats.MAX_JSON_BYTES  # one JSON file (manifest.json included)
    max_jsonl_bytes: int = 1 << 30  # one JSON-lines file (logs, notes)
    max_files: int = 1_000_000  # files in a bundle folder
    max_header_bytes: int = MAX_SAFETENSORS_HEADER
    max_order_bytes: int = 8 << 30  # one rank's data-order file (sample ids)
    json: JSONLimits = DEFAULT_JSON_LIMITS
    archive: Limits = DEFAULT_ARCHIVE_LIMITS


DEFAULT_READ_LIMITS = ReadLimits()


# --- JSON --------------------------------------------------------------------------------------


def load_json(data: bytes, where: str, limits: JSONLimits = DEFAULT_JSON_LIMITS) -> Any:
    """Bounded JSON of bundle file `where`; BundleFileError names it."""
    try:
        return loads(data, limits)
    except UntrustedJSONError as exc:
        msg = str(exc)
        if "nested" in msg:
            msg = "JSON nested too deeply; refused"
        elif not msg.startswith(("malformed JSON", "not UTF-8")) and "-byte limit" not in msg:
            msg = f"malformed JSON ({msg}); refused"
        elif msg.startswith("not UTF-8"):
            msg = f"malformed JSON ({msg}); refused"
        raise BundleFileError(where, msg) from None


def parse_jsonl(data: bytes, where: str, limits: JSONLimits = DEFAULT_JSON_LIMITS
                ) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """([(line number, record)], problems) of a JSON-lines file; each problem names a line.

    The one JSON-lines parser: an unterminated last line (a crash mid-append) is a problem that
    says so; every line is a bounded JSON object."""
    records: list[tuple[int, dict[str, Any]]] = []
    problems: list[str] = []
    lines = data.split(b"\n")
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = load_json(raw, where, limits)
        except BundleFileError as exc:
            tail = " (the last line is unterminated: torn by a crash?)" if i == len(lines) else ""
            problems.append(f"line {i}: {exc.message}{tail}")
            continue
        if not isinstance(rec, dict):
            problems.append(f"line {i}: not a JSON object")
            continue
        records.append((i, rec))
    if data and not data.endswith(b"\n") and not problems:
        problems.append(f"line {len(lines)}: the last line is not terminated by a newline")
    return records, problems


# --- safetensors headers -------------------------------------------------------------------------

_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
                "C64": 8, "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1}


class HeaderError(ValueError):
    """A safetensors header is malformed or claims what the file cannot hold."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]  # into the data section

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int
    data_bytes: int

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def dtypes(self) -> list[str]:
        return sorted({t.dtype for t in self.tensors.values()})

    def fullyopen_metadata(self) -> dict[str, Any]:
        """The checkpoint metadata this package writes ("fullyopen" key, JSON), else the raw metadata."""
        if "fullyopen" in self.metadata:
            inner = load_json(self.metadata["fullyopen"].encode(), "__metadata__.fullyopen")
            return inner if isinstance(inner, dict) else {}
        return dict(self.metadata)


def read_safetensors_header(f: IO[bytes], size: int, max_header: int = MAX_SAFETENSORS_HEADER,
                            json_limits: JSONLimits = DEFAULT_JSON_LIMITS) -> SafetensorsHeader:
    """Parse and check the header of a safetensors file of `size` bytes open as `f` (tensors never read).

    Every tensor's dtype, shape and offsets are checked against each other and against the
    file's size: a header that claims 2**60 bytes, overlapping or missing data, a shape that
    does not match its byte range, or a deep or huge header is a HeaderError."""
    if size < 8:
        raise HeaderError(f"{size} bytes: shorter than a safetensors header")
    head = f.read(8)
    (n,) = struct.unpack("<Q", head)
    if n > max_header:
        raise HeaderError(f"the header claims {n} bytes, more than the {max_header}-byte limit")
    if 8 + n > size:
        raise HeaderError(f"the header claims {n} bytes but the file has {size}")
    raw = f.read(n)
    try:
        obj = loads(raw, JSONLimits(max_bytes=max(n, 1), max_depth=min(json_limits.max_depth, 8),
                                    max_number_chars=json_limits.max_number_chars))
    except UntrustedJSONError as exc:
        raise HeaderError(f"header: {exc}") from None
    if not isinstance(obj, dict):
        raise HeaderError("the header is not a JSON object")
    meta_raw = obj.pop("__metadata__", None) or {}
    if not isinstance(meta_raw, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in meta_raw.items()):
        raise HeaderError("__metadata__ must map strings to strings")
    data_bytes = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, t in obj.items():
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise HeaderError(f"tensor {name!r}: needs exactly dtype, shape and data_offsets")
        dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise HeaderError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > 16 or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise HeaderError(f"tensor {name!r}: shape must be a list of non-negative integers")
        if not isinstance(offs, list) or len(offs) != 2 or not all(
                isinstance(o, int) and not isinstance(o, bool) for o in offs):
            raise HeaderError(f"tensor {name!r}: data_offsets must be two integers")
        begin, end = offs
        if not 0 <= begin <= end <= data_bytes:
            raise HeaderError(f"tensor {name!r}: data_offsets [{begin}, {end}] lie outside the file's "
                              f"{data_bytes} data bytes")
        nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
        if dtype in ("F4", "F6_E2M3", "F6_E3M2"):
            nbytes = end - begin  # sub-byte types: not checked
        if nbytes != end - begin:
            raise HeaderError(f"tensor {name!r}: {dtype} {shape} needs {nbytes} bytes, data_offsets give "
                              f"{end - begin}")
        tensors[name] = TensorInfo(dtype, tuple(shape), (begin, end))
    pos = 0
    for ti in sorted(tensors.values(), key=lambda x: x.offsets):
        if ti.offsets[0] != pos:
            raise HeaderError(f"tensor data overlaps or leaves a gap at byte {pos}")
        pos = ti.offsets[1]
    if pos != data_bytes:
        raise HeaderError(f"the tensors cover {pos} of the file's {data_bytes} data bytes")
    return SafetensorsHeader(tensors, dict(meta_raw), n, data_bytes)


def safetensors_header(path: str | os.PathLike[str], max_header: int = MAX_SAFETENSORS_HEADER) -> SafetensorsHeader:
    """read_safetensors_header of a file outside a bundle (a regular file, never followed if a link)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise HeaderError("not a regular file")
        return read_safetensors_header(f, st.st_size, max_header)


# --- scanning a folder ---------------------------------------------------------------------------


def scan_folder(root: Path, max_files: int = DEFAULT_READ_LIMITS.max_files) -> dict[str, int]:
    """Every regular file under root -> its size. Refuses links, devices, FIFOs, sockets, non-UTF-8 names."""
    out: dict[str, int] = {}
    real_root = root.resolve()
    stack: list[tuple[str, str]] = [("", str(root))]
    while stack:
        prefix, d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as exc:
            raise Refused(f"{prefix or '.'}: cannot list the folder ({exc.strerror})") from None
        for e in entries:
            rel = prefix + e.name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused(f"{rel.encode('utf-8', 'surrogateescape')!a}: a file name that is not UTF-8; "
                              "refused") from None
            if e.is_symlink():
                target = os.readlink(e.path)
                resolved = (Path(d) / target).resolve()
                inside = resolved == real_root or real_root in resolved.parents
                where = "inside the bundle" if inside else "outside the bundle"
                raise Refused(f"{escape(rel)}: a symbolic link to {target!r} ({where}); a bundle holds no links, "
                              "refused")
            if e.is_dir(follow_symlinks=False):
                stack.append((rel + "/", e.path))
            elif e.is_file(follow_symlinks=False):
                out[rel] = e.stat(follow_symlinks=False).st_size
                if len(out) > max_files:
                    raise Refused(f"{root}: more than {max_files} files; refused")
            else:
                mode = e.stat(follow_symlinks=False).st_mode
                kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
                raise Refused(f"{escape(rel)}: {kind}; a bundle holds regular files only, refused")
    return out


def _open_regular(path: Path) -> IO[bytes]:
    """Open a file found by the scan for reading, never following a link nor blocking on a FIFO
    put in its place since (the file is checked to still be a regular file)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_CLOEXEC", 0))
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise OSError(f"{path.name}: no longer a regular file")
    return f


# --- the bundle ------------------------------------------------------------------------------------


@dataclass
class TarMember:
    name: str
    size: int
    sha256: str  # "" for a folder
    is_dir: bool = False


class Bundle:
    """Read-only, bounded access to a bundle. `Bundle(path)` scans a folder, or unpacks an archive
    (.tar, .tar.gz) into a temporary folder that `close()` (or leaving the `with` block) removes.

    `digests` (hex sha256 by name) holds what is known of the files' digests: those computed
    while unpacking an archive, and those an integrity pass stores (audit)."""

    def __init__(self, path: str | os.PathLike[str], limits: ReadLimits = DEFAULT_READ_LIMITS, *,
                 tmp_dir: str | os.PathLike[str] | None = None, progress: Callable[[int], None] | None = None,
                 sizes: dict[str, int] | None = None) -> None:
        self.target = str(path)
        self.limits = limits
        self._json: dict[str, Any] = {}
        self._jsonl: dict[str, tuple[list[tuple[int, dict[str, Any]]], list[str]]] = {}
        self._records: dict[tuple[type[Any], str], Any] = {}
        self._lock = threading.Lock()
        self._unpacked: Unpacked | None = None
        self._tmp: Path | None = None
        self._memory: dict[str, bytes] = {}  # an archive's small files, not written to disk until a path is asked
        self.kind = "folder"
        self.archive_sha256: str | None = None
        self.digests: dict[str, str] = {}
        self.sealed: dict[str, str] | None = None  # manifest resources, when read
        self.subject: str | None = None
        p = Path(path)
        if p.is_dir():
            self.root = p
        elif p.is_file():
            if detect_archive(p) is None:
                raise Refused(f"{path}: not a run folder or a release archive (.tar, .tar.gz)")
            self._unpack(p, tmp_dir, progress)
        elif p.exists() or p.is_symlink():
            raise Refused(f"{path}: not a folder or a regular file; refused")
        else:
            raise Refused(f"{path}: no such file or folder")
        if self._unpacked is not None:  # every name was checked while unpacking; nothing else is in the folder
            self.sizes = dict(self._unpacked.sizes)
            return
        try:
            self.sizes = sizes if sizes is not None else scan_folder(self.root, limits.max_files)
        except BaseException:
            self.close()
            raise

    @classmethod
    def of_files(cls, root: str | os.PathLike[str], rels: list[str], limits: ReadLimits = DEFAULT_READ_LIMITS
                 ) -> Bundle:
        """A reader of a few named files of a folder that is still being written (no scan of the whole
        folder): each of `rels` that is a regular file now (never a link) is a file of this reader."""
        sizes: dict[str, int] = {}
        for rel in rels:
            try:
                st = os.lstat(Path(root) / safe_relpath(rel))
            except (OSError, BundleError):
                continue
            if stat.S_ISREG(st.st_mode):
                sizes[rel] = st.st_size
        return cls(root, limits, sizes=sizes)

    def _unpack(self, p: Path, tmp_dir: str | os.PathLike[str] | None, progress: Callable[[int], None] | None) -> None:
        import shutil
        import tempfile

        self._tmp = Path(tempfile.mkdtemp(prefix="prov-unpack-", dir=tmp_dir))
        try:
            self._unpacked = extract(p, self._tmp, self.limits.archive, progress, in_memory=True)
        except ArchiveError as exc:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            raise Refused(str(exc)) from None
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            raise
        self.kind = "archive"
        self.root = self._unpacked.root
        self.archive_sha256 = self._unpacked.archive_sha256
        self.digests = dict(self._unpacked.digests)
        self._memory = self._unpacked.memory

    def close(self) -> None:
        if self._tmp is not None:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - a reader that was not closed
        try:
            self.close()
        except Exception:
            pass

    # names and sizes
    @property
    def files(self) -> frozenset[str]:
        return frozenset(self.sizes)

    def has(self, rel: str) -> bool:
        return rel in self.sizes

    def size(self, rel: str) -> int:
        return self.sizes[rel]

    def digest(self, rel: str) -> str | None:
        """The hex sha256 of the file as it is, when known (unpacking, an integrity pass)."""
        return self.digests.get(rel)

    def under(self, folder: str) -> list[str]:
        prefix = folder.rstrip("/") + "/"
        return sorted((f for f in self.sizes if f.startswith(prefix)), key=formats.resource_sort_key)

    def name(self, rel: str, where: str | None = None) -> str:
        """`rel` (a name some bundle file gives) checked: a file of the bundle, not escaping it."""
        if not isinstance(rel, str):
            raise BundleFileError(where or "?", f"a path must be a string, got {rel!r}")
        try:
            clean = safe_relpath(rel)
        except BundleError:
            raise BundleFileError(where or rel, f"path {rel!r} escapes the bundle or is malformed; refused") from None
        if clean not in self.sizes:
            raise BundleFileError(where or clean, f"{clean} is not a file of the bundle")
        return clean

    def path(self, rel: str, where: str | None = None) -> Path:
        """The on-disk path of a bundle file named by `rel` (e.g. in an index); refuses escapes. A file
        of an archive that was kept in memory is written out first (into the temporary folder)."""
        clean = self.name(rel, where)
        data = self._memory.pop(clean, None)
        if data is not None:
            dest = self.root / clean
            dest.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(dest, flags, 0o644), "wb") as f:
                f.write(data)
        return self.root / clean

    def open(self, rel: str, where: str | None = None) -> IO[bytes]:
        """A bundle file opened for reading (regular files of the scan only, never a link)."""
        clean = self.name(rel, where)
        if clean in self._memory:
            return io.BytesIO(self._memory[clean])
        path = self.root / clean
        try:
            return _open_regular(path)
        except OSError as exc:
            raise BundleFileError(rel, f"cannot be read ({exc})") from None

    def read_bytes(self, rel: str, limit: int) -> bytes:
        if rel not in self.sizes:
            raise BundleFileError(rel, "missing")
        if self.sizes[rel] > limit:
            raise BundleFileError(rel, f"{self.sizes[rel]} bytes is larger than the {limit}-byte limit; refused")
        with self.open(rel) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise BundleFileError(rel, f"larger than the {limit}-byte limit; refused")
        return data

    # parsed contents
    def json(self, rel: str) -> Any:
        """Parsed JSON of a bundle file (cached); BundleFileError names the file when it cannot be read."""
        with self._lock:
            if rel in self._json:
                val = self._json[rel]
                if isinstance(val, BundleFileError):
                    raise val
                return val
        try:
            val = load_json(self.read_bytes(rel, self.limits.max_json_bytes), rel, self.limits.json)
        except BundleFileError as exc:
            with self._lock:
                self._json[rel] = exc
            raise
        with self._lock:
            self._json[rel] = val
        return val

    def jsonl(self, rel: str) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
        """([(line number, record)], problems) of a JSON-lines file; each problem names a line."""
        with self._lock:
            if rel in self._jsonl:
                return self._jsonl[rel]
        out = parse_jsonl(self.read_bytes(rel, self.limits.max_jsonl_bytes), rel, self.limits.json)
        with self._lock:
            self._jsonl[rel] = out
        return out

    def try_json(self, rel: str) -> Any:
        try:
            return self.json(rel)
        except BundleFileError:
            return None

    def try_jsonl(self, rel: str) -> list[dict[str, Any]] | None:
        try:
            return [r for _, r in self.jsonl(rel)[0]]
        except BundleFileError:
            return None

    def safetensors_header(self, rel: str, where: str | None = None) -> SafetensorsHeader:
        """The checked header of a safetensors file of the bundle; BundleFileError says what is wrong."""
        with self.open(rel, where) as f:
            try:
                return read_safetensors_header(f, self.sizes[rel], self.limits.max_header_bytes, self.limits.json)
            except HeaderError as exc:
                raise BundleFileError(rel, f"cannot be read as safetensors ({exc})") from None

    def tar_members(self, rel: str, limits: Limits | None = None) -> list[TarMember]:
        """Every member of a tar inside the bundle, files with their sha256, through archive.TarReader (which
        refuses escaping, absolute, link, device and clashing members); BundleFileError names the first."""
        lim = limits or self.limits.archive
        out: list[TarMember] = []
        try:
            with self.open(rel) as f:
                tar = TarReader.from_file(f, rel, lim)
                for m in tar:
                    out.append(TarMember(m.name, 0, "", True) if m.is_dir else TarMember(m.name, m.size, tar.sha256()))
        except ArchiveError as exc:
            msg = str(exc)
            raise BundleFileError(rel, msg[len(rel) + 2:] if msg.startswith(f"{rel}: ") else msg) from None
        except BundleFileError:
            raise
        except Exception as exc:  # pragma: no cover - the reader raises ArchiveError; a last line of defence
            raise BundleFileError(rel, f"not a readable tar ({type(exc).__name__}: {exc})") from None
        return out

    # typed records (provenance.records), parsed strictly; unknown keys are kept in `extra`
    def record(self, cls: type[R], rel: str) -> R:
        """JSON file `rel` as record `cls` (cached). BundleFileError names the file (and the key) when it is
        missing, malformed or not that record."""
        key = (cls, rel)
        with self._lock:
            if key in self._records:
                val = self._records[key]
                if isinstance(val, BundleFileError):
                    raise val
                return val  # type: ignore[no-any-return]
        try:
            val = records.parse(cls, self.json(rel), rel)
        except records.RecordError as exc:
            msg = str(exc)
            err = BundleFileError(rel, msg[len(rel) + 2:] if msg.startswith(f"{rel}: ") else msg)
            with self._lock:
                self._records[key] = err
            raise err from None
        with self._lock:
            self._records[key] = val
        return val

    def run_record(self) -> records.RunInfo:
        return self.record(records.RunInfo, formats.RUN_JSON)

    def config_record(self) -> records.ConfigRecord:
        return self.record(records.ConfigRecord, formats.CONFIG_JSON)

    def checkpoint_index(self) -> records.CheckpointIndex | None:
        """checkpoints/index.json (None when the bundle has none)."""
        if not self.has(formats.CHECKPOINT_INDEX):
            return None
        return self.record(records.CheckpointIndex, formats.CHECKPOINT_INDEX)

    def data_manifest(self, name: str) -> records.DataManifest:
        return self.record(records.DataManifest, formats.data_manifest_path(name))

    def order_header(self, rank: int) -> records.OrderHeader:
        return self.record(records.OrderHeader, formats.order_paths(rank)[0])

    def notes(self) -> tuple[list[tuple[int, records.Note]], list[str]]:
        """([(line, Note)], problems) of notes.jsonl (empty when there is none); a line that is not a note is
        a problem naming the line and the key."""
        if not self.has(formats.NOTES):
            return [], []
        lines, problems = self.jsonl(formats.NOTES)
        out, bad = records.parse_lines(records.Note, lines, formats.NOTES)
        return out, problems + bad

    def records(self, rel: str, *, torn_tail_ok: bool = True) -> list[dict[str, Any]]:
        """The records of a JSON-lines file, strictly: a line that is not a bounded JSON object is a
        BundleFileError naming the file and the line ([] when the file is missing). A torn last line
        (a crash mid-append) is skipped when `torn_tail_ok`."""
        if not self.has(rel):
            return []
        lines, problems = self.jsonl(rel)
        bad = [p for p in problems if not (torn_tail_ok and "terminated" in p)]
        if bad:
            raise BundleFileError(rel, bad[0])
        return [r for _, r in lines]

    def order(self, rank: int) -> list[formats.OrderStep]:
        """One rank's recorded data order (v1 or v2, by the ids file present; [] when none was recorded);
        a torn tail (a crash mid-append) is ignored. BundleFileError names a file larger than its limit."""
        # the version is the ids file's (v1 .ids.u32, v2 .ids.u64): both versions share the steps file's name
        version = next((v for v in (2, 1) if self.has(formats.order_paths(rank, v)[1])), formats.ORDER_WRITE_VERSION)
        _, ids_rel, steps_rel = formats.order_paths(rank, version)
        if not (self.has(ids_rel) or self.has(steps_rel)):
            return []
        ids = self.read_bytes(ids_rel, self.limits.max_order_bytes) if self.has(ids_rel) else b""
        steps = self.read_bytes(steps_rel, self.limits.max_order_bytes) if self.has(steps_rel) else b""
        return list(formats.decode_order(ids, steps, version))

    # common facts
    @property
    def run_info(self) -> dict[str, Any]:
        info = self.try_json(formats.RUN_JSON)
        return info if isinstance(info, dict) else {}

    def metric_steps(self) -> list[int] | None:
        """The steps of logs/metrics.jsonl in file order (None if it cannot be read)."""
        recs = self.try_jsonl(formats.METRICS)
        if recs is None:
            return None
        return [r["step"] for r in recs if isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)]


