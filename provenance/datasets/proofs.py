"""Membership proofs: "this text / document / sample is in the bundle's training data, and was trained
at these steps" — or, for an exact document, "it is not in the dataset" — checkable offline with
nothing but the proof file.

A proof (schema PROOF_SCHEMA in formats.py, JSON) chains, link by link, to the bundle's root digest:

1. the record's bytes → its leaf hash → the file's Merkle root (an RFC 9162 inclusion path), for
   every copy of the record that the prover found in the dataset's text files;
2. the file's entry (the fields its leaf commits to: path, size, sha256, leaves, Merkle root, and
   the first sample id and number of samples it holds) → the dataset's root over its files;
3. the dataset's commitment (data/<name>/commitment.json, its exact text: a few hundred bytes
   whatever the dataset's size, written with the manifest) → its sha256, a resource of the seal;
4. the seal's resource digests in order → the root digest (as model-signing computes it);
5. the data order: each rank's header (which dataset the ids index) and step records (32 bytes a
   step: step, count, chain digest), plus the ids of every step that trained the record, each step's
   ids checked against its chain link. When the whole order is small enough (ORDER_INLINE_LIMIT)
   the ids of every step are included and the list of steps is proved complete.

Non-membership (an exact document of a text dataset): the dataset's manifest commits to a tree
over its records' leaf hashes sorted bytewise; the two neighbours that would enclose the
document's leaf hash, with their paths, show that no leaf equals it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from bisect import bisect_left
from pathlib import Path
from typing import Any

from provenance import formats, reader
from provenance.capture.data import commitment, file_leaf_data, file_leaf_entry
from provenance.datasets import merkle
from provenance.datasets.files import data_file_candidates
from provenance.datasets.layouts import leaf_samples
from provenance.datasets.scan import ScanError, is_text_scheme, scan_file
from provenance.hashing import root_digest

ORDER_INLINE_LIMIT = 1 << 20  # include every step's ids (a complete list of steps) up to this many bytes


class ProofError(ValueError):
    """A proof cannot be made, or does not hold; the message says which link."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProofError(f"{what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ProofError(f"{what} is not base64") from None


def record_text(data: bytes) -> str | None:
    """The text of a record: the "text" field of a JSON object, else the line itself (None: not UTF-8)."""
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        obj = json.loads(s)
    except json.JSONDecodeError:
        return s
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return obj["text"]
    return s


def document_bytes(raw: bytes) -> bytes:
    """A document file as one record: without one trailing newline (records are stored without it)."""
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    return raw[:-1] if raw.endswith(b"\n") else raw


# --- the bundle side -----------------------------------------------------------------------
def _bundle_bytes(root: Path, rel: str) -> bytes:
    """A bundle file's bytes through reader.Bundle (a regular file, never a link; ProofError names it)."""
    try:
        files = reader.Bundle.of_files(root, [rel])
        if not files.has(rel):
            raise reader.BundleFileError(rel, "missing")
        return files.read_bytes(rel, files.size(rel))  # the file as it was listed; refused if it grew
    except reader.BundleFileError as exc:
        raise ProofError(f"{root}: {exc}") from None


def _bundle_json(root: Path, rel: str) -> Any:
    try:
        return reader.Bundle.of_files(root, [rel]).json(rel)
    except reader.BundleFileError as exc:
        raise ProofError(f"{root}: {exc}") from None


class _Bundle:
    def __init__(self, root: Path) -> None:
        self.root = root
        if not (root / formats.MANIFEST).is_file():
            raise ProofError(f"{root}: not a sealed bundle ({formats.MANIFEST} is missing)")
        self.root_hex, self.resources = formats.parse_oms_statement(_bundle_json(root, formats.MANIFEST))
        self.names = sorted(self.resources, key=formats.resource_sort_key)
        if root_digest(self.resources[n] for n in self.names) != self.root_hex:
            raise ProofError(f"{root}: the seal's root digest does not match its resources")

    def sealed_bytes(self, rel: str) -> bytes:
        if rel not in self.resources:
            raise ProofError(f"{self.root}: {rel} is not sealed")
        data = _bundle_bytes(self.root, rel)
        if hashlib.sha256(data).hexdigest() != self.resources[rel]:
            raise ProofError(f"{self.root}: {rel} does not match its seal")
        return data

    def order_ranks(self) -> list[int]:
        out = []
        for name in self.names:
            if name.startswith(f"{formats.ORDER_DIR}/rank") and name.endswith(".json"):
                stem = name[len(formats.ORDER_DIR) + 5:-5]
                if stem.isdigit():
                    out.append(int(stem))
        return sorted(out)


def _data_file(bundle: _Bundle, manifest: dict[str, Any], entry: dict[str, Any]) -> Path:
    """Where a dataset file's bytes are: in the bundle, else the recorded local path (or PROV_DATA_ROOT)."""
    rel = entry["path"]
    found, candidates = data_file_candidates(bundle.root, manifest, rel)
    if found is not None:
        return found
    raise ProofError(f"dataset '{manifest.get('name')}': file {rel} is neither in the bundle nor at "
                     f"{candidates[-1] if candidates else 'a recorded path'} (set PROV_DATA_ROOT)")


def _leaf_hashes(path: Path, entry: dict[str, Any], algorithm: str) -> list[bytes]:
    try:
        facts = scan_file(path, entry["leaf"], algorithm, keep=True)
    except ScanError as exc:
        raise ProofError(str(exc)) from None
    if facts["sha256"] != entry["sha256"] or facts["merkle_root"] != entry.get("merkle_root"):
        raise ProofError(f"{path}: does not match its manifest entry (sha256:{entry['sha256']})")
    raw = facts["_leaf_hashes"]
    return [raw[i:i + 32] for i in range(0, len(raw), 32)]


def _text_leaf_hashes(bundle: _Bundle, manifest: dict[str, Any], algorithm: str) -> dict[str, list[bytes]]:
    """{path: leaf hashes} of every text file of the dataset, in one bulk pass: files the hash cache knows
    unchanged are not read again. Each file must give its manifest entry's sha256 and Merkle root."""
    from provenance.datasets.hashcache import default_cache
    from provenance.datasets.scan import scan_files

    entries = [e for e in manifest["files"] if is_text_scheme(e["leaf"])]
    cache = default_cache()
    try:
        facts = scan_files([(_data_file(bundle, manifest, e), e["leaf"]) for e in entries], algorithm, cache=cache)
    except ScanError as exc:
        raise ProofError(str(exc)) from None
    finally:
        if cache is not None:
            cache.close()
    out = {}
    for e, f in zip(entries, facts, strict=True):
        if f["sha256"] != e["sha256"] or f["merkle_root"] != e.get("merkle_root"):
            raise ProofError(f"dataset '{manifest.get('name')}': {e['path']} does not match its manifest entry "
                             f"(sha256:{e['sha256']})")
        raw = f["_leaf_hashes"]
        out[e["path"]] = [raw[i:i + 32] for i in range(0, len(raw), 32)]
    return out


def _leaf_bytes(path: Path, entry: dict[str, Any], index: int) -> bytes:
    """The bytes of leaf `index` of a file (records: the decompressed record)."""
    from provenance.datasets.scan import read_leaf

    try:
        return read_leaf(path, entry["leaf"], index)
    except ScanError as exc:
        raise ProofError(str(exc)) from None


def _text_records(path: Path, scheme: str) -> Any:
    from provenance.datasets.scan import iter_records

    try:
        yield from iter_records(path, scheme)
    except ScanError as exc:
        raise ProofError(str(exc)) from None


def _sample_leaf(manifest: dict[str, Any], sample: int) -> tuple[str, int]:
    """(file, leaf index) of a sample id in the manifest's layout."""
    from provenance.datasets.layouts import LayoutError, locate_sample

    try:
        return locate_sample(manifest, sample)
    except LayoutError as exc:
        raise ProofError(str(exc)) from None


def _order_evidence(bundle: _Bundle, dataset: str, wanted: set[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    trained: list[dict[str, Any]] = []
    ranks = []
    sizes = 0
    for rank in bundle.order_ranks():
        hdr_rel, ids_rel, steps_rel, _ = formats.order_files(bundle.root, rank)
        sizes += sum((bundle.root / r).stat().st_size for r in (ids_rel, steps_rel) if r in bundle.resources)
    complete = sizes <= ORDER_INLINE_LIMIT
    for rank in bundle.order_ranks():
        hdr_rel, ids_rel, steps_rel, _ = formats.order_files(bundle.root, rank)
        header_text = bundle.sealed_bytes(hdr_rel).decode("utf-8")
        header = json.loads(header_text)
        entry: dict[str, Any] = {"rank": rank, "header_file": hdr_rel, "header_text": header_text}
        if header.get("dataset") != dataset or steps_rel not in bundle.resources:  # another dataset's order
            ranks.append(entry)
            continue
        steps_raw = bundle.sealed_bytes(steps_rel)
        ids_raw = bundle.sealed_bytes(ids_rel) if ids_rel in bundle.resources else b""
        entry.update({"steps_file": steps_rel, "steps_b64": _b64(steps_raw), "ids_file": ids_rel})
        batches: dict[str, list[int]] = {}
        for st in formats.decode_order(ids_raw, steps_raw, formats.order_version(header)):
            hits = [k for k, s in enumerate(st.sample_ids) if s in wanted]
            for k in hits:
                trained.append({"rank": rank, "step": st.step, "position": k, "sample": st.sample_ids[k]})
            if hits and not complete:
                batches[str(st.step)] = list(st.sample_ids)
        if complete:
            entry["ids_b64"] = _b64(ids_raw)
        else:
            entry["batches"] = batches
        ranks.append(entry)
    trained.sort(key=lambda t: (t["step"], t["rank"], t["position"]))
    return trained, {"complete": complete, "ranks": ranks}


def prove(bundle_path: Path, *, text: str | None = None, file: Path | None = None, sample: int | None = None,
          dataset: str | None = None) -> dict[str, Any]:
    """A proof about one record of a bundle's dataset (see the module docstring)."""
    if sum(x is not None for x in (text, file, sample)) != 1:
        raise ProofError("give exactly one of --text, --file, --sample")
    bundle = _Bundle(Path(bundle_path))
    name = dataset or _ordered_dataset(bundle)
    mrel = f"{formats.DATA_DIR}/{name}/manifest.json"
    if mrel not in bundle.resources:
        raise ProofError(f"{bundle.root}: no dataset {name!r} ({mrel} is not in the bundle)")
    manifest_text = bundle.sealed_bytes(mrel).decode("utf-8")
    manifest = json.loads(manifest_text)
    crel = f"{formats.DATA_DIR}/{name}/{formats.DATA_COMMITMENT}"
    if crel not in bundle.resources or not isinstance(manifest.get("merkle"), dict):
        raise ProofError(f"{bundle.root}: dataset {name!r} has no Merkle commitment ({crel}): the bundle was made "
                         f"before fullyopen recorded them")
    commit_text = bundle.sealed_bytes(crel).decode("utf-8")
    commit = json.loads(commit_text)
    if commit != commitment(manifest):
        raise ProofError(f"{crel} does not match the dataset's manifest")
    algorithm = commit["algorithm"]
    files = manifest["files"]
    if (text is not None or file is not None) and (manifest.get("layout") or {}).get("type") == "token-stream":
        return _prove_tokens(bundle, name, manifest, commit_text, commit, text, file)
    query: dict[str, Any]
    target_file: str | None = None
    target_index = -1
    doc: bytes | None = None
    if sample is not None:
        query = {"sample": sample}
        target_file, target_index = _sample_leaf(manifest, sample)
    elif text is not None:
        query = {"text": text}
        exact = contains = None
        for e in files:
            if not is_text_scheme(e["leaf"]):
                continue
            for i, data in enumerate(_text_records(_data_file(bundle, manifest, e), e["leaf"])):
                t = record_text(data)
                if t is None:
                    continue
                if t == text:
                    exact = (e["path"], i)
                    break
                if contains is None and text in t:
                    contains = (e["path"], i)
            if exact:
                break
        found = exact or contains
        if found is None:
            raise ProofError(f"dataset '{name}': no record's text contains the given text")
        target_file, target_index = found
    else:
        assert file is not None
        doc = document_bytes(Path(file).read_bytes())
        query = {"document_sha256": hashlib.sha256(doc).hexdigest(), "document": Path(file).name}
        lh = merkle.leaf_hash(doc, algorithm)
        text_leaves = _text_leaf_hashes(bundle, manifest, algorithm)
        for e in files:
            hashes = text_leaves.get(e["path"], [])
            if lh in hashes:
                target_file, target_index = e["path"], hashes.index(lh)
                break
    proof: dict[str, Any] = {
        "schema": formats.PROOF_SCHEMA,
        "query": query,
        "algorithm": algorithm,
        "bundle": {"root_digest": formats.digest_str(bundle.root_hex), "run": bundle.root.name,
                   "resources": [[n, bundle.resources[n]] for n in bundle.names]},
        "dataset": {"name": name, "commitment_file": crel, "commitment_text": commit_text},
    }
    if target_file is None:
        assert doc is not None
        proof["claim"] = "non-membership"
        proof["absent"] = _absence(text_leaves, merkle.leaf_hash(doc, algorithm), algorithm)
        return proof
    file_index = next(i for i, e in enumerate(files) if e["path"] == target_file)
    entry = files[file_index]
    path = _data_file(bundle, manifest, entry)
    text_leaves = _text_leaf_hashes(bundle, manifest, algorithm) if is_text_scheme(entry["leaf"]) else {}
    hashes = text_leaves[target_file] if text_leaves else _leaf_hashes(path, entry, algorithm)
    if not 0 <= target_index < len(hashes):
        raise ProofError(f"{target_file}: has no leaf {target_index} ({len(hashes)} leaves)")
    data = doc if doc is not None else _leaf_bytes(path, entry, target_index)
    file_hashes = [merkle.leaf_hash(file_leaf_data(e), algorithm) for e in files]
    # every copy of the record in the dataset's text files: each one's samples were trained on it
    lh = hashes[target_index]
    copies: list[tuple[int, int, list[bytes]]] = []
    for fi, e in enumerate(files):
        if fi == file_index:
            fh = hashes
        elif e["path"] in text_leaves:
            fh = text_leaves[e["path"]]
        else:
            continue
        copies += [(fi, i, fh) for i, h in enumerate(fh) if h == lh or (fi == file_index and i == target_index)]
    leaves = []
    wanted: set[int] = set()
    for fi, i, fh in copies:
        leaves.append({"file": files[fi]["path"], "file_index": fi, "index": i, "entry": file_leaf_entry(files[fi]),
                       "file_path": [h.hex() for h in merkle.inclusion_path(fh, i, algorithm)],
                       "dataset_path": [h.hex() for h in merkle.inclusion_path(file_hashes, fi, algorithm)]})
        wanted |= leaf_samples(files[fi], i, commit["samples"])
    record: dict[str, Any] = {}
    try:
        record["data_text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        record["data_b64"] = _b64(data)
    trained, order = _order_evidence(bundle, name, wanted)
    proof.update({
        "claim": "membership",
        "record": record,
        "leaves": leaves,
        "samples": sorted(wanted),
        "trained": trained,
        "order": order,
    })
    return proof


# --- a text in a token stream -------------------------------------------------------------
MAX_SPANS = 64  # occurrences of a text that one proof carries (each: its token chunks and their paths)


def _tokenizer_file(bundle_root: Path, manifest: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    """The tokenizer file the token stream's manifest names (source.tokenizer / tokenizer_dataset /
    tokenizer_file), found in the bundle (or the tokenizer dataset's recorded path) and checked against
    the recorded sha256; ProofError naming what is missing otherwise."""
    name = manifest.get("name")
    src = manifest.get("source") or {}
    digest, ds, rel = src.get("tokenizer"), src.get("tokenizer_dataset"), src.get("tokenizer_file")
    if not (isinstance(digest, str) and isinstance(ds, str) and isinstance(rel, str)):
        raise ProofError(f"dataset '{name}' is a token stream whose manifest names no tokenizer (source.tokenizer, "
                         f"tokenizer_dataset, tokenizer_file): --text cannot be tokenized; prove --sample ID, or "
                         f"--text against the text dataset it was made from (--dataset)")
    info = {"digest": digest, "dataset": ds, "file": rel}
    mpath = bundle_root / formats.DATA_DIR / ds / "manifest.json"
    if not mpath.is_file():
        raise ProofError(f"dataset '{name}': its tokenizer dataset {ds!r} has no manifest in the bundle")
    tman = _bundle_json(bundle_root, mpath.relative_to(bundle_root).as_posix())
    found, cands = data_file_candidates(bundle_root, tman, rel)
    if found is None:
        raise ProofError(f"dataset '{name}': the recorded tokenizer {rel} ({digest}) is not available offline "
                         f"(looked in {', '.join(str(c) for c in cands) or 'no recorded place'})")
    got = formats.digest_str(hashlib.sha256(found.read_bytes()).hexdigest())
    if got != digest:
        raise ProofError(f"dataset '{name}': the tokenizer at {found} is {got}, the manifest records {digest}")
    return found, info


def encode_text(tokenizer_path: Path, text: str) -> list[int]:
    """The text encoded as the recorded tokenization step did (training/tokens.py): without special tokens."""
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:  # an unreadable or foreign tokenizer file: a clear error, not a traceback
        raise ProofError(f"cannot load the tokenizer {tokenizer_path}: {exc}") from None
    return list(tok.encode(text, add_special_tokens=False).ids)


def _find_tokens(path: Path, entry: dict[str, Any], ids: list[int], limit: int) -> tuple[list[int], int]:
    """(token offsets where `ids` occurs in the token file, up to `limit`; how many there are), reading
    the file in bounded blocks (memory stays bounded whatever its size)."""
    import numpy as np

    from provenance.datasets.scan import TOKEN_DTYPES, leaf_span

    dtype = str(entry["leaf"]).split(":")[1]
    width = TOKEN_DTYPES[dtype]
    skip = leaf_span(path, entry["leaf"], 0)[0]
    n_tokens = (path.stat().st_size - skip) // width
    arr = np.memmap(path, dtype=np.dtype(f"<u{width}"), mode="r", offset=skip, shape=(n_tokens,)) \
        if n_tokens else np.zeros(0, dtype=np.uint16)
    seq = np.asarray(ids, dtype=np.int64)
    n = len(seq)
    hits: list[int] = []
    total = 0
    block = 1 << 24
    for lo in range(0, max(0, n_tokens - n + 1), block):
        hi = min(n_tokens - n + 1, lo + block)
        cand = np.flatnonzero(arr[lo:hi] == seq[0]) + lo
        for k in range(1, n):
            if not len(cand):
                break
            cand = cand[arr[cand + k] == seq[k]]
        total += len(cand)
        hits += [int(c) for c in cand[: max(0, limit - len(hits))]]
    del arr
    return hits, total


def _prove_tokens(bundle: _Bundle, name: str, manifest: dict[str, Any], commit_text: str, commit: dict[str, Any],
                  text: str | None, file: Path | None) -> dict[str, Any]:
    """--text (or the text of --file) in a token stream: tokenized with the recorded tokenizer, found as a
    token sequence; each occurrence proved by its token chunks (leaves) and their paths."""
    algorithm = commit["algorithm"]
    query: dict[str, Any]
    if file is not None:
        doc = document_bytes(Path(file).read_bytes())
        t = record_text(doc)
        if t is None:
            raise ProofError(f"{file}: not UTF-8 text; a token stream holds tokenized text")
        query = {"text": t, "document": Path(file).name, "document_sha256": hashlib.sha256(doc).hexdigest()}
    else:
        assert text is not None
        t = text
        query = {"text": t}
    tok_path, tok_info = _tokenizer_file(bundle.root, manifest)
    ids = encode_text(tok_path, t)
    if not ids:
        raise ProofError("the text encodes to no tokens")
    files = manifest["files"]
    file_hashes = [merkle.leaf_hash(file_leaf_data(e), algorithm) for e in files]
    spans = []
    wanted: set[int] = set()
    total = 0
    for fi, e in enumerate(files):
        if not str(e.get("leaf", "")).startswith("tokens:"):
            continue
        path = _data_file(bundle, manifest, e)
        hits, n_hits = _find_tokens(path, e, ids, MAX_SPANS - len(spans))
        total += n_hits
        if not hits:
            continue
        hashes = _leaf_hashes(path, e, algorithm)  # checks the file against its entry (sha256, Merkle root)
        chunk = int(str(e["leaf"]).rsplit(":", 1)[1])
        for a in hits:
            b = a + len(ids)
            leaves = []
            for li in range(a // chunk, (b - 1) // chunk + 1):
                leaves.append({"index": li, "data_b64": _b64(_leaf_bytes(path, e, li)),
                               "file_path": [h.hex() for h in merkle.inclusion_path(hashes, li, algorithm)]})
            spans.append({"file": e["path"], "file_index": fi, "entry": file_leaf_entry(e), "token_start": a,
                          "token_end": b, "leaves": leaves,
                          "dataset_path": [h.hex() for h in merkle.inclusion_path(file_hashes, fi, algorithm)]})
            wanted |= span_samples(e, a, b, commit["samples"])
    if not spans:
        raise ProofError(f"dataset '{name}': the text's {len(ids)} tokens do not occur in the token stream (absence "
                         f"is provable only for exact documents of a text dataset: prove --file against the "
                         f"source text dataset with --dataset)")
    trained, order = _order_evidence(bundle, name, wanted)
    return {
        "schema": formats.PROOF_SCHEMA,
        "query": query,
        "algorithm": algorithm,
        "bundle": {"root_digest": formats.digest_str(bundle.root_hex), "run": bundle.root.name,
                   "resources": [[n, bundle.resources[n]] for n in bundle.names]},
        "dataset": {"name": name, "commitment_file": f"{formats.DATA_DIR}/{name}/{formats.DATA_COMMITMENT}",
                    "commitment_text": commit_text},
        "claim": "membership",
        "tokens": {"ids": ids, "tokenizer": tok_info,
                   "encoding": "the text encoded by the recorded tokenizer without special tokens",
                   "occurrences": total, "in_proof": len(spans)},
        "spans": spans,
        "samples": sorted(wanted),
        "trained": trained,
        "order": order,
    }


def span_samples(entry: dict[str, Any], a: int, b: int, samples: dict[str, Any]) -> set[int]:
    """The sample ids of a token file (its entry) that hold any of its tokens [a, b): window ids whose
    window overlaps the span (only whole windows are samples), or offset ids whose window overlaps it."""
    if not isinstance(entry.get("first_sample"), int) or not isinstance(entry.get("samples"), int):
        return set()
    first, n, w = entry["first_sample"], entry["samples"], int(samples["window"])
    if samples.get("sample") == "window":
        return {first + k for k in range(a // w, min(n, (b - 1) // w + 1))}
    return {first + o for o in range(max(0, a - w + 1), min(n, b))}


def _ordered_dataset(bundle: _Bundle) -> str:
    for rank in bundle.order_ranks():
        hdr = json.loads(bundle.sealed_bytes(formats.order_paths(rank)[0]))
        if isinstance(hdr.get("dataset"), str) and hdr["dataset"]:
            return str(hdr["dataset"])
    raise ProofError(f"{bundle.root}: no data order names a dataset; pass --dataset")


def _absence(text_leaves: dict[str, list[bytes]], target: bytes, algorithm: str) -> dict[str, Any]:
    leaves = sorted(h for hashes in text_leaves.values() for h in hashes)
    sorted_hashes = [merkle.leaf_hash(h, algorithm) for h in leaves]
    i = bisect_left(leaves, target)
    if i < len(leaves) and leaves[i] == target:
        raise ProofError("the document is in the dataset")  # unreachable: membership was searched first
    neighbours = []
    for j in (i - 1, i):
        if 0 <= j < len(leaves):
            neighbours.append({"index": j, "leaf_hash": leaves[j].hex(),
                               "path": [h.hex() for h in merkle.inclusion_path(sorted_hashes, j, algorithm)]})
    return {"leaf_hash": target.hex(), "sorted_leaves": len(leaves), "neighbours": neighbours}


# --- verification: nothing but the proof ---------------------------------------------------
def _hex(value: Any, what: str) -> bytes:
    try:
        out = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ProofError(f"{what} is not hex") from None
    return out


def _path(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list):
        raise ProofError(f"{what} is missing")
    return [_hex(h, what) for h in value]


def _digest_hex(value: Any, algorithm: str, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith(f"{algorithm}:"):
        raise ProofError(f"{what} does not name the algorithm {algorithm}")
    return _hex(value.split(":", 1)[1], what)


def verify_proof(proof: Any, *, root: str | None = None, bundle: Path | None = None) -> None:
    """Raise ProofError naming the first link that does not hold."""
    try:
        _verify(proof, root, bundle)
    except ProofError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ProofError(f"malformed proof ({type(exc).__name__}: {exc})") from None


def _verify(proof: Any, root: str | None, bundle: Path | None) -> None:
    if not isinstance(proof, dict) or proof.get("schema") != formats.PROOF_SCHEMA:
        raise ProofError(f"not a proof (schema {formats.PROOF_SCHEMA})")
    q = proof.get("query")  # what the proof is about: checked against the record below, so it must say it
    if not isinstance(q, dict) or not {"text", "sample", "document_sha256"} & set(q) \
            or ("text" in q and not isinstance(q["text"], str)) \
            or ("sample" in q and (not isinstance(q["sample"], int) or isinstance(q["sample"], bool))) \
            or ("document_sha256" in q and not isinstance(q["document_sha256"], str)):
        raise ProofError("the proof does not say what it is about (query: a text, a sample id or a document_sha256)")
    algorithm = proof["algorithm"]
    merkle.hasher(algorithm)
    # 4. resources -> root digest
    b = proof["bundle"]
    resources = {str(n): str(d) for n, d in b["resources"]}
    names = [str(n) for n, _ in b["resources"]]
    if len(resources) != len(names) or names != sorted(names, key=formats.resource_sort_key):
        raise ProofError("the bundle's resources are not listed once each, in the seal's order")
    got_root = formats.digest_str(root_digest(resources[n] for n in names))
    if got_root != b["root_digest"]:
        raise ProofError(f"the resources do not give the root digest {b['root_digest']} (they give {got_root})")
    if root is not None and root.removeprefix("sha256:") != got_root.removeprefix("sha256:"):
        raise ProofError(f"the proof chains to {got_root}, not to {root}")
    if bundle is not None:
        real, _ = formats.parse_oms_statement(_bundle_json(Path(bundle), formats.MANIFEST))
        if formats.digest_str(real) != got_root:
            raise ProofError(f"the proof chains to {got_root}, the bundle {bundle} is sealed as sha256:{real}")

    def sealed(rel: str, data: bytes) -> None:
        if resources.get(rel) != hashlib.sha256(data).hexdigest():
            raise ProofError(f"{rel} in the proof is not the sealed {rel}")

    # 3. the data manifest
    d = proof["dataset"]
    ctext: str = d["commitment_text"]
    sealed(d["commitment_file"], ctext.encode("utf-8"))
    if d["commitment_file"] != f"{formats.DATA_DIR}/{d['name']}/{formats.DATA_COMMITMENT}":
        raise ProofError(f"{d['commitment_file']} is not the commitment of dataset {d['name']!r}")
    mk = json.loads(ctext)
    if mk.get("schema") != formats.DATA_COMMITMENT_SCHEMA or mk.get("dataset") != d["name"]:
        raise ProofError(f"{d['commitment_file']} is not a data commitment of dataset {d['name']!r}")
    if mk["algorithm"] != algorithm:
        raise ProofError(f"the dataset's Merkle trees use {mk['algorithm']}, the proof {algorithm}")
    n_files = int(mk["files"])
    if proof.get("claim") == "non-membership":
        _verify_absence(proof, mk, algorithm)
        return
    if proof.get("claim") != "membership":
        raise ProofError(f"unknown claim {proof.get('claim')!r}")
    if "spans" in proof:
        _verify_token_spans(proof, mk, algorithm, n_files, bundle, sealed)
        _verify_order(proof, resources, d["name"], set(proof["samples"]), sealed)
        return
    # 1. record -> file root, 2. file entry -> dataset root: for every copy the proof lists
    rec = proof["record"]
    data = rec["data_text"].encode("utf-8") if "data_text" in rec else _unb64(rec.get("data_b64"), "record data")
    lh = merkle.leaf_hash(data, algorithm)
    wanted: set[int] = set()
    seen = set()
    if not proof["leaves"]:
        raise ProofError("the proof lists no place of the record")
    for leaf in proof["leaves"]:
        fi, li = int(leaf["file_index"]), int(leaf["index"])
        if (fi, li) in seen:
            raise ProofError(f"leaf {li} of file #{fi} is listed twice")
        seen.add((fi, li))
        entry = leaf["entry"]
        if not 0 <= fi < n_files or entry["path"] != leaf["file"]:
            raise ProofError(f"file #{fi} of the dataset is not {leaf['file']}")
        file_root = merkle.root_from_path(lh, li, int(entry["leaves"]), _path(leaf["file_path"], "file_path"),
                                          algorithm)
        if file_root is None or file_root != _digest_hex(entry["merkle_root"], algorithm, "merkle_root"):
            raise ProofError(f"the record is not leaf {li} of {leaf['file']}: its path does not lead to the "
                             f"file's Merkle root {entry['merkle_root']}")
        ds_root = merkle.root_from_path(merkle.leaf_hash(file_leaf_data(entry), algorithm), fi, n_files,
                                        _path(leaf["dataset_path"], "dataset_path"), algorithm)
        if ds_root is None or ds_root != _digest_hex(mk["root"], algorithm, "merkle.root"):
            raise ProofError(f"{leaf['file']}'s entry does not lead to the dataset's Merkle root {mk['root']}")
        wanted |= leaf_samples(entry, li, mk["samples"])
    # the query is about this record
    q = proof["query"]
    if "text" in q:
        t = record_text(data)
        if t is None or q["text"] not in t:
            raise ProofError("the record does not contain the text the proof is about")
    elif "document_sha256" in q:
        if hashlib.sha256(data).hexdigest() != q["document_sha256"]:
            raise ProofError("the record is not the document the proof is about")
    if "sample" in q and int(q["sample"]) not in wanted:
        raise ProofError(f"sample {q['sample']} is not this record")
    if sorted(wanted) != list(proof.get("samples", [])):
        raise ProofError("the proof's sample ids are not the ones the manifest's layout gives its records")
    # 5. the data order
    _verify_order(proof, resources, d["name"], wanted, sealed)


def _verify_token_spans(proof: dict[str, Any], mk: dict[str, Any], algorithm: str, n_files: int,
                        bundle: Path | None, sealed: Any) -> None:
    """Each span: its token chunks lead to the file's Merkle root, the file's entry to the dataset root,
    and the chunks hold the proof's token ids at the span; the samples are the ones the layout gives.
    The text → ids link needs the tokenizer: checked when the bundle is given, else as claimed."""
    import struct

    from provenance.datasets.scan import TOKEN_DTYPES

    t = proof["tokens"]
    ids = [int(x) for x in t["ids"]]
    if not ids or not proof["spans"]:
        raise ProofError("the proof lists no tokens or no place of them")
    wanted: set[int] = set()
    seen = set()
    for sp in proof["spans"]:
        fi, a, b = int(sp["file_index"]), int(sp["token_start"]), int(sp["token_end"])
        entry = sp["entry"]
        if not 0 <= fi < n_files or entry["path"] != sp["file"] or (fi, a) in seen or b - a != len(ids) or a < 0:
            raise ProofError(f"span {sp.get('file')}:{a}:{b} is not a place of the {len(ids)} tokens in file #{fi}")
        seen.add((fi, a))
        kind, dtype, chunk_s = str(entry["leaf"]).split(":")
        if kind != "tokens":
            raise ProofError(f"{sp['file']} is not a token file (leaf {entry['leaf']})")
        width, chunk = TOKEN_DTYPES[dtype], int(chunk_s)
        want_leaves = list(range(a // chunk, (b - 1) // chunk + 1))
        if [int(x["index"]) for x in sp["leaves"]] != want_leaves:
            raise ProofError(f"{sp['file']}: the span's chunks are not {want_leaves}")
        file_root = _digest_hex(entry["merkle_root"], algorithm, "merkle_root")
        raw = b""
        for leaf in sp["leaves"]:
            data = _unb64(leaf["data_b64"], f"{sp['file']} chunk {leaf['index']}")
            got = merkle.root_from_path(merkle.leaf_hash(data, algorithm), int(leaf["index"]), int(entry["leaves"]),
                                        _path(leaf["file_path"], "file_path"), algorithm)
            if got is None or got != file_root:
                raise ProofError(f"chunk {leaf['index']} is not a leaf of {sp['file']}: its path does not lead to "
                                 f"the file's Merkle root {entry['merkle_root']}")
            raw += data
        off = (a - want_leaves[0] * chunk) * width
        part = raw[off:off + len(ids) * width]
        if len(part) != len(ids) * width or list(struct.unpack(f"<{len(ids)}{'H' if width == 2 else 'I'}",
                                                              part)) != ids:
            raise ProofError(f"{sp['file']}: tokens {a}:{b} are not the proof's token ids")
        ds_root = merkle.root_from_path(merkle.leaf_hash(file_leaf_data(entry), algorithm), fi, n_files,
                                        _path(sp["dataset_path"], "dataset_path"), algorithm)
        if ds_root is None or ds_root != _digest_hex(mk["root"], algorithm, "merkle.root"):
            raise ProofError(f"{sp['file']}'s entry does not lead to the dataset's Merkle root {mk['root']}")
        wanted |= span_samples(entry, a, b, mk["samples"])
    if sorted(wanted) != list(proof.get("samples", [])):
        raise ProofError("the proof's sample ids are not the ones the manifest's layout gives its spans")
    if bundle is not None:  # the text -> ids link: the bundle's recorded tokenizer encodes the text as these ids
        mrel = f"{formats.DATA_DIR}/{proof['dataset']['name']}/manifest.json"
        mbytes = _bundle_bytes(Path(bundle), mrel)
        sealed(mrel, mbytes)
        manifest = json.loads(mbytes)
        tok_path, info = _tokenizer_file(Path(bundle), manifest)
        if info != t["tokenizer"]:
            raise ProofError(f"the proof names the tokenizer {t['tokenizer']}, the bundle's manifest {info}")
        if encode_text(tok_path, proof["query"]["text"]) != ids:
            raise ProofError("the recorded tokenizer does not encode the text as the proof's token ids")


def tokens_checked(proof: dict[str, Any], bundle: Path | None) -> str:
    """How a verified token-stream proof's text → tokens link stands (for the verdict line)."""
    if "spans" not in proof:
        return ""
    tk = proof["tokens"]["tokenizer"]
    return ("; the text → tokens link checked with the bundle's tokenizer" if bundle is not None else
            f"; text → tokens as claimed (tokenizer {tk['digest'][:19]}…; pass --bundle to check it)")


def _verify_order(proof: dict[str, Any], resources: dict[str, str], dataset: str, wanted: set[int],
                  sealed: Any) -> None:
    order = proof["order"]
    complete = bool(order["complete"])
    found: list[dict[str, Any]] = []
    covered = set()
    for r in order["ranks"]:
        rank = int(r["rank"])
        hdr_rel = formats.order_paths(rank)[0]
        if r["header_file"] != hdr_rel:
            raise ProofError(f"rank {rank}'s header is named {r['header_file']}")
        sealed(hdr_rel, r["header_text"].encode("utf-8"))
        header = json.loads(r["header_text"])
        version = formats.order_version(header)
        _, ids_rel, steps_rel = formats.order_paths(rank, version)
        if header.get("rank") != rank:
            raise ProofError(f"{hdr_rel} is not rank {rank}'s order")
        covered.add(rank)
        if header.get("dataset") != dataset or steps_rel not in resources:
            if "steps_b64" in r or "batches" in r:
                raise ProofError(f"rank {rank}'s order is not over dataset {dataset!r}")
            continue
        if "steps_b64" not in r:
            raise ProofError(f"rank {rank}'s order records are missing from the proof")
        if r.get("steps_file") != steps_rel or r.get("ids_file") != ids_rel:
            raise ProofError(f"rank {rank}'s order files are not {steps_rel} and {ids_rel}")
        steps_raw = _unb64(r["steps_b64"], f"rank {rank} step records")
        sealed(r["steps_file"], steps_raw)
        if complete:
            ids_raw = _unb64(r["ids_b64"], f"rank {rank} sample ids")
            sealed(r["ids_file"], ids_raw)
            steps = list(formats.decode_order(ids_raw, steps_raw, version))
            if formats.verify_order_chain(steps) is not None:
                raise ProofError(f"rank {rank}'s order chain is broken")
            for st in steps:
                found += [{"rank": rank, "step": st.step, "position": k, "sample": s}
                          for k, s in enumerate(st.sample_ids) if s in wanted]
            continue
        records = formats.decode_step_records(steps_raw)
        by_step = {rec[0]: i for i, rec in enumerate(records)}
        for step_s, ids in r["batches"].items():
            step = int(step_s)
            if step not in by_step:
                raise ProofError(f"rank {rank} has no step {step}")
            i = by_step[step]
            prev = records[i - 1][2] if i else formats.ORDER_CHAIN_SEED
            _, n, chain = records[i]
            ids_b = formats.encode_ids([int(x) for x in ids], version)
            if n != len(ids) or formats.chain_next(prev, step, ids_b, version) != chain:
                raise ProofError(f"rank {rank} step {step}: the batch in the proof is not the one recorded")
            found += [{"rank": rank, "step": step, "position": k, "sample": int(s)}
                      for k, s in enumerate(ids) if int(s) in wanted]
    missing = {int(n[len(formats.ORDER_DIR) + 5:-5]) for n in resources
               if n.startswith(f"{formats.ORDER_DIR}/rank") and n.endswith(".json")} - covered
    if missing:
        raise ProofError(f"the order of rank(s) {sorted(missing)} is not in the proof")
    found.sort(key=lambda t: (t["step"], t["rank"], t["position"]))
    claimed = sorted(proof["trained"], key=lambda t: (t["step"], t["rank"], t["position"]))
    if found != claimed:
        raise ProofError("the steps at which the record was trained are not the ones the order gives")


def _verify_absence(proof: dict[str, Any], mk: dict[str, Any], algorithm: str) -> None:
    a = proof["absent"]
    q = proof["query"]
    target = _hex(a["leaf_hash"], "absent.leaf_hash")
    if "document_sha256" not in q:
        raise ProofError("non-membership is proved for exact documents only")
    n = int(mk["sorted_leaves"])
    if int(a["sorted_leaves"]) != n:
        raise ProofError("the proof's sorted tree size is not the manifest's")
    sroot = _digest_hex(mk["sorted_root"], algorithm, "merkle.sorted_root")
    nb = a["neighbours"]
    idx = []
    for x in nb:
        h = _hex(x["leaf_hash"], "neighbour")
        got = merkle.root_from_path(merkle.leaf_hash(h, algorithm), int(x["index"]), n, _path(x["path"], "path"),
                                    algorithm)
        if got is None or got != sroot:
            raise ProofError(f"neighbour #{x['index']} is not in the dataset's sorted tree")
        idx.append((int(x["index"]), h))
    if n == 0:
        if nb or sroot != merkle.empty_root(algorithm):
            raise ProofError("an empty sorted tree has no neighbours")
    elif len(idx) == 2:
        (i, lo), (j, hi) = idx
        if j != i + 1 or not lo < target < hi:
            raise ProofError("the neighbours do not enclose the document's leaf hash")
    elif len(idx) == 1:
        (i, h), = idx
        if not ((i == 0 and target < h) or (i == n - 1 and target > h)):
            raise ProofError("the neighbour does not bound the document's leaf hash")
    else:
        raise ProofError("a non-membership proof needs one or two neighbours")
    # the leaf hash in the proof must be the document's: the verifier cannot see the document, but
    # whoever holds it checks document_sha256 (and may recompute the leaf hash with --file)


def summary(proof: dict[str, Any]) -> str:
    q = proof.get("query", {})
    what = (f"text {q['text'][:60]!r}" if "text" in q else f"sample {q['sample']}" if "sample" in q
            else f"document {q.get('document')} (sha256:{q.get('document_sha256', '')[:16]}…)")
    ds = proof.get("dataset", {}).get("name")
    root = proof.get("bundle", {}).get("root_digest")
    if proof.get("claim") == "non-membership":
        return f"{what} is NOT in dataset {ds!r} of the bundle {root}"
    if "spans" in proof:
        sp, tk = proof["spans"][0], proof["tokens"]
        more = (f" (and {tk['occurrences'] - 1} more places, {tk['in_proof'] - 1} of them in the proof)"
                if tk["occurrences"] > 1 else "")
        where = f"tokens {sp['token_start']}:{sp['token_end']} of {sp['file']}{more}"
    else:
        leaves = proof.get("leaves") or [{}]
        leaf = leaves[0]
        more = f" (and {len(leaves) - 1} more copies)" if len(leaves) > 1 else ""
        where = f"record {leaf.get('index')} of {leaf.get('file')}{more}"
    trained = proof.get("trained", [])
    record_places = len(trained)
    if "sample" in q:  # the record (a token chunk, or a text with copies) holds other samples: ID's own places
        trained = [t for t in trained if t.get("sample") == q["sample"]]
    steps = sorted({t["step"] for t in trained})
    shown = ", ".join(map(str, steps[:20])) + (", …" if len(steps) > 20 else "")
    when = (f"trained at {len(trained)} place(s), step(s) {shown}" if trained
            else "never drawn as a training sample")
    if record_places != len(trained):
        when += (f" (the record's {len(proof.get('samples') or [])} sample(s) at {record_places} place(s), "
                 "all in the proof)")
    complete = "" if proof.get("order", {}).get("complete", True) else " (steps as claimed; each one checked)"
    return f"{what} is {where} in dataset {ds!r} of the bundle {root}; {when}{complete}"
