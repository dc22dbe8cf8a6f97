"""Content hashing: the lowest layer. Knows nothing about bundles or runs.

Digests are sha256, computed with hashlib (SHA-NI where the CPU has it).
hashlib releases the GIL while it hashes large buffers, so a thread pool
hashes several files on every core at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ALGORITHM = "sha256"
_BLOCK = 4 << 20  # 4 MiB reads: large enough that hashlib drops the GIL


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
    buf = bytearray(_BLOCK)
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
