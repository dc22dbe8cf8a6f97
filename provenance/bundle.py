"""Bundle writer and reader: files in a run folder, their digests, and the seal.

The writer makes every write either atomic (temp file + rename) or an append
with a single write() call, redacts secrets from everything textual, and keeps
the digest of each file it wrote so that sealing never re-reads them.

The files that several parts of the package update (the run's core, `prov seal`, `prov note`, a
captured command, a reproduction, a release) have their one writer here, whoever calls it:
write_run_info (run.json), write_checkpoint_index (checkpoints/index.json), append_note
(notes.jsonl), append_reseal (reseals.jsonl) and write_lineage (lineage.json). So do the files that
a native run and a `prov run` capture both write (write_order_header, append_order_step for
order/rank<R>.*, append_metrics for logs/metrics.jsonl) and those that a replayed run and a wrapped
reproduction both write (write_reproduction_summary, append_reproduction_steps,
write_reproduction_steps, write_reproduction_report for reproduction/*).
tests/test_layers.py fails if any other module writes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from provenance import formats
from provenance.hashing import hash_files, sha256_bytes
from provenance.redact import Redactor


class BundleError(RuntimeError):
    """A bundle is unusable as asked (exists, unsafe path, ...); the message names the path."""


_ODD_PARTS = frozenset({"", ".", ".."})


def safe_relpath(rel: str) -> str:
    """Validate a bundle-relative posix path: no absolute paths, no '..', no empty parts."""
    if rel and rel[0] != "/" and "\\" not in rel and _ODD_PARTS.isdisjoint(rel.split("/")):
        return rel  # already clean (the common case, without pathlib): what PurePosixPath would return
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or any(part in ("..", "", ".") for part in p.parts) or "\\" in rel:
        raise BundleError(f"path {rel!r} escapes the bundle or is malformed")
    return p.as_posix()


def list_files(root: Path) -> list[str]:
    """Every regular file under root as a sorted relative posix path.

    Symlinks are refused (a bundle never contains them) with an error naming them.
    """
    out: list[str] = []
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise BundleError(f"{(Path(dirpath) / d).relative_to(root).as_posix()}: symlinks are not allowed")
        for f in filenames:
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                raise BundleError(f"{rel}: symlinks are not allowed in a bundle")
            if formats.is_temp_name(f) and not p.exists():
                continue  # another writer's temp file, renamed away while we listed
            if not p.is_file():
                raise BundleError(f"{rel}: not a regular file")
            out.append(rel)
    return sorted(out, key=formats.resource_sort_key)


def sealable_files(root: Path) -> list[str]:
    """Files a seal covers: all but the manifest, the lock and leftovers of atomic writes."""
    return [f for f in list_files(root)
            if f not in formats.UNSEALED and not any(formats.is_temp_name(p) for p in PurePosixPath(f).parts)]


class AppendLog:
    """An append-only file with a running digest (no re-read at seal time)."""

    def __init__(self, path: Path, redactor: Redactor | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._redactor = redactor
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        existing = path.read_bytes() if path.stat().st_size else b""
        self._hash = hashlib.sha256(existing)
        self._size = len(existing)

    def write(self, data: bytes) -> None:
        if self._redactor is not None:
            data = self._redactor.bytes(data)
        with self._lock:
            if self._fd < 0:
                return
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                self._hash.update(view[:n])
                self._size += n
                view = view[n:]

    def write_line(self, obj: Any) -> None:
        line = formats.dumps_line(obj)
        if self._redactor is not None:
            line = self._redactor.text(line)
        self.write(line.encode())

    def digest(self) -> tuple[int, str]:
        with self._lock:
            return self._size, self._hash.copy().hexdigest()

    def flush(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class BundleWriter:
    """Writes files into one run folder and remembers their digests."""

    def __init__(self, root: Path, redactor: Redactor | None = None) -> None:
        self.root = Path(root)
        self.redactor = redactor or Redactor()
        self._digests: dict[str, tuple[int, int, str]] = {}  # rel -> (size, mtime_ns, hex)
        self._logs: dict[str, AppendLog] = {}
        self._lock = threading.Lock()

    @classmethod
    def create(cls, root: Path, redactor: Redactor | None = None) -> BundleWriter:
        """Make a new run folder; an existing one is never reused or overwritten."""
        root = Path(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            root.mkdir()
        except FileExistsError:
            raise BundleError(f"{root}: a run folder with this id already exists; refusing to overwrite it") from None
        return cls(root, redactor)

    def path(self, rel: str) -> Path:
        return self.root / safe_relpath(rel)

    def _remember(self, rel: str, hexd: str) -> None:
        st = self.path(rel).stat()
        with self._lock:
            self._digests[rel] = (st.st_size, st.st_mtime_ns, hexd)

    def write_bytes(self, rel: str, data: bytes, redact: bool = False) -> str:
        if redact:
            data = self.redactor.bytes(data)
        formats.atomic_write_bytes(self.path(rel), data)
        hexd = sha256_bytes(data)
        self._remember(rel, hexd)
        return hexd

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, formats.dumps(self.redactor.obj(obj)).encode())

    def copy_file(self, src: Path, rel: str, hexd: str | None = None) -> str:
        """Copy src into the bundle atomically; trust hexd when the caller hashed src already."""
        dest = self.path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        if hexd is None:
            hexd = hash_files([dest])[dest]
        self._remember(rel, hexd)
        return hexd

    def record_digest(self, rel: str, hexd: str) -> None:
        """A file written by someone else (e.g. a checkpoint) was hashed: remember it."""
        self._remember(rel, hexd)

    def log(self, rel: str) -> AppendLog:
        with self._lock:
            if rel not in self._logs:
                self._logs[rel] = AppendLog(self.path(rel), self.redactor)
            return self._logs[rel]

    def raw_log(self, rel: str) -> AppendLog:
        """An append log whose bytes are not redacted (binary data such as the data order)."""
        with self._lock:
            if rel not in self._logs:
                self._logs[rel] = AppendLog(self.path(rel), None)
            return self._logs[rel]

    def known_digests(self) -> dict[str, tuple[int, int, str]]:
        with self._lock:
            out = dict(self._digests)
        for rel, lg in list(self._logs.items()):
            size, hexd = lg.digest()
            st = lg.path.stat()
            out[rel] = (size, st.st_mtime_ns, hexd)
        return out

    def close_logs(self) -> None:
        for lg in list(self._logs.values()):
            lg.flush()
        # keep the logs' digests, then close them
        with self._lock:
            logs, self._logs = self._logs, {}
        for rel, lg in logs.items():
            size, hexd = lg.digest()
            lg.close()
            st = lg.path.stat()
            if st.st_size == size:
                with self._lock:
                    self._digests[rel] = (size, st.st_mtime_ns, hexd)

    def seal(self, progress: Callable[[int], None] | None = None) -> str:
        return seal_folder(self.root, self.known_digests(), progress)


# --- the one writer of each shared record file ------------------------------------------------------
# `dest` is the run's BundleWriter (the file is redacted and its digest remembered for the seal) or a
# run folder (a killed run that `prov seal` finishes, a sealed bundle that `prov note` adds to, a
# captured command's processes): atomic JSON, or one appended line that never follows a link.

Dest = BundleWriter | Path


def _write_json(dest: Dest, rel: str, obj: Any) -> None:
    if isinstance(dest, BundleWriter):
        dest.write_json(rel, obj)
    else:
        formats.atomic_write_json(Path(dest) / rel, obj)


def write_run_info(dest: Dest, info: dict[str, Any]) -> None:
    """run.json (records.RunInfo): written when the run starts and ends, or by `prov seal` / a reproduction."""
    _write_json(dest, formats.RUN_JSON, info)


def write_checkpoint_index(dest: Dest, entries: list[dict[str, Any]], *, captured: bool = False) -> None:
    """checkpoints/index.json (records.CheckpointIndex) of `entries`, by step; `captured`: a wrapped command's
    files, outside the bundle (formats.captured_checkpoint_index)."""
    index = formats.captured_checkpoint_index(entries) if captured else formats.checkpoint_index(entries)
    _write_json(dest, formats.CHECKPOINT_INDEX, index)


def write_lineage(dest: Dest, edges: list[dict[str, Any]], warnings: list[str] | tuple[str, ...] = ()) -> None:
    """lineage.json (formats.lineage_record): written when the run finishes, or by `prov lineage declare`."""
    _write_json(dest, formats.LINEAGE_JSON, formats.lineage_record(edges, warnings))


def _append_line(path: Path, line: str) -> None:
    """One line appended with a single O_APPEND write under an exclusive lock (concurrent writers never
    interleave); the target is never a link, a FIFO or a device (BundleError)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise BundleError(f"{path}: cannot open ({exc.strerror or exc}); refused") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{path}: not a regular file; refused")
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(line.encode())
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def append_note(dest: Dest, rec: dict[str, Any], redact: Callable[[str], str] | None = None) -> None:
    """One note (formats.note_record; records.Note) appended to notes.jsonl. Through a BundleWriter the
    line is redacted by its redactor; into a folder by `redact` when given."""
    line = formats.dumps_line(rec)
    if isinstance(dest, BundleWriter):
        _append_line(dest.path(formats.NOTES), dest.redactor.text(line))
    else:
        _append_line(Path(dest) / formats.NOTES, redact(line) if redact is not None else line)


