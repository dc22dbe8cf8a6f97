"""Data manifests: every file of a dataset with size, sha256, record count and Merkle root.

A manifest is what makes sample ids stable: `samples` names the file whose
records the ids index (0-based record number). Every file is read once: the
whole-file sha256, the record count and the Merkle root over its leaves come
from the same pass (provenance.datasets.scan), or from the machine's hash cache
when the file is unchanged (provenance.datasets.hashcache). `merkle` commits to
the whole dataset: a root over its files' entries, and a root over the sorted
record hashes (absence of a document is provable against it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance.datasets import merkle
from provenance.datasets.hashcache import HashCache, StatKey, default_cache, now_ns
from provenance.datasets.scan import ScanError, Stats, default_scheme, is_text_scheme, scan_files
from provenance.formats import DATA_COMMITMENT_SCHEMA, DATA_MANIFEST_SCHEMA, DATA_ROOT_ENV, FormatError, read_json

_LINE_FORMATS = (".jsonl", ".txt", ".csv", ".tsv")


class DataMismatch(RuntimeError):
    """Data on disk does not match its manifest; the message names the file and both digests."""


@dataclass
class DatasetSpec:
    """What a training script declares about one dataset."""

    name: str
    root: Path  # folder the file paths are relative to
    files: list[str]  # relative paths, posix
    source: dict[str, Any]  # {"type": "generated"|"local"|"hub"|"dvc"|"derived", ...}
    license: str | None = None
    samples_file: str | None = None  # the file whose records sample ids index
    expected: dict[str, Any] | None = None  # a manifest the files must match (committed or recorded)
    in_bundle: bool = True  # copy the files into the bundle (small datasets)
    extra: dict[str, Any] = field(default_factory=dict)
    leaf_schemes: dict[str, str] = field(default_factory=dict)  # file -> leaf scheme (default by suffix)
    # what a sample id means (provenance.datasets.layouts): None is `lines` (samples_file's line numbers);
    # {"type": "documents"} or {"type": "token-stream", "dtype": "uint16", "window": 64, "sample": "window"}
    layout: dict[str, Any] | None = None
    declared_root: str | None = None  # `root` as the script gave it (set on creation; see data_path)

    def __post_init__(self) -> None:
        if self.declared_root is None:
            self.declared_root = Path(self.root).as_posix()
        self.root = data_path(self.root)


def declare_layout(spec: DatasetSpec, text: str) -> DatasetSpec:
    """Give spec the layout a string declares (provenance.datasets.layouts.parse_layout's syntax, e.g.
    `token-stream:uint16:1024` or `documents:column=body`), as a config-declared DatasetSpec.layout."""
    from provenance.datasets.layouts import parse_layout

    layout, column = parse_layout(text)
    spec.layout = layout
    if column is not None:
        spec.leaf_schemes = {**spec.leaf_schemes,
                             **{f: f"records:parquet:{column}" for f in spec.files if f.endswith(".parquet")}}
    return spec


def data_path(path: str | os.PathLike[str]) -> Path:
    """Where a data path points: under $PROV_DATA_ROOT when that is set and the path is relative (a
    reproduction stages the datasets there), else the path as given. DatasetSpec roots resolve so."""
    p = Path(path)
    root = os.environ.get(DATA_ROOT_ENV)
    return Path(root).absolute() / p if root and not p.is_absolute() else p


def count_records(path: Path) -> int | None:
    if path.suffix not in _LINE_FORMATS:
        return None
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


_USE_DEFAULT_CACHE: Any = object()
MERKLE_TREE = "RFC 9162 Merkle tree: leaf H(0x00||data), node H(0x01||left||right)"
FILE_LEAF = ("b'fullyopen-file/v1\\0' + compact sorted JSON of the entry's leaf, leaves, merkle_root, path, sha256, "
             "size (and first_sample, samples where present)")
SORTED_LEAF = "the 32-byte leaf hashes of every text record of every file, sorted bytewise"


FILE_LEAF_KEYS = ("leaf", "leaves", "merkle_root", "path", "sha256", "size")
FILE_SAMPLE_KEYS = ("first_sample", "samples")  # files whose records or windows are samples


def file_leaf_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The fields of a file entry that its leaf in the dataset's Merkle tree commits to."""
    return {k: entry[k] for k in (*FILE_LEAF_KEYS, *FILE_SAMPLE_KEYS) if k in entry}


