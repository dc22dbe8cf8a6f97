"""Merkle commitments (RFC 9162 golden values), the hash cache, one-pass scans and data manifests."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from provenance.capture.data import DataMismatch, DatasetSpec, build_manifest
from provenance.datasets import merkle
from provenance.datasets.hashcache import CACHE_FILE, HashCache
from provenance.datasets.scan import Stats, scan_file

# Certificate Transparency's reference leaves and roots (RFC 6962 test vectors, as in Go's trillian)
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58)),
             bytes(range(0x60, 0x70))]
CT_ROOTS = {
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}


def _mth(d: list[bytes]) -> bytes:  # the RFC's recursive definition, independent of merkle.py
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < len(d):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(d[:k]) + _mth(d[k:])).digest()


def test_merkle_roots_are_the_rfc6962_reference_values() -> None:
    assert merkle.root_of_hashes([]).hex() == hashlib.sha256(b"").hexdigest()
    for n, want in CT_ROOTS.items():
        assert merkle.root_of_hashes(merkle.leaf_hash(x) for x in CT_LEAVES[:n]).hex() == want


def test_inclusion_paths_verify_and_bind_the_index() -> None:
    for n in range(1, 34):
        data = [os.urandom(i % 7) for i in range(n)]
        hashes = [merkle.leaf_hash(x) for x in data]
        root = merkle.root_of_hashes(hashes)
        assert root == _mth(data)
        for i in range(n):
            path = merkle.inclusion_path(hashes, i)
            assert len(path) <= max(1, n - 1).bit_length()
            assert merkle.root_from_path(hashes[i], i, n, path) == root
            if n > 1:
                assert merkle.root_from_path(hashes[i], (i + 1) % n, n, path) != root
                assert merkle.root_from_path(merkle.leaf_hash(data[i] + b"x"), i, n, path) != root


def _old(path: Path, seconds: int = 60) -> None:
    """Back-date a file so that its cache entry is not racy (made within RACY_NS of its mtime)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def _spec(root: Path, files: list[str]) -> DatasetSpec:
    return DatasetSpec(name="d", root=root, files=files, source={"type": "local"}, samples_file=files[0])


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "train.jsonl").write_text("".join(json.dumps({"text": f"story {i}"}) + "\n" for i in range(300)))
    (root / "blob.bin").write_bytes(os.urandom(3 << 20))
    for f in root.iterdir():
        _old(f)
    return root


def test_scan_matches_hashlib_and_the_rfc_tree(corpus: Path) -> None:
    data = (corpus / "train.jsonl").read_bytes()
    facts = scan_file(corpus / "train.jsonl", "lines")
    assert facts["sha256"] == hashlib.sha256(data).hexdigest()
    lines = data.split(b"\n")[:-1]
    assert facts["records"] == facts["leaves"] == 300
    assert facts["merkle_root"] == "sha256:" + _mth(lines).hex()
    blob = (corpus / "blob.bin").read_bytes()
    facts = scan_file(corpus / "blob.bin", "blocks:1048576")
    assert facts["merkle_root"] == "sha256:" + _mth([blob[i:i + (1 << 20)] for i in range(0, len(blob), 1 << 20)]).hex()


def test_manifest_same_bytes_with_and_without_the_cache_and_hits_when_unchanged(corpus: Path, tmp_path: Path) -> None:
    spec = _spec(corpus, ["train.jsonl", "blob.bin"])
    cold = build_manifest(spec, cache=None)
    cache = HashCache(tmp_path / "c" / CACHE_FILE)
    s1, s2 = Stats(), Stats()
    first = build_manifest(spec, cache=cache, stats=s1)
    second = build_manifest(spec, cache=cache, stats=s2)
    assert json.dumps(cold, sort_keys=True) == json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert (s1.files_hashed, s1.files_cached) == (2, 0)
    assert (s2.files_hashed, s2.files_cached, s2.bytes_hashed) == (0, 2, 0)
    assert cold["merkle"]["root"].startswith("sha256:") and cold["merkle"]["sorted_leaves"] == 300


