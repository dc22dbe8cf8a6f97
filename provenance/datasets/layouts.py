"""Dataset layouts: what a sample id means and which bytes it resolves to.

The layout is recorded in the data manifest (`layout`; a manifest without one is `lines`):

* ``lines`` (the default, as before): a sample id is the 0-based line number of
  `samples.file` (one JSON or text record a line);
* ``documents``: `.jsonl`, `.jsonl.gz`, `.jsonl.zst` shards; a sample id is the global index
  of a document across the shards in sorted order (each shard's record count is in its entry);
* ``token-stream``: flat little-endian `uint16`/`uint32` token files (`.bin` or `.npy`), in
  sorted order; with ``sample: window`` a sample id is a global window index (window k of a
  file is tokens [k*window, (k+1)*window), windows never cross files); with ``sample: offset``
  it is a global token offset (tokens [offset, offset+window), inside one file), as a
  random-offset sampler (nanoGPT's) draws them.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_right
from pathlib import Path
from typing import Any

from provenance import formats, reader
from provenance.datasets.files import data_file_candidates
from provenance.datasets.scan import TOKEN_DTYPES, ScanError, iter_records, leaf_span

LAYOUTS = ("lines", "documents", "token-stream")
DOC_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
TOKEN_SUFFIXES = (".bin", ".npy")


class LayoutError(ValueError):
    """A sample id or a layout is wrong; the message names the id, file or field."""


LAYOUT_SYNTAX = ("lines | documents[:column=NAME] | token-stream:DTYPE:WINDOW[:SAMPLE[:CHUNK]] "
                 "(DTYPE uint16|uint32, SAMPLE window|offset; fields also as key=value)")
_TOKEN_FIELDS = ("dtype", "window", "sample", "chunk")


def parse_layout(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """A layout declared as a string (`prov run --data-layout`, `prov data manifest --layout`):
    (the layout a DatasetSpec takes, None for `lines`; the parquet text column of `documents`, or None).

        lines                                  the default: a sample id is a line number
        documents | documents:column=body      a global document index across sorted shards
        token-stream:uint16:1024               dtype, window (tokens a sample), sample (window|offset)
        token-stream:uint32:2048:offset:8192   ... and chunk (tokens a Merkle leaf, default 4096)
        token-stream:window=1024:sample=offset the same fields by name (dtype defaults to uint16)

    The dict is what a config declares (DatasetSpec.layout): {"type": "token-stream", "dtype": ...,
    "window": ..., "sample": ...} (and "chunk" when given). Raises LayoutError naming the bad field."""
    kind, *fields = str(text).strip().split(":")
    if kind not in LAYOUTS:
        raise LayoutError(f"unknown layout {kind!r} in {text!r}: {LAYOUT_SYNTAX}")
    named: dict[str, str] = {}
    positional: list[str] = []
    for f in fields:
        key, eq, value = f.partition("=")
        if eq:
            if not key or not value or key in named:
                raise LayoutError(f"layout {text!r}: bad or repeated field {f!r}")
            named[key] = value
        elif named:
            raise LayoutError(f"layout {text!r}: positional field {f!r} after a key=value field")
        elif f:
            positional.append(f)
        else:
            raise LayoutError(f"layout {text!r}: empty field")
    if kind == "lines":
        if fields:
            raise LayoutError(f"layout {text!r}: lines takes no fields")
        return None, None
    if kind == "documents":
        if positional or set(named) - {"column"}:
            raise LayoutError(f"layout {text!r}: documents takes only column=NAME (the parquet text column)")
        return {"type": "documents"}, named.get("column")
    if len(positional) > len(_TOKEN_FIELDS):
        raise LayoutError(f"layout {text!r}: too many fields (token-stream:DTYPE:WINDOW[:SAMPLE[:CHUNK]])")
    values = dict(zip(_TOKEN_FIELDS, positional, strict=False))
    for key, value in named.items():
        if key not in _TOKEN_FIELDS:
            raise LayoutError(f"layout {text!r}: unknown field {key!r} (one of {', '.join(_TOKEN_FIELDS)})")
        if key in values:
            raise LayoutError(f"layout {text!r}: field {key!r} given twice")
        values[key] = value
    dtype = values.get("dtype", "uint16")
    if dtype not in TOKEN_DTYPES:
        raise LayoutError(f"layout {text!r}: dtype must be uint16 or uint32, not {dtype!r}")
    sample = values.get("sample", "window")
    if sample not in ("window", "offset"):
        raise LayoutError(f"layout {text!r}: sample must be window or offset, not {sample!r}")
    out: dict[str, Any] = {"type": "token-stream", "dtype": dtype}
    for key in ("window", "chunk"):
        if key not in values:
            if key == "window":
                raise LayoutError(f"layout {text!r}: token-stream needs a window (tokens a sample), "
                                  "e.g. token-stream:uint16:1024")
            continue
        try:
            n = int(values[key])
        except ValueError:
            n = 0
        if n <= 0 or not values[key].isdigit():
            raise LayoutError(f"layout {text!r}: {key} must be a positive integer, not {values[key]!r}")
        out[key] = n
    out["sample"] = sample
    return {k: out[k] for k in ("type", "dtype", "window", "sample", "chunk") if k in out}, None


def layout_of(manifest: dict[str, Any]) -> dict[str, Any]:
    lay = manifest.get("layout")
    if lay is None:
        s = manifest.get("samples") or {}
        return {"type": "lines", "file": s.get("file"), "count": s.get("count")}
    if not isinstance(lay, dict) or lay.get("type") not in LAYOUTS:
        raise LayoutError(f"dataset '{manifest.get('name')}': unknown layout {lay!r} (one of {', '.join(LAYOUTS)})")
    return lay


def describe(layout: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
    """The `layout` record of a manifest, from the declared layout and the files' entries."""
    kind = layout.get("type")
    if kind == "documents":
        shards = sorted(e["path"] for e in files if e["path"].endswith(DOC_SUFFIXES))
        counts = {e["path"]: e.get("records", 0) for e in files}
        return {"type": "documents", "shards": shards, "count": sum(counts[s] for s in shards),
                "id": "global 0-based document index across the shards in this order"}
    if kind == "token-stream":
        dtype, window = layout.get("dtype", "uint16"), int(layout.get("window", 0))
        if dtype not in TOKEN_DTYPES or window <= 0:
            raise LayoutError(f"token-stream layout: dtype must be uint16 or uint32 and window positive "
                              f"(got {dtype!r}, {window})")
        sample = layout.get("sample", "window")
        if sample not in ("window", "offset"):
            raise LayoutError(f"token-stream layout: sample must be 'window' or 'offset', not {sample!r}")
        shards = sorted(e["path"] for e in files if e["path"].endswith(TOKEN_SUFFIXES))
        tokens = {e["path"]: e.get("tokens", 0) for e in files}
        count = sum(tokens[s] // window if sample == "window" else max(0, tokens[s] - window + 1) for s in shards)
        return {"type": "token-stream", "dtype": dtype, "window": window, "sample": sample, "shards": shards,
                "tokens": sum(tokens[s] for s in shards), "count": count,
                "id": ("global window index (windows never cross files)" if sample == "window"
                       else "global token offset of the window's first token")}
    raise LayoutError(f"unknown layout {kind!r} (documents or token-stream; lines needs none)")


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is inconsistent in a manifest's layout record (None when it agrees with the files' entries)."""
    try:
        lay = layout_of(manifest)
        if lay["type"] == "lines":
            return None
        want = describe(lay, manifest.get("files", []))
    except (LayoutError, KeyError, TypeError, ValueError) as exc:
        return f"layout: {exc}"
    for key in ("shards", "count"):
        if lay.get(key) != want[key]:
            return f"layout.{key} is {lay.get(key)!r}, the files' entries give {want[key]!r}"
    samples = manifest.get("samples") or {}
    if samples.get("count") != want["count"]:
        return f"samples.count is {samples.get('count')!r}, the layout gives {want['count']}"
    return None


def _entries(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["path"]: e for e in manifest.get("files", [])}


def _per_shard(manifest: dict[str, Any], lay: dict[str, Any]) -> list[tuple[str, int]]:
    entries = _entries(manifest)
    out = []
    for s in lay["shards"]:
        e = entries[s]
        if lay["type"] == "documents":
            out.append((s, int(e.get("records", 0))))
        else:
            t, w = int(e.get("tokens", 0)), int(lay["window"])
            out.append((s, t // w if lay["sample"] == "window" else max(0, t - w + 1)))
    return out


def locate(manifest: dict[str, Any], sample: int) -> dict[str, Any]:
    """Where sample `sample` is: {file, kind: 'record'|'tokens', index | token range}."""
    lay = layout_of(manifest)
    name = manifest.get("name")
    count = lay.get("count")
    if not isinstance(sample, int) or sample < 0:
        raise LayoutError(f"dataset '{name}': sample id {sample} is not a sample id (ids count from 0)")
    if isinstance(count, int) and sample >= count:
        raise LayoutError(f"dataset '{name}': sample id {sample} is past the end ({count} samples)")
    if lay["type"] == "lines":
        if not lay.get("file"):
            raise LayoutError(f"dataset '{name}': the manifest names no samples file")
        return {"file": lay["file"], "kind": "record", "index": sample}
    shards = _per_shard(manifest, lay)
    starts, total = [], 0
    for _, n in shards:
        starts.append(total)
        total += n
    i = bisect_right(starts, sample) - 1
    while i > 0 and shards[i][1] == 0:
        i -= 1
    file, local = shards[i][0], sample - starts[i]
    if lay["type"] == "documents":
        return {"file": file, "kind": "record", "index": local}
    w = int(lay["window"])
    first = local * w if lay["sample"] == "window" else local
    return {"file": file, "kind": "tokens", "token_start": first, "token_end": first + w}


def locate_sample(manifest: dict[str, Any], sample: int) -> tuple[str, int]:
    """(file, leaf index) holding a sample: its record, or the token chunk of its first token."""
    loc = locate(manifest, sample)
    if loc["kind"] == "record":
        return loc["file"], loc["index"]
    entry = _entries(manifest)[loc["file"]]
    chunk = int(entry["leaf"].rsplit(":", 1)[1])
    return loc["file"], loc["token_start"] // chunk


def assign_samples(lay: dict[str, Any], files: list[dict[str, Any]]) -> None:
    """Give each shard's entry its first sample id and its number of samples (committed in its leaf)."""
    by_path = {e["path"]: e for e in files}
    start = 0
    for s in lay["shards"]:
        e = by_path[s]
        if lay["type"] == "documents":
            n = int(e.get("records", 0))
        else:
            t, w = int(e.get("tokens", 0)), int(lay["window"])
            n = t // w if lay["sample"] == "window" else max(0, t - w + 1)
        e["first_sample"], e["samples"] = start, n
        start += n