def append_reseal(root: Path, rec: dict[str, Any]) -> None:
    """One re-seal record (formats.reseal_record) appended to reseals.jsonl of a sealed bundle."""
    _append_line(Path(root) / formats.RESEALS, formats.dumps_line(rec))


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


class LineSink(Protocol):
    def write_line(self, obj: Any) -> None: ...


# --- files a native run's recorder (run/recorder.py) and a `prov run` capture (capture/inject.py) both
# write: the caller owns the open append logs (the run's BundleWriter logs, the capture's lazy logs).

def write_order_header(dest: Dest, rank: int, world_size: int, sampler: dict[str, Any], dataset: str) -> None:
    """order/rank<R>.json (formats.order_header; records.OrderHeader)."""
    _write_json(dest, formats.order_paths(rank)[0], formats.order_header(rank, world_size, sampler, dataset))


def append_order_step(ids: Sink, steps: Sink, step: int, ids_bytes: bytes, count: int, chain: bytes) -> None:
    """One optimizer step of the data order: its encoded sample ids to order/rank<R>.ids.u64, then its
    record (step, number of ids, chain) to order/rank<R>.steps.bin."""
    ids.write(ids_bytes)
    steps.write(formats.ORDER_STEP_RECORD.pack(step, count, chain))


def append_metrics(dest: BundleWriter | LineSink, rec: dict[str, Any]) -> None:
    """One step's record appended to logs/metrics.jsonl: through the run's BundleWriter (redacted), or to
    the capture's open log of a rank's metrics (formats.capture_paths(rank).metrics)."""
    (dest.log(formats.METRICS) if isinstance(dest, BundleWriter) else dest).write_line(rec)


