"""One read pass over a data file: its whole-file sha256, its record count and the Merkle root over
its leaves, computed from the same blocks as they are read (no file is read twice or whole).

Leaf schemes (the `leaf` field of a manifest's file entry):

* ``lines``: each line of a text file, without its "\\n" (a last line without one is a leaf too);
* ``records:<jsonl|jsonl.gz|jsonl.zst>``: each record (line) of a document shard, decompressed;
* ``tokens:<uint16|uint32>:<N>``: consecutive chunks of N tokens of a flat token file (.bin, or
  the data part of a .npy), the last chunk shorter;
* ``blocks:<N>``: consecutive N-byte blocks of any other file.

Facts of a file come from the hash cache when its identity (device, inode, size, mtime) is known
there for the same scheme; the cached facts are exactly what a fresh scan writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance.datasets import merkle
from provenance.datasets.hashcache import HashCache, StatKey, now_ns
from provenance.hashing import default_workers

BLOCK = 4 << 20
DEFAULT_BLOCK_LEAF = 1 << 20  # blocks:1048576 for files that are not records or tokens
DEFAULT_TOKEN_CHUNK = 4096  # tokens per leaf of a token stream: 8 KiB uint16 leaves keep proofs small
LINE_SUFFIXES = (".jsonl", ".txt", ".csv", ".tsv")
PARQUET_COLUMN = "text"  # the column whose values are a parquet shard's records
TOKEN_DTYPES = {"uint16": 2, "uint32": 4}
_local = threading.local()


class ScanError(ValueError):
    """A data file cannot be read as its layout says; the message names the file."""


@dataclass
class Stats:
    """What a scan hashed and what it took from the cache."""

    files_hashed: int = 0
    bytes_hashed: int = 0
    files_cached: int = 0
    bytes_cached: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_many(self, files: int, size: int, cached: bool) -> None:
        with self._lock:
            if cached:
                self.files_cached += files
                self.bytes_cached += size
            else:
                self.files_hashed += files
                self.bytes_hashed += size

    def add(self, size: int, cached: bool) -> None:
        with self._lock:
            if cached:
                self.files_cached += 1
                self.bytes_cached += size
            else:
                self.files_hashed += 1
                self.bytes_hashed += size

    def line(self) -> str:
        return (f"hashed {self.bytes_hashed} bytes in {self.files_hashed} files, took {self.bytes_cached} bytes "
                f"in {self.files_cached} files from the hash cache")


def default_scheme(rel: str) -> str:
    if rel.endswith(LINE_SUFFIXES):
        return "lines"
    for suffix in (".jsonl.gz", ".jsonl.zst"):
        if rel.endswith(suffix):
            return f"records:{suffix[1:]}"
    if rel.endswith(".parquet"):
        return f"records:parquet:{PARQUET_COLUMN}"
    return f"blocks:{DEFAULT_BLOCK_LEAF}"


def is_text_scheme(scheme: str) -> bool:
    return scheme == "lines" or scheme.startswith("records:")


# --- leaf splitters: fed the raw blocks, in order ------------------------------------------
class _Leaves:
    """Leaf hashes in order; kept when `keep` (text records: the sorted index needs them)."""

    def __init__(self, algorithm: str, keep: bool) -> None:
        self.tree = merkle.Streaming(algorithm)
        self._prefix = merkle.hasher(algorithm)()
        self._prefix.update(b"\x00")  # type: ignore[attr-defined]
        self.kept: list[bytes] | None = [] if keep else None

    def leaf(self, data: bytes | memoryview) -> None:
        h = self._prefix.copy()  # type: ignore[attr-defined]
        h.update(data)
        d = h.digest()
        self.tree.add_hash(d)
        if self.kept is not None:
            self.kept.append(d)

    def feed(self, block: memoryview) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def records(self) -> int | None:
        return None


class _Lines(_Leaves):
    def __init__(self, algorithm: str, keep: bool) -> None:
        super().__init__(algorithm, keep)
        self._carry = b""
        self._newlines = 0

    def feed(self, block: memoryview) -> None:
        data = self._carry + bytes(block)
        parts = data.split(b"\n")
        self._carry = parts.pop()
        self._newlines += len(parts)
        for p in parts:
            self.leaf(p)

    def finish(self) -> None:
        if self._carry:
            self.leaf(self._carry)
            self._carry = b""

    def records(self) -> int | None:
        return self._newlines


class _Blocks(_Leaves):
    def __init__(self, algorithm: str, size: int, skip: int = 0, width: int = 1, name: str = "") -> None:
        super().__init__(algorithm, False)
        self.size = size
        self._buf = bytearray()
        self._skip = skip  # bytes before the first leaf (a .npy header)
        self._width = width
        self._seen = 0
        self._name = name

    def feed(self, block: memoryview) -> None:
        if self._skip:
            n = min(self._skip, len(block))
            block, self._skip = block[n:], self._skip - n
        self._seen += len(block)
        if self._buf:
            need = self.size - len(self._buf)
            self._buf += block[:need]
            block = block[need:]
            if len(self._buf) == self.size:
                self.leaf(bytes(self._buf))
                self._buf.clear()
        full = len(block) - len(block) % self.size
        for off in range(0, full, self.size):
            self.leaf(block[off:off + self.size])
        if full < len(block):
            self._buf += block[full:]

    def finish(self) -> None:
        if self._seen % self._width:
            raise ScanError(f"{self._name}: {self._seen} bytes of tokens is not a multiple of the "
                            f"{self._width}-byte token width")
        if self._buf:
            self.leaf(bytes(self._buf))
            self._buf.clear()

    def records(self) -> int | None:
        return self._seen // self._width if self._width > 1 else None


class _Records(_Lines):
    """Lines of a compressed document shard, decompressed as the compressed blocks go by."""

    def __init__(self, algorithm: str, keep: bool, codec: str, name: str) -> None:
        super().__init__(algorithm, keep)
        self._name = name
        self._codec = codec
        if codec == "gz":
            self._z: Any = zlib.decompressobj(wbits=47)
        elif codec == "zst":
            try:
                import zstandard
            except ImportError:
                raise ScanError(f"{name}: reading .zst shards needs the 'zstandard' package") from None
            self._z = zstandard.ZstdDecompressor().decompressobj()
        else:
            self._z = None

    def feed(self, block: memoryview) -> None:
        if self._z is None:
            super().feed(block)
            return
        data = bytes(block)
        while data:
            self._open_member = True
            try:
                out = self._z.decompress(data)
            except Exception as exc:  # zlib.error, zstandard.ZstdError
                raise ScanError(f"{self._name}: not a valid {self._codec} stream ({exc})") from None
            if out:
                super().feed(memoryview(out))
            data = b""
            if self._z.eof:
                self._open_member = False
                if self._codec == "gz":  # concatenated gzip members
                    data = self._z.unused_data
                    self._z = zlib.decompressobj(wbits=47)
                else:
                    import zstandard

                    data = self._z.unused_data
                    self._z = zstandard.ZstdDecompressor().decompressobj()

    def finish(self) -> None:
        if self._z is not None and getattr(self, "_open_member", False):
            raise ScanError(f"{self._name}: truncated {'gzip' if self._codec == 'gz' else 'zstd'} stream "
                            f"(the last {'member' if self._codec == 'gz' else 'frame'} does not end)")
        super().finish()


class _Parquet(_Leaves):
    """Records of a parquet shard: the values of one text column, row by row. Parquet is decoded from its
    footer, not from a stream, so these leaves come from a second read (pyarrow), after the sha256 pass."""

    def __init__(self, algorithm: str, path: Path, column: str) -> None:
        super().__init__(algorithm, True)
        self._path, self._column = path, column
        self._rows = 0

    def feed(self, block: memoryview) -> None:
        pass

    def values(self) -> Iterator[bytes]:
        try:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(self._path)
        except Exception as exc:
            raise ScanError(f"{self._path.name}: not a readable parquet file ({exc})") from None
        if self._column not in pf.schema_arrow.names:
            raise ScanError(f"{self._path.name}: parquet file has no column {self._column!r} "
                            f"(columns: {', '.join(pf.schema_arrow.names)})")
        for batch in pf.iter_batches(columns=[self._column], batch_size=8192):
            for v in batch.column(0).to_pylist():
                if isinstance(v, bytes):
                    yield v
                elif isinstance(v, str):
                    yield v.encode("utf-8")
                else:  # a null or non-text value: its canonical JSON
                    yield json.dumps(v, ensure_ascii=False, sort_keys=True).encode("utf-8")

    def finish(self) -> None:
        for v in self.values():
            self.leaf(v)
            self._rows += 1

    def records(self) -> int | None:
        return self._rows


def _npy_data_offset(path: Path) -> tuple[int, str]:
    import numpy as np

    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read(f)  # the header only: never a pickle
        except Exception as exc:
            raise ScanError(f"{path.name}: not a .npy file ({exc})") from None
        names = {np.dtype("<u2"): "uint16", np.dtype("<u4"): "uint32"}
        if dtype not in names or len(shape) != 1:
            raise ScanError(f"{path.name}: a token .npy must be a 1-D little-endian uint16 or uint32 array, "
                            f"found {dtype} {shape}")
        return f.tell(), names[dtype]


def _splitter(path: Path, scheme: str, algorithm: str, keep: bool = False) -> _Leaves:
    kind, _, rest = scheme.partition(":")
    name = path.name
    if kind == "lines":
        return _Lines(algorithm, True)
    if kind == "records":
        if rest.startswith("parquet:"):
            return _Parquet(algorithm, path, rest.split(":", 1)[1])
        codec = {"jsonl": "", "jsonl.gz": "gz", "jsonl.zst": "zst"}.get(rest)
        if codec is None:
            raise ScanError(f"{name}: unknown document format {rest!r} (jsonl, jsonl.gz, jsonl.zst, parquet:COLUMN)")
        return _Records(algorithm, True, codec, name)
    if kind == "blocks":
        b = _Blocks(algorithm, int(rest))
        b.kept = [] if keep else None
        return b
    if kind == "tokens":
        dtype, _, chunk = rest.partition(":")
        width = TOKEN_DTYPES.get(dtype)
        if width is None:
            raise ScanError(f"{name}: unknown token dtype {dtype!r} (uint16 or uint32)")
        skip = 0
        if path.suffix == ".npy":
            skip, found = _npy_data_offset(path)
            if found != dtype:
                raise ScanError(f"{name}: holds {found} tokens, the layout says {dtype}")
        t = _Blocks(algorithm, int(chunk) * width, skip=skip, width=width, name=name)
        t.kept = [] if keep else None
        return t
    raise ScanError(f"{name}: unknown leaf scheme {scheme!r}")


def _buffer() -> bytearray:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(BLOCK)
    return buf


def scan_file(path: Path, scheme: str, algorithm: str = "sha256",
              progress: Callable[[int], None] | None = None, keep: bool = False) -> dict[str, Any]:
    """Facts of one file from one read: size, sha256, records (when countable), leaves, merkle_root,
    and the leaf hashes (raw bytes, under '_leaf_hashes') of text records, or of any file when `keep`."""
    leaves = _splitter(path, scheme, algorithm, keep)
    h = hashlib.sha256()
    alt: Any = merkle.hasher(algorithm)() if algorithm != "sha256" else None  # e.g. a whole-file blake3 too
    buf = _buffer()
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            if alt is not None:
                alt.update(view[:n])
            leaves.feed(view[:n])
            size += n
            if progress is not None:
                progress(n)
    leaves.finish()
    facts: dict[str, Any] = {"size": size, "sha256": h.hexdigest(), "leaf": scheme, "leaves": leaves.tree.count,
                             "merkle_root": f"{algorithm}:{leaves.tree.root().hex()}"}
    if alt is not None:
        facts[algorithm] = alt.hexdigest()
    rec = leaves.records()
    if rec is not None:
        facts["records"] = rec
    if leaves.kept is not None:
        facts["_leaf_hashes"] = b"".join(leaves.kept)
    return facts


class _Collect(_Records):
    """The records of a text file themselves (not their hashes), for lookups by content or index."""

    def __init__(self, codec: str, name: str) -> None:
        super().__init__("sha256", False, codec, name)
        self.out: list[bytes] = []

    def leaf(self, data: bytes | memoryview) -> None:
        self.out.append(bytes(data))


def iter_records(path: Path, scheme: str) -> Iterator[bytes]:
    """The records (leaves) of a text file in order, decompressed, without their newline."""
    kind, _, rest = scheme.partition(":")
    if kind == "records" and rest.startswith("parquet:"):
        yield from _Parquet("sha256", path, rest.split(":", 1)[1]).values()
        return
    if kind == "lines":
        codec = ""
    elif kind == "records":
        codec = {"jsonl": "", "jsonl.gz": "gz", "jsonl.zst": "zst"}.get(rest, "?")
        if codec == "?":
            raise ScanError(f"{path.name}: unknown document format {rest!r}")
    else:
        raise ScanError(f"{path.name}: leaves of {scheme} are not text records")
    c = _Collect(codec, path.name)
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            c.feed(memoryview(block))
            yield from c.out
            c.out.clear()
    c.finish()
    yield from c.out


def leaf_span(path: Path, scheme: str, index: int) -> tuple[int, int]:
    """[start, end) file offsets of leaf `index` of a blocks or tokens file."""
    kind, _, rest = scheme.partition(":")
    skip = 0
    if kind == "blocks":
        size = int(rest)
    elif kind == "tokens":
        dtype, _, chunk = rest.partition(":")
        size = int(chunk) * TOKEN_DTYPES[dtype]
        if path.suffix == ".npy":
            skip = _npy_data_offset(path)[0]
    else:
        raise ScanError(f"{path.name}: leaves of {scheme} have no fixed span")
    total = os.stat(path).st_size
    start = skip + index * size
    if index < 0 or start >= total:
        raise ScanError(f"{path.name}: has no leaf {index}")
    return start, min(start + size, total)


def read_leaf(path: Path, scheme: str, index: int) -> bytes:
    """The bytes of leaf `index` (a record, decompressed; or a block / token chunk)."""
    if is_text_scheme(scheme):
        for i, rec in enumerate(iter_records(path, scheme)):
            if i == index:
                return rec
        raise ScanError(f"{path.name}: has no record {index}")
    start, end = leaf_span(path, scheme, index)
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def _cache_kind(scheme: str, algorithm: str) -> str:
    return f"scan/v1|{algorithm}|{scheme}"


def _lookup(path: Path, scheme: str, algorithm: str, cache: HashCache | None) -> tuple[StatKey, dict[str, Any] | None]:
    try:
        before = StatKey.of(path)
    except OSError as exc:
        raise ScanError(f"{path}: cannot be read ({exc.strerror})") from None
    if cache is None:
        return before, None
    hit = cache.get(before, _cache_kind(scheme, algorithm))
    if hit is None or hit.get("size") != before.size:
        return before, None
    facts = dict(hit)
    if "_leaf_hashes" in facts:
        facts["_leaf_hashes"] = bytes.fromhex(facts["_leaf_hashes"])
    return before, facts


def _fresh_scan(path: Path, scheme: str, algorithm: str, cache: HashCache | None, before: StatKey,
                progress: Callable[[int], None] | None) -> dict[str, Any]:
    made = now_ns()
    try:
        facts = scan_file(path, scheme, algorithm, progress)
    except OSError as exc:
        raise ScanError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if cache is not None:
        try:
            after = StatKey.of(path)
        except OSError:
            return facts
        stored = dict(facts)
        if "_leaf_hashes" in stored:
            stored["_leaf_hashes"] = stored["_leaf_hashes"].hex()
        cache.put(before, after, _cache_kind(scheme, algorithm), stored, made)
    return facts


def _cached_scan(path: Path, scheme: str, algorithm: str, cache: HashCache | None, stats: Stats,
                 progress: Callable[[int], None] | None) -> dict[str, Any]:
    before, facts = _lookup(path, scheme, algorithm, cache)
    if facts is not None:
        stats.add(before.size, cached=True)
        return facts
    facts = _fresh_scan(path, scheme, algorithm, cache, before, progress)
    stats.add(facts["size"], cached=False)
    return facts


def scan_files(items: Sequence[tuple[Path, str]], algorithm: str = "sha256", cache: HashCache | None = None,
               workers: int | None = None, stats: Stats | None = None,
               progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Facts of many (path, scheme) files, in the order given. The cache is asked first for every file
    (stat and lookup, in this thread); the files it does not know are read, largest first, on every core."""
    stats = stats if stats is not None else Stats()
    workers = workers or default_workers()
    out: list[dict[str, Any] | None] = [None] * len(items)
    todo: list[tuple[int, StatKey]] = []
    try:
        keys = []
        for p, _s in items:
            try:
                keys.append(StatKey.of(p))
            except OSError as exc:
                raise ScanError(f"{p}: cannot be read ({exc.strerror})") from None
        hits = cache.get_many([(k, _cache_kind(s, algorithm)) for k, (_p, s) in zip(keys, items, strict=True)]) \
            if cache is not None else [None] * len(items)
        for i, (before, hit) in enumerate(zip(keys, hits, strict=True)):
            if hit is not None and hit.get("size") == before.size:
                facts = dict(hit)
                if "_leaf_hashes" in facts:
                    facts["_leaf_hashes"] = bytes.fromhex(facts["_leaf_hashes"])
                stats.add(before.size, cached=True)
                out[i] = facts
            else:
                todo.append((i, before))
        todo.sort(key=lambda t: -t[1].size)

        def one(job: tuple[int, StatKey]) -> None:
            i, before = job
            p, s = items[i]
            facts = _fresh_scan(p, s, algorithm, cache, before, progress)
            stats.add(facts["size"], cached=False)
            out[i] = facts

        if workers == 1 or len(todo) <= 1:
            for job in todo:
                one(job)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prov-scan") as pool:
                list(pool.map(one, todo))
    finally:
        if cache is not None:
            cache.flush()
    return [o for o in out if o is not None]


def _size(p: Path) -> int:
    try:
        return os.stat(p).st_size
    except OSError:
        return 0
