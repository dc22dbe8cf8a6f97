"""Hashing and sealing: correctness against hashlib and model-signing (timings live in bench/)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from provenance import formats
from provenance.bundle import BundleWriter, seal_folder, sealable_files
from provenance.hashing import (
    _BLOCK,
    hash_files,
    hash_shards,
    root_digest,
    sha256_file,
    sha256_range,
    sha256_shards,
    shard_ranges,
)

# sizes around the 4 MiB read block: empty, tiny, one block, one block +/- 1, several blocks
SIZES = [0, 1, 1000, _BLOCK - 1, _BLOCK, _BLOCK + 1, 2 * _BLOCK + 12345]


def _write(path: Path, size: int, seed: int) -> bytes:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    # not periodic only in 32-byte steps: a shifted read would change the digest
    data = bytes((b + i) % 256 for i, b in enumerate(data[:4096])) + data[4096:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.fixture
def files(tmp_path: Path) -> dict[Path, bytes]:
    return {tmp_path / "d" / f"f{size}.bin": _write(tmp_path / "d" / f"f{size}.bin", size, i)
            for i, size in enumerate(SIZES)}


def test_hash_files_equals_hashlib_for_every_size(files: dict[Path, bytes]) -> None:
    got = hash_files(files)
    assert set(got) == set(files)
    for p, data in files.items():
        assert got[p] == hashlib.sha256(data).hexdigest(), p.name
        assert sha256_file(p) == hashlib.sha256(data).hexdigest(), p.name


def test_hash_files_same_with_one_or_many_workers(files: dict[Path, bytes]) -> None:
    one = hash_files(files, workers=1)
    assert hash_files(files, workers=4) == one
    assert hash_files(files, workers=len(files) + 3) == one
    assert hash_files(list(files)[:1], workers=4) == {p: one[p] for p in list(files)[:1]}
    assert hash_files([]) == {}


def test_progress_counts_every_byte_once(files: dict[Path, bytes]) -> None:
    seen = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            seen.append(n)

    hash_files(files, workers=3, progress=progress)
    assert sum(seen) == sum(len(d) for d in files.values())


def test_hash_files_names_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(OSError) as exc:
        hash_files([tmp_path / "missing.bin"])
    assert "missing.bin" in str(exc.value)


# --- model-signing: the seal must be what their library computes --------------------------

def _tricky_folder(root: Path) -> dict[str, bytes]:
    """Names whose plain string order differs from model-signing's PurePosixPath order."""
    names = ["a/b/x.bin", "a-b/y.bin", "a.txt", "a/c", "ab", "A", "z/0/1/2.bin", "empty", "big.bin"]
    out = {}
    for i, n in enumerate(names):
        size = 0 if n == "empty" else (3 * _BLOCK + 7 if n == "big.bin" else 100 + i)
        out[n] = _write(root / n, size, i)
    return out


def test_resource_order_and_root_digest_match_model_signing(tmp_path: Path) -> None:
    model_signing_hashing = pytest.importorskip("model_signing.hashing")
    from model_signing._signing.signing import Payload

    root = tmp_path / "model"
    content = _tricky_folder(root)
    assert sorted(content) != sorted(content, key=formats.resource_sort_key)  # the order matters here

    theirs = model_signing_hashing.Config().hash(root)
    their_names = [d.identifier for d in theirs.resource_descriptors()]
    their_root = Payload(theirs).statement.pb.subject[0].digest["sha256"]

    hashed = hash_files([root / n for n in content])
    digests = {n: hashed[root / n] for n in content}
    st = formats.oms_statement(root.name, digests)
    assert [r["name"] for r in st["predicate"]["resources"]] == their_names
    assert st["subject"][0]["digest"]["sha256"] == their_root
    assert root_digest(digests[n] for n in their_names) == their_root
    # and the seal of the folder itself (manifest.json is excluded from both)
    assert seal_folder(root) == their_root
    assert model_signing_hashing.Config().set_ignored_paths(paths=[formats.MANIFEST]).hash(root) == theirs