# --- reproduction/: a replayed run (run/replaying.py) and a wrapped reproduction (reproduce/wrapped.py)
# write the summary and the step records; `prov reproduce` (native or wrapped) adds the report.

def write_reproduction_summary(dest: Dest, summary: dict[str, Any], rel: str = formats.REPRO_SUMMARY) -> None:
    """reproduction/summary.json (records.ReproductionSummary); `rel`: a rank's own summary.rank<R>.json."""
    _write_json(dest, rel, summary)


def append_reproduction_steps(writer: BundleWriter, rec: dict[str, Any], rel: str = formats.REPRO_STEPS) -> None:
    """One compared step (or checkpoint) appended to reproduction/steps.jsonl while a replayed run trains."""
    writer.log(rel).write_line(rec)


def write_reproduction_steps(root: Path, records: list[dict[str, Any]]) -> None:
    """reproduction/steps.jsonl of a wrapped reproduction, compared after the command ended: all at once."""
    formats.atomic_write_bytes(Path(root) / formats.REPRO_STEPS,
                               "".join(formats.dumps_line(r) for r in records).encode())


def write_reproduction_report(root: Path, report: dict[str, Any]) -> None:
    """reproduction/report.json (prov reproduce's verdict) into the reproduction's sealed bundle."""
    formats.atomic_write_json(Path(root) / formats.REPRO_REPORT, report)