def leaf_samples(entry: dict[str, Any], index: int, samples: dict[str, Any]) -> set[int]:
    """The sample ids whose bytes are leaf `index` of the file `entry` describes, from what the dataset's
    commitment and the file's leaf commit to. Records (lines, documents): the record's own id. Token
    chunks (window ids): the windows that start in the chunk. Offset ids: none (any offset would do)."""
    if not isinstance(entry.get("first_sample"), int) or not isinstance(entry.get("samples"), int):
        return set()
    first, n = entry["first_sample"], entry["samples"]
    scheme = str(entry.get("leaf", ""))
    if scheme == "lines" or scheme.startswith("records:"):
        return {first + index} if 0 <= index < n else set()
    if scheme.startswith("tokens:") and samples.get("sample") == "window":
        chunk, w = int(scheme.rsplit(":", 1)[1]), int(samples["window"])
        lo, hi = index * chunk, (index + 1) * chunk
        return {first + k for k in range(-(-lo // w), min(n, -(-hi // w)))}
    return set()


def samples_of_leaf(manifest: dict[str, Any], file: str, index: int) -> set[int]:
    """leaf_samples for a file of a manifest."""
    from provenance.capture.data import commitment

    entry = _entries(manifest).get(file)
    c = commitment(manifest)
    if entry is None or c is None:
        return set()
    return leaf_samples(entry, index, c["samples"])


def sample_bytes(manifest: dict[str, Any], root: Path, sample: int) -> bytes:
    """The bytes of one sample: its record (decompressed), or its window's tokens (little-endian)."""
    loc = locate(manifest, sample)
    entry = _entries(manifest)[loc["file"]]
    path = Path(root) / loc["file"]
    if loc["kind"] == "record":
        for i, rec in enumerate(iter_records(path, entry.get("leaf", "lines"))):
            if i == loc["index"]:
                return rec
        raise LayoutError(f"{loc['file']}: has no record {loc['index']} (sample {sample})")
    width = TOKEN_DTYPES[layout_of(manifest)["dtype"]]
    skip = leaf_span(path, entry["leaf"], 0)[0]
    a, b = loc["token_start"], loc["token_end"]
    with open(path, "rb") as f:
        f.seek(skip + a * width)
        data = f.read((b - a) * width)
    if len(data) != (b - a) * width:
        raise LayoutError(f"{loc['file']}: ends before token {b} (sample {sample})")
    return data


# --- resolving a step of a bundle -----------------------------------------------------------
def _data_path(bundle: Path, manifest: dict[str, Any], rel: str, data_root: str | None) -> Path:
    found, cands = data_file_candidates(bundle, manifest, rel, data_root)
    if found is not None:
        return found
    raise LayoutError(f"dataset '{manifest.get('name')}': file {rel} is not in the bundle nor at "
                      f"{cands[-1] if cands else 'a recorded path'} (pass --data-root)")


def _records_with_offsets(path: Path, scheme: str, wanted: set[int]) -> dict[int, tuple[int, int, bytes]]:
    """{index: (start, end, bytes)} of wanted records; offsets are in the file for plain lines,
    in the decompressed stream for compressed shards."""
    out: dict[int, tuple[int, int, bytes]] = {}
    pos = 0
    top = max(wanted) if wanted else -1
    try:
        for i, rec in enumerate(iter_records(path, scheme)):
            if i in wanted:
                out[i] = (pos, pos + len(rec), rec)
            pos += len(rec) + 1
            if i >= top:
                break
    except ScanError as exc:
        raise LayoutError(str(exc)) from None
    return out


def resolve_step(bundle: Path, step: int, rank: int | None = None,
                 data_root: str | None = None) -> list[dict[str, Any]]:
    """For each sample of `step` (each rank, or one): file, range, sha256 of its bytes, text."""
    bundle = Path(bundle)
    ranks = sorted(int(p.name[4:-5]) for p in (bundle / formats.ORDER_DIR).glob("rank*.json")
                   if p.name[4:-5].isdigit())
    if rank is not None:
        ranks = [r for r in ranks if r == rank]
    if not ranks:
        raise LayoutError(f"{bundle}: no data order" + (f" for rank {rank}" if rank is not None else ""))
    rows: list[dict[str, Any]] = []
    found_step = False
    for r in ranks:
        hdr_rel, ids_rel, steps_rel, _ = formats.order_files(bundle, r)
        try:  # through reader.Bundle: bounded, never a link
            files = reader.Bundle.of_files(bundle, [hdr_rel, ids_rel, steps_rel])
            header = files.json(hdr_rel)
            formats.order_version(header)
            ids = next((st.sample_ids for st in files.order(r) if st.step == step), None)
        except reader.BundleFileError as exc:
            raise LayoutError(str(exc)) from None
        if ids is None:
            continue
        found_step = True
        dataset = header.get("dataset")
        mpath = bundle / formats.DATA_DIR / str(dataset) / "manifest.json"
        if not dataset or not mpath.is_file():
            raise LayoutError(f"{hdr_rel}: names dataset {dataset!r}, which has no manifest in the bundle")
        try:
            manifest = reader.Bundle.of_files(bundle, [mpath.relative_to(bundle).as_posix()]).json(
                mpath.relative_to(bundle).as_posix())
        except reader.BundleFileError as exc:
            raise LayoutError(str(exc)) from None
        entries = _entries(manifest)
        locs = [locate(manifest, s) for s in ids]
        by_file: dict[str, set[int]] = {}
        for loc in locs:
            if loc["kind"] == "record":
                by_file.setdefault(loc["file"], set()).add(loc["index"])
        recs = {f: _records_with_offsets(_data_path(bundle, manifest, f, data_root), entries[f].get("leaf", "lines"),
                                         wanted) for f, wanted in by_file.items()}
        lay = layout_of(manifest)
        for k, (s, loc) in enumerate(zip(ids, locs, strict=True)):
            row: dict[str, Any] = {"rank": r, "step": step, "position": k, "sample": s, "file": loc["file"]}
            if loc["kind"] == "record":
                rec = recs[loc["file"]].get(loc["index"])
                if rec is None:
                    raise LayoutError(f"{loc['file']}: has no record {loc['index']} (sample {s})")
                start, end, data = rec
                row["record"] = loc["index"]
                unit = "bytes" if entries[loc["file"]].get("leaf", "lines") == "lines" else "decompressed bytes"
                row["range"] = f"{unit} {start}:{end}"
                row["digest"] = formats.digest_str(hashlib.sha256(data).hexdigest())
                from provenance.datasets.proofs import record_text

                row["text"] = record_text(data)
            else:
                path = _data_path(bundle, manifest, loc["file"], data_root)
                width = TOKEN_DTYPES[lay["dtype"]]
                skip = leaf_span(path, entries[loc["file"]]["leaf"], 0)[0]
                a, b = loc["token_start"], loc["token_end"]
                with open(path, "rb") as f:
                    f.seek(skip + a * width)
                    data = f.read((b - a) * width)
                if len(data) != (b - a) * width:
                    raise LayoutError(f"{loc['file']}: ends before token {b} (sample {s})")
                row["range"] = f"tokens {a}:{b} (bytes {skip + a * width}:{skip + b * width})"
                row["digest"] = formats.digest_str(hashlib.sha256(data).hexdigest())
                row["tokens"] = list(struct.unpack(f"<{b - a}{'H' if width == 2 else 'I'}", data))
            rows.append(row)
    if not found_step:
        raise LayoutError(f"{bundle}: step {step} is not in the data order")
    return rows