def test_shards_match_model_signing_shard_serialization(tmp_path: Path) -> None:
    model_signing_hashing = pytest.importorskip("model_signing.hashing")
    root = tmp_path / "model"
    content = _tricky_folder(root)
    shard = _BLOCK + 3  # not a multiple of the read block
    theirs = model_signing_hashing.Config().use_shard_serialization(shard_size=shard).hash(root)
    their = {d.identifier: d.digest.digest_hex for d in theirs.resource_descriptors()}
    ours = hash_shards([root / n for n in content], shard_size=shard, workers=4)
    mine = {f"{n}:{s}:{e}": d for n in content for s, e, d in ours[root / n]}
    assert mine == their


def test_shards_equal_hashlib_of_each_slice(files: dict[Path, bytes]) -> None:
    for shard in (1, 4096, _BLOCK, _BLOCK + 1, 10 * _BLOCK):
        for p, data in files.items():
            if len(data) // shard > 200:
                continue  # 1-byte shards of a large file: nothing more to learn
            expect = [hashlib.sha256(data[s:s + shard]).hexdigest() for s in range(0, len(data), shard)]
            assert sha256_shards(p, shard, workers=3) == expect, (p.name, shard)
            assert sha256_shards(p, shard, workers=1) == expect, (p.name, shard)
    assert shard_ranges(0, 10) == []
    assert shard_ranges(25, 10) == [(0, 10), (10, 20), (20, 25)]
    with pytest.raises(ValueError):
        shard_ranges(10, 0)


def test_sha256_range_refuses_a_short_file(tmp_path: Path) -> None:
    p = tmp_path / "short"
    p.write_bytes(b"x" * 10)
    assert sha256_range(p, 2, 10) == hashlib.sha256(b"x" * 8).hexdigest()
    with pytest.raises(OSError) as exc:
        sha256_range(p, 0, 11)
    assert "short" in str(exc.value)


# --- sealing reads only what it does not already know ---------------------------------------

def _bundle(root: Path) -> BundleWriter:
    w = BundleWriter.create(root)
    w.write_json("run.json", {"status": "completed"})
    w.write_bytes("checkpoints/step-00000001.safetensors", os.urandom(3 * _BLOCK + 5))
    lg = w.log("logs/metrics.jsonl")
    for i in range(100):
        lg.write_line({"step": i, "loss": 1.0 / (i + 1)})
    w.raw_log("order/rank0.ids.u32").write(os.urandom(4096))
    return w


def _counting() -> tuple[list[int], Callable[[int], None]]:
    seen: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            seen.append(n)

    return seen, progress


def test_seal_with_every_digest_known_reads_zero_bytes(tmp_path: Path) -> None:
    w = _bundle(tmp_path / "run")
    w.close_logs()
    seen, progress = _counting()
    root = w.seal(progress=progress)
    assert sum(seen) == 0
    # the same digest as a seal that reads everything
    seen_all, progress_all = _counting()
    assert seal_folder(w.root, None, progress_all) == root
    assert sum(seen_all) == sum((w.root / f).stat().st_size for f in sealable_files(w.root))


def test_seal_reads_only_files_it_does_not_know_or_that_changed(tmp_path: Path) -> None:
    w = _bundle(tmp_path / "run")
    w.close_logs()
    known = w.known_digests()
    (w.root / "model").mkdir()
    (w.root / "model" / "weights.bin").write_bytes(b"w" * 5000)  # written by someone else: unknown
    changed = w.root / "run.json"
    changed.write_text('{"status": "tampered"}\n')  # size (and mtime) differ from the known digest
    seen, progress = _counting()
    root = seal_folder(w.root, known, progress)
    assert sum(seen) == 5000 + changed.stat().st_size
    assert root == seal_folder(w.root)  # known digests gave the right answer for the rest


def test_seal_of_a_live_writer_uses_running_log_digests(tmp_path: Path) -> None:
    """Appends after the last seal are picked up from the running digest, never by re-reading."""
    w = _bundle(tmp_path / "run")
    seen, progress = _counting()
    first = w.seal(progress=progress)
    w.log("logs/metrics.jsonl").write_line({"step": 100, "loss": 0.5})
    second = w.seal(progress=progress)
    assert sum(seen) == 0
    assert first != second
    w.close_logs()
    assert seal_folder(w.root) == second