def test_cache_invalidation_same_size_edit_touch_and_inode_swap(corpus: Path, tmp_path: Path) -> None:
    spec = _spec(corpus, ["train.jsonl"])
    cache = HashCache(tmp_path / "c" / CACHE_FILE)
    f = corpus / "train.jsonl"
    before = build_manifest(spec, cache=cache)
    # same-size edit with a new mtime: hashed again, new digest
    data = bytearray(f.read_bytes())
    data[10] ^= 1
    f.write_bytes(bytes(data))
    _old(f, 30)
    s = Stats()
    edited = build_manifest(spec, cache=cache, stats=s)
    assert s.files_hashed == 1 and edited["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert edited["files"][0]["sha256"] != before["files"][0]["sha256"]
    # touch without change: a miss (mtime differs), same facts
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    s = Stats()
    assert build_manifest(spec, cache=cache, stats=s) == edited and s.files_hashed == 1
    # inode swap: another file with the same size and mtime moved into place is never trusted
    st = f.stat()
    other = corpus / "other.tmp"
    data[20] ^= 1
    other.write_bytes(bytes(data))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, f)
    s = Stats()
    swapped = build_manifest(spec, cache=cache, stats=s)
    assert s.files_hashed == 1 and swapped["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_racy_entries_are_hashed_again(corpus: Path, tmp_path: Path) -> None:
    f = corpus / "train.jsonl"
    f.write_text("fresh\n")  # mtime is now: an entry made now could miss a same-size edit in the same tick
    cache = HashCache(tmp_path / "c" / CACHE_FILE)
    spec = _spec(corpus, ["train.jsonl"])
    build_manifest(spec, cache=cache)
    s = Stats()
    build_manifest(spec, cache=cache, stats=s)
    assert s.files_hashed == 1


def test_corrupt_cache_is_discarded_with_a_warning(corpus: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(corpus, ["train.jsonl"])
    path = tmp_path / "c" / CACHE_FILE
    good = build_manifest(spec, cache=HashCache(path))
    path.write_bytes(b"this is not sqlite" * 100)
    s = Stats()
    assert build_manifest(spec, cache=HashCache(path), stats=s) == good
    assert s.files_hashed == 1 and "corrupt" in capsys.readouterr().err
    # a row whose value was altered (but is still valid SQLite) is not trusted either
    build_manifest(spec, cache=HashCache(path))
    db = sqlite3.connect(path)
    value = json.loads(db.execute("SELECT value FROM facts").fetchone()[0])
    value["sha256"] = "0" * 64
    db.execute("UPDATE facts SET value = ?", (json.dumps(value),))
    db.commit()
    db.close()
    s = Stats()
    assert build_manifest(spec, cache=HashCache(path), stats=s) == good
    assert s.files_hashed == 1 and "checksum" in capsys.readouterr().err


def test_bad_document_shards_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n' * 1000)[:-20])
    with pytest.raises(DataMismatch, match=r"a\.jsonl\.gz: truncated gzip"):
        build_manifest(_spec(root, ["a.jsonl.gz"]), cache=None)
    (root / "t.bin").write_bytes(b"\x01\x02\x03")
    spec = DatasetSpec(name="t", root=root, files=["t.bin"], source={}, leaf_schemes={"t.bin": "tokens:uint16:4"})
    with pytest.raises(DataMismatch, match=r"t\.bin: 3 bytes of tokens is not a multiple of the 2-byte"):
        build_manifest(spec, cache=None)


def test_gzip_records_are_the_decompressed_lines(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"doc {i}"}).encode() for i in range(50)]
    p = tmp_path / "a.jsonl.gz"
    p.write_bytes(gzip.compress(b"\n".join(lines[:20]) + b"\n") + gzip.compress(b"\n".join(lines[20:]) + b"\n"))
    facts = scan_file(p, "records:jsonl.gz")
    assert facts["records"] == 50 and facts["merkle_root"] == "sha256:" + _mth(lines).hex()
    assert facts["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()


def test_blake3_manifests_name_their_algorithm(corpus: Path) -> None:
    blake3 = pytest.importorskip("blake3")
    m = build_manifest(_spec(corpus, ["train.jsonl"]), cache=None, algorithm="blake3")
    e = m["files"][0]
    data = (corpus / "train.jsonl").read_bytes()
    assert e["sha256"] == hashlib.sha256(data).hexdigest() and e["blake3"] == blake3.blake3(data).hexdigest()
    assert e["merkle_root"].startswith("blake3:") and m["merkle"]["root"].startswith("blake3:")
    lines = data.split(b"\n")[:-1]
    assert e["merkle_root"] == "blake3:" + merkle.root_of_hashes(
        (merkle.leaf_hash(x, "blake3") for x in lines), "blake3").hex()


def test_a_whole_dataset_is_one_cache_row_taken_as_text_and_any_file_change_misses_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from provenance.capture.data import MANIFEST_ENTRY, manifest_text
    from provenance.formats import dumps

    root = tmp_path / "many"
    for i in range(40):
        (root / f"{i % 4}").mkdir(parents=True, exist_ok=True)
        (root / f"{i % 4}" / f"doc{i:03d}.jsonl").write_text(json.dumps({"text": f"doc {i}"}) + "\n")
    for f in root.rglob("*.jsonl"):
        _old(f)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jsonl"))
    spec = DatasetSpec(name="many", root=root, files=files, source={"type": "local"}, layout={"type": "documents"})
    path = tmp_path / "c" / CACHE_FILE
    cache = HashCache(path)

    def rows() -> int:
        db = sqlite3.connect(path)
        n = db.execute("SELECT count(*) FROM facts WHERE kind = ?", (MANIFEST_ENTRY,)).fetchone()[0]
        db.close()
        return int(n)

    cold = dumps(build_manifest(spec, cache=None))
    assert manifest_text(spec, cache=cache) == cold
    s = Stats()
    assert manifest_text(spec, cache=cache, stats=s) == cold  # the cached text, unparsed
    assert (s.files_hashed, s.files_cached, s.bytes_cached) == (0, 40, sum((root / f).stat().st_size for f in files))
    assert build_manifest(spec, cache=cache) == json.loads(cold) and rows() == 1
    # a same-size edit of one file of forty (new mtime): the dataset row misses, only that file is read again
    f = root / "3" / "doc007.jsonl"
    f.write_text(f.read_text().replace("doc 7", "doc X"))
    _old(f, 30)
    s = Stats()
    edited = manifest_text(spec, cache=cache, stats=s)
    assert edited == dumps(build_manifest(spec, cache=None)) != cold and (s.files_hashed, s.files_cached) == (1, 39)
    assert rows() == 1  # the new state replaced the old one
    # an inode swap with the same size and mtime misses too
    st = f.stat()
    other = root / "swap.tmp"
    other.write_text(f.read_text().replace("doc X", "doc Y"))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, f)
    s = Stats()
    assert manifest_text(spec, cache=cache, stats=s) == dumps(build_manifest(spec, cache=None))
    assert s.files_hashed == 1
    # the dataset's row altered in place: ignored with a warning, the manifest comes from the files
    cache.close()
    good = manifest_text(spec, cache=HashCache(path))
    db = sqlite3.connect(path)
    db.execute("UPDATE facts SET value = replace(value, ?, ?) WHERE kind = ?",
               ('"leaves": 1', '"leaves": 2', MANIFEST_ENTRY))
    db.commit()
    db.close()
    capsys.readouterr()
    assert manifest_text(spec, cache=HashCache(path)) == good
    assert "checksum" in capsys.readouterr().err
    # a racy dataset (a file written just now) is never taken whole from the cache
    f.write_text(f.read_text())
    c2 = HashCache(tmp_path / "c2" / CACHE_FILE)
    manifest_text(spec, cache=c2)
    s = Stats()
    manifest_text(spec, cache=c2, stats=s)
    assert s.files_hashed == 1