def clean_temp_files(root: Path) -> list[str]:
    """Remove leftovers of interrupted atomic writes; return their names."""
    removed = []
    for dirpath, dirs, files in os.walk(root):
        for d in [d for d in dirs if formats.is_temp_name(d)]:
            shutil.rmtree(Path(dirpath) / d)
            dirs.remove(d)
            removed.append((Path(dirpath) / d).relative_to(root).as_posix())
        for f in files:
            if formats.is_temp_name(f):
                p = Path(dirpath) / f
                p.unlink()
                removed.append(p.relative_to(root).as_posix())
    return removed


@contextlib.contextmanager
def folder_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on the run folder itself (flock on its directory fd): serialises resealing."""
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_note(root: str | os.PathLike[str], text: str, category: str = "other", *, step: int | None = None,
             details: dict[str, Any] | None = None, author: str | None = None,
             links: list[str] | None = None) -> tuple[dict[str, Any], str | None]:
    """Append a decision note to a run folder, live or sealed (e.g. a reproduction's verdict across a
    difference). A sealed bundle is resealed: returns (the note, the new root digest or None if live).

    Under the folder lock: a run that is sealing right now either sees this note, or has finished
    sealing and is resealed here. ValueError names a bad category or empty text.
    """
    root = Path(root)
    if not (root / formats.RUN_JSON).is_file():
        raise BundleError(f"{root}: not a run folder ({formats.RUN_JSON} is missing)")
    rec = formats.note_record(text, category, author, links or [], step, details=details)
    with folder_lock(root):
        info = formats.read_json(root / formats.RUN_JSON)
        sealed = info.get("status") != "running" and (root / formats.MANIFEST).exists()
        before = _unchanged_seal(root) if sealed else None  # never seal over a tampered bundle
        append_note(root, rec, Redactor().text)
        if before is not None:
            old = before[1].get(formats.NOTES)
            new = hash_files([root / formats.NOTES])[root / formats.NOTES]
            change = {"path": formats.NOTES, "change": "modified" if old else "added",
                      "sha256_before": formats.digest_str(old) if old else None,
                      "sha256_after": formats.digest_str(new)}
            append_reseal(root, formats.reseal_record(before[0], [change], f"a {category} note was added",
                                                      "provenance.bundle.add_note"))
            return rec, seal_folder_locked(root)
    return rec, None


def _unchanged_seal(root: Path) -> tuple[str, dict[str, str]]:
    """(root hex, {name: hex}) of the seal, after checking that no file changed since; BundleError names them."""
    root_hex, resources = formats.parse_oms_statement(formats.read_json(root / formats.MANIFEST))
    names = sealable_files(root)
    hashed = hash_files([root / n for n in names]) if names else {}
    changed = sorted({n for n in names if resources.get(n) != hashed[root / n]} | (set(resources) - set(names)))
    if changed:
        raise BundleError(f"{root}: the bundle changed since it was sealed ({', '.join(changed[:5])}"
                          f"{' …' if len(changed) > 5 else ''}); refusing to seal over it")
    return root_hex, resources


def seal_folder(root: Path, known: dict[str, tuple[int, int, str]] | None = None,
                progress: Callable[[int], None] | None = None) -> str:
    """Write manifest.json over every other file of the folder; return the root digest.

    Files whose (size, mtime) match a known digest are not read again.
    """
    root = Path(root)
    known = known or {}
    with folder_lock(root):
        return seal_folder_locked(root, known, progress)


def seal_folder_locked(root: Path, known: dict[str, tuple[int, int, str]] | None = None,
                       progress: Callable[[int], None] | None = None) -> str:
    """seal_folder for a caller that already holds folder_lock(root)."""
    known = known or {}
    names = sealable_files(root)
    digests: dict[str, str] = {}
    to_hash: list[str] = []
    for rel in names:
        k = known.get(rel)
        st = (root / rel).stat()
        if k is not None and k[0] == st.st_size and k[1] == st.st_mtime_ns:
            digests[rel] = k[2]
        else:
            to_hash.append(rel)
    if to_hash:
        hashed = hash_files([root / r for r in to_hash], progress=progress)
        for r in to_hash:
            digests[r] = hashed[root / r]
    statement = formats.oms_statement(root.name, digests)
    formats.atomic_write_json(root / formats.MANIFEST, statement)
    return statement["subject"][0]["digest"]["sha256"]
