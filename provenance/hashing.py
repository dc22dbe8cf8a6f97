"""Content hashing: the lowest layer. Knows nothing about bundles or runs.

Digests are sha256, computed with hashlib (SHA-NI where the CPU has it).
hashlib releases the GIL while it hashes large buffers, so a thread pool
hashes several files on every core at once.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ALGORITHM = "sha256"
_BLOCK = 4 << 20  # 4 MiB reads: large enough that hashlib drops the GIL
_local = threading.local()


def default_workers() -> int:
    """Threads used for hashing: every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of one file, read in large blocks into a reused buffer."""
    h = hashlib.sha256()
    buf = getattr(_local, "buf", None)
    if buf is None:  # one buffer a thread: allocating 4 MiB a file dominates on many small files
        buf = _local.buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            if progress is not None:
                progress(n)
    return h.hexdigest()


def hash_files(
    paths: Iterable[str | os.PathLike[str]],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[Path, str]:
    """Hash many files in parallel, largest first so that cores stay busy.

    Returns {path: hex sha256}. A file that cannot be read raises OSError
    naming it.
    """
    items = [Path(p) for p in paths]
    sizes = {p: p.stat().st_size for p in items}
    items.sort(key=lambda p: sizes[p], reverse=True)
    workers = workers or default_workers()
    if workers == 1 or len(items) <= 1:
        return {p: sha256_file(p, progress) for p in items}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prov-hash") as pool:
        digests = list(pool.map(lambda p: sha256_file(p, progress), items))
    return dict(zip(items, digests, strict=True))


def root_digest(hex_digests_in_order: Iterable[str]) -> str:
    """sha256 over the concatenated raw digests, as model-signing computes a subject digest."""
    h = hashlib.sha256()
    for d in hex_digests_in_order:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


# --- optional: per-shard digests of large files --------------------------------------------
# A whole-file sha256 is sequential: one file is hashed on one core however many there are.
# Per-shard digests (model-signing's "shards" serialization: one digest per [start, end)
# slice of shard_size bytes) spread one large file over every core. They are an addition:
# sha256_file/hash_files and every manifest keep the whole-file digest.

DEFAULT_SHARD = 64 << 20  # 64 MiB: a 1 GiB file makes 16 shards, enough to keep every core busy


def shard_ranges(size: int, shard_size: int = DEFAULT_SHARD) -> list[tuple[int, int]]:
    """[start, end) of each shard of a size-byte file; an empty file has none (as model-signing)."""
    if shard_size <= 0:
        raise ValueError(f"shard size must be positive, not {shard_size}")
    return [(start, min(start + shard_size, size)) for start in range(0, size, shard_size)]


def sha256_range(path: str | os.PathLike[str], start: int, end: int,
                 progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of bytes [start, end) of one file; OSError if the file is shorter than end."""
    h = hashlib.sha256()
    buf = bytearray(min(_BLOCK, max(1, end - start)))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = end - start
        while left:
            n = f.readinto(view[:min(left, len(buf))])
            if not n:
                raise OSError(f"{os.fspath(path)}: file ended at byte {end - left}, before the end of shard "
                              f"{start}:{end}")
            h.update(view[:n])
            left -= n
            if progress is not None:
                progress(n)
    return h.hexdigest()


def hash_shards(
    paths: Iterable[str | os.PathLike[str]],
    shard_size: int = DEFAULT_SHARD,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[Path, list[tuple[int, int, str]]]:
    """Per-shard sha256 of many files, every shard of every file in one pool of threads.

    Returns {path: [(start, end, hex sha256), ...]} in file order. The resource name
    model-signing gives a shard is f"{relative path}:{start}:{end}".
    """
    items = list(dict.fromkeys(Path(p) for p in paths))
    jobs = [(p, s, e) for p in items for s, e in shard_ranges(p.stat().st_size, shard_size)]
    workers = workers or default_workers()
    if workers == 1 or len(jobs) <= 1:
        digests = [sha256_range(p, s, e, progress) for p, s, e in jobs]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prov-hash") as pool:
            digests = list(pool.map(lambda j: sha256_range(*j, progress), jobs))
    out: dict[Path, list[tuple[int, int, str]]] = {p: [] for p in items}
    for (p, s, e), d in zip(jobs, digests, strict=True):
        out[p].append((s, e, d))
    return out


def sha256_shards(path: str | os.PathLike[str], shard_size: int = DEFAULT_SHARD, workers: int | None = None,
                  progress: Callable[[int], None] | None = None) -> list[str]:
    """Hex sha256 of each shard_size slice of one file, hashed on every core at once."""
    return [d for _, _, d in hash_shards([path], shard_size, workers, progress)[Path(path)]]