def file_leaf_data(entry: dict[str, Any]) -> bytes:
    """The leaf that stands for one file in its dataset's Merkle tree."""
    import json

    canon = json.dumps(file_leaf_entry(entry), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b"fullyopen-file/v1\0" + canon.encode()


def commitment(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The dataset's commitment (data/<name>/commitment.json): its Merkle roots and what a sample id
    means, small whatever the dataset's size, so that a proof chains to the seal in O(log n) bytes."""
    mk = manifest.get("merkle")
    if not isinstance(mk, dict):
        return None
    lay = manifest.get("layout") or {"type": "lines"}
    samples: dict[str, Any] = {"layout": lay.get("type"), "count": (manifest.get("samples") or {}).get("count")}
    if lay.get("type") == "token-stream":
        samples.update({"window": lay.get("window"), "sample": lay.get("sample"), "dtype": lay.get("dtype")})
    return {"schema": DATA_COMMITMENT_SCHEMA, "dataset": manifest.get("name"),
            **{k: mk[k] for k in ("algorithm", "tree", "file_leaf", "root", "files", "sorted_leaf", "sorted_root",
                                  "sorted_leaves")},
            "samples": samples}


def _layout_scheme(layout: dict[str, Any] | None, rel: str) -> str | None:
    """The leaf scheme a layout gives its files: token chunks for a token stream."""
    if layout and layout.get("type") == "token-stream" and rel.endswith((".bin", ".npy")):
        from provenance.datasets.scan import DEFAULT_TOKEN_CHUNK

        return f"tokens:{layout.get('dtype', 'uint16')}:{int(layout.get('chunk', DEFAULT_TOKEN_CHUNK))}"
    return None


MANIFEST_ENTRY = "manifest-text/v1"  # the hash cache's kind for a whole dataset's manifest text


def build_manifest(spec: DatasetSpec, workers: int | None = None, *, cache: HashCache | None = _USE_DEFAULT_CACHE,
                   stats: Stats | None = None, algorithm: str = "sha256") -> dict[str, Any]:
    """The manifest of spec's files; unchanged files' facts come from the hash cache (the same bytes).

    When no file of the dataset changed since its last manifest (every file's device, inode, size
    and mtime as then, none racy), the whole manifest comes from one cache entry."""
    import json

    text, manifest = _manifest(spec, workers, cache, stats, algorithm)
    return manifest if manifest is not None else json.loads(text)


def manifest_text(spec: DatasetSpec, workers: int | None = None, *, cache: HashCache | None = _USE_DEFAULT_CACHE,
                  stats: Stats | None = None, algorithm: str = "sha256") -> str:
    """formats.dumps(build_manifest(...)): the manifest's exact text. For a dataset none of whose files
    changed, this is one stat a file, one cache lookup and the cached text, never parsed."""
    return _manifest(spec, workers, cache, stats, algorithm)[0]


def _manifest(spec: DatasetSpec, workers: int | None, cache: HashCache | None, stats: Stats | None,
              algorithm: str) -> tuple[str, dict[str, Any] | None]:
    """(the manifest text, the manifest when it was built here; None when the text came from the cache)."""
    import hashlib
    import json
    import stat as stat_mod
    from array import array

    from provenance import formats
    from provenance.datasets.scan import DEFAULT_BLOCK_LEAF, DEFAULT_TOKEN_CHUNK, PARQUET_COLUMN

    # one stat a file: (device, inode, size, mtime_ns) of every file, in one array, for the dataset's key
    base = os.path.join(os.fspath(spec.root), "")
    facts = array("Q")
    total = newest = 0
    mask = (1 << 64) - 1  # mtime_ns may be negative: two's complement keeps it one-to-one
    for f in spec.files:
        try:
            st = os.stat(base + f)
        except OSError:
            st = None
        if st is None or not stat_mod.S_ISREG(st.st_mode):
            raise DataMismatch(f"dataset '{spec.name}': file {f} is missing (looked in {spec.root})")
        facts.extend((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns & mask))
        total += st.st_size
        newest = max(newest, st.st_mtime_ns)
    own_cache = cache is _USE_DEFAULT_CACHE
    if own_cache:
        cache = default_cache()
    # everything the manifest's text is a function of: the declaration, the leaf rules, the files' identities
    head = json.dumps([MANIFEST_ENTRY, DATA_MANIFEST_SCHEMA, algorithm, spec.name, spec.source, spec.license,
                       spec.extra, spec.layout, spec.samples_file, spec.leaf_schemes,
                       [DEFAULT_TOKEN_CHUNK, DEFAULT_BLOCK_LEAF, PARQUET_COLUMN]],
                      sort_keys=True, separators=(",", ":"), default=str)
    h = hashlib.sha256(head.encode())
    h.update(b"\0" + "\0".join(spec.files).encode("utf-8", "surrogateescape") + b"\0")
    h.update(facts.tobytes())
    state = h.hexdigest()
    # one row a dataset (a new state replaces the old): its identity is where it is, its name and algorithm
    ident = hashlib.sha256(json.dumps([os.path.abspath(spec.root), spec.name, algorithm], default=str).encode())
    key = StatKey(0, int.from_bytes(ident.digest()[:8], "big") >> 2, len(spec.files), newest)
    made = now_ns()
    try:
        value = cache.get_text(key, MANIFEST_ENTRY) if cache is not None else None
        if value is not None and value[:64] == state and value[64:65] == "\n":
            if stats is not None:
                stats.add_many(len(spec.files), total, cached=True)
            return value[65:], None
        paths = [spec.root / f for f in spec.files]
        schemes = [spec.leaf_schemes.get(f) or _layout_scheme(spec.layout, f) or default_scheme(f)
                   for f in spec.files]
        files, roots, lay = _dataset_facts(spec, paths, schemes, algorithm, cache, workers, stats)
        manifest = _manifest_of(spec, files, roots, lay, algorithm)
        text = formats.dumps(manifest)
        if cache is not None:
            cache.put_text(key, key, MANIFEST_ENTRY, f"{state}\n{text}", made)
            cache.flush()
    finally:
        if own_cache and cache is not None:
            cache.close()
    return text, manifest


def _dataset_facts(spec: DatasetSpec, paths: list[Path], schemes: list[str], algorithm: str,
                   cache: HashCache | None, workers: int | None,
                   stats: Stats | None) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    """The files' entries, the dataset's roots and its layout record, from the files (or their cache entries)."""
    try:
        facts = scan_files(list(zip(paths, schemes, strict=True)), algorithm=algorithm, cache=cache,
                           workers=workers, stats=stats)
    except ScanError as exc:
        raise DataMismatch(f"dataset '{spec.name}': {exc}") from None
    files = []
    text_leaves: list[bytes] = []
    for f, fact in zip(spec.files, facts, strict=True):
        entry: dict[str, Any] = {"path": f, "size": fact["size"], "sha256": fact["sha256"], "leaf": fact["leaf"],
                                 "leaves": fact["leaves"], "merkle_root": fact["merkle_root"]}
        if algorithm != "sha256":  # the whole-file digest in that algorithm too (model-signing accepts blake3)
            entry[algorithm] = fact[algorithm]
        if "records" in fact and (f.endswith(_LINE_FORMATS) or is_text_scheme(fact["leaf"])
                                  or fact["leaf"].startswith("tokens:")):
            entry["tokens" if fact["leaf"].startswith("tokens:") else "records"] = fact["records"]
        if is_text_scheme(fact["leaf"]):
            raw = fact.get("_leaf_hashes", b"")
            text_leaves += [raw[i:i + 32] for i in range(0, len(raw), 32)]
        files.append(entry)
    files.sort(key=lambda e: e["path"])
    lay = None
    if spec.layout is not None:
        from provenance.datasets.layouts import LayoutError, assign_samples, describe

        try:
            lay = describe(spec.layout, files)
        except LayoutError as exc:
            raise DataMismatch(f"dataset '{spec.name}': {exc}") from None
        assign_samples(lay, files)
    elif spec.samples_file is not None:
        e = next(e for e in files if e["path"] == spec.samples_file)
        if isinstance(e.get("records"), int):
            e["first_sample"], e["samples"] = 0, e["records"]
    file_tree = merkle.root_of_hashes((merkle.leaf_hash(file_leaf_data(e), algorithm) for e in files), algorithm)
    text_leaves.sort()
    sorted_tree = merkle.root_of_hashes((merkle.leaf_hash(h, algorithm) for h in text_leaves), algorithm)
    roots = {"root": f"{algorithm}:{file_tree.hex()}", "sorted_root": f"{algorithm}:{sorted_tree.hex()}",
             "sorted_leaves": len(text_leaves)}
    return files, roots, lay


def _manifest_of(spec: DatasetSpec, files: list[dict[str, Any]], roots: dict[str, Any], lay: dict[str, Any] | None,
                 algorithm: str) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "schema": DATA_MANIFEST_SCHEMA,
        "name": spec.name,
        "source": spec.source,
        "license": spec.license,
        "files": files,
        "merkle": {"algorithm": algorithm, "tree": MERKLE_TREE, "file_leaf": FILE_LEAF, "root": roots["root"],
                   "files": len(files), "sorted_leaf": SORTED_LEAF, "sorted_root": roots["sorted_root"],
                   "sorted_leaves": roots["sorted_leaves"]},
        **spec.extra,
    }
    if lay is not None:
        manifest["layout"] = lay
        manifest["samples"] = {"layout": lay["type"], "id": lay["id"], "count": lay["count"]}
    if spec.samples_file is not None and spec.layout is None:
        rec = next(e for e in files if e["path"] == spec.samples_file).get("records")
        manifest["samples"] = {"file": spec.samples_file, "id": "0-based record (line) number", "count": rec}
    return manifest


def merkle_problems(manifest: dict[str, Any], folder: Path) -> list[tuple[str, str]]:
    """(file, problem) for every Merkle root of the manifest that the files in `folder` do not give
    (each file read once, or found unchanged in the hash cache); [] when every root holds."""
    mk = manifest.get("merkle")
    if not isinstance(mk, dict):
        return []
    entries = [e for e in manifest.get("files", []) if isinstance(e, dict) and "merkle_root" in e]
    algorithm = str(mk.get("algorithm", "sha256"))
    problems: list[tuple[str, str]] = []
    cache = default_cache()
    try:
        facts = scan_files([(folder / e["path"], str(e["leaf"])) for e in entries], algorithm=algorithm, cache=cache)
    except (ScanError, ValueError) as exc:
        return [("", f"cannot recompute the Merkle roots: {exc}")]
    finally:
        if cache is not None:
            cache.close()
    text: list[bytes] = []
    for e, f in zip(entries, facts, strict=True):
        if f["merkle_root"] != e["merkle_root"] or f["leaves"] != e.get("leaves"):
            problems.append((e["path"], f"its Merkle root is {f['merkle_root']} over {f['leaves']} leaves, the "
                                        f"manifest says {e['merkle_root']} over {e.get('leaves')}"))
        if is_text_scheme(f["leaf"]):
            raw = f.get("_leaf_hashes", b"")
            text += [raw[i:i + 32] for i in range(0, len(raw), 32)]
    if len(entries) == len(manifest.get("files", [])):
        files = sorted(manifest["files"], key=lambda e: e["path"])
        root = merkle.root_of_hashes((merkle.leaf_hash(file_leaf_data(e), algorithm) for e in files), algorithm)
        if f"{algorithm}:{root.hex()}" != mk.get("root"):
            problems.append(("", f"merkle.root is {mk.get('root')}, the files' entries give {algorithm}:{root.hex()}"))
        text.sort()
        sroot = merkle.root_of_hashes((merkle.leaf_hash(h, algorithm) for h in text), algorithm)
        if f"{algorithm}:{sroot.hex()}" != mk.get("sorted_root") or len(text) != mk.get("sorted_leaves"):
            problems.append(("", f"merkle.sorted_root is {mk.get('sorted_root')}, the records give "
                                 f"{algorithm}:{sroot.hex()} over {len(text)} leaves"))
    return problems


def local_digests(entries: list[dict[str, Any]], folder: Path) -> dict[Path, str]:
    """{path: hex sha256} of a manifest's files found in `folder`, through the hash cache: files that
    are unchanged since they were last hashed (by a manifest, a run or an audit) are not read again."""
    items = [(folder / e["path"], str(e.get("leaf") or default_scheme(e["path"]))) for e in entries]
    cache = default_cache()
    try:
        facts = scan_files(items, cache=cache)
    except ScanError as exc:
        raise DataMismatch(str(exc)) from None
    finally:
        if cache is not None:
            cache.close()
    return {p: f["sha256"] for (p, _), f in zip(items, facts, strict=True)}


def compare_manifests(expected: dict[str, Any], actual: dict[str, Any], where: str = "") -> None:
    """Raise DataMismatch on the first file whose size or digest differs, naming both digests."""
    name = expected.get("name", "?")
    label = f"dataset '{name}'" + (f" ({where})" if where else "")
    exp_files = {e["path"]: e for e in expected.get("files", [])}
    act_files = {e["path"]: e for e in actual.get("files", [])}
    for path, e in sorted(exp_files.items()):
        a = act_files.get(path)
        if a is None:
            raise DataMismatch(f"{label}: file {path} is missing; expected sha256:{e['sha256']}")
        if a["sha256"] != e["sha256"] or a["size"] != e["size"]:
            raise DataMismatch(
                f"{label}: file {path} does not match its manifest: expected sha256:{e['sha256']} "
                f"({e['size']} bytes), found sha256:{a['sha256']} ({a['size']} bytes)")
    extra = sorted(set(act_files) - set(exp_files))
    if extra:
        raise DataMismatch(f"{label}: files not in the manifest: {', '.join(extra)}")


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    m = read_json(path)
    if not isinstance(m, dict) or m.get("schema") != DATA_MANIFEST_SCHEMA:
        raise FormatError(f"{path}: not a data manifest (schema {DATA_MANIFEST_SCHEMA})")
    return m


def verified_manifest(spec: DatasetSpec, workers: int | None = None) -> dict[str, Any]:
    """Build the manifest of spec's files and check it against spec.expected when given."""
    actual = build_manifest(spec, workers)
    if spec.expected is not None:
        compare_manifests(spec.expected, actual, where=str(spec.root))
    return actual
