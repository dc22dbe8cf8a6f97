"""Tensor-by-tensor comparison of two checkpoints, without pickle and without torch: the one implementation
that `prov diff` and `prov reproduce --tolerance` use.

- safetensors files: each header is read through reader's one parser, then every tensor's raw bytes once
  (numpy): float tensors (F64, F32, F16, BF16) by relative L2 distance ||a - b|| / max(||a||, 1e-30) and max
  |a - b|, every other tensor (integer RNG states, counters) exactly; a tensor only on one side, or another
  shape or dtype, is named.
- our DCP checkpoints (a folder of `__<rank>_<i>.distcp` shards): the shard files are torch-serialized (each
  tensor a `torch.save` archive whose shape and dtype are in a pickle) and `.metadata` is a pickle, so their
  tensors are NOT read here; what is compared is what the checkpoint index records without pickle: every
  tensor's global shape and dtype (the sharding facts), the per-file sha256 and size of every shard and RNG
  record, the world size and the ranks. `values_compared` is False for them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from provenance import formats, reader

_FLOATS = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
_MAX_HEADER = 100 << 20


def _header(path: Path) -> tuple[dict[str, reader.TensorInfo], int]:
    try:
        h = reader.safetensors_header(path, _MAX_HEADER)
    except reader.HeaderError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    return h.tensors, 8 + h.header_bytes


def _values(raw: bytes, dtype: str) -> Any:
    import numpy as np

    if dtype == "BF16":  # the upper half of a float32
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.frombuffer(raw, dtype=np.dtype(_FLOATS[dtype])).astype(np.float64)


def compare_safetensors(a: Path, b: Path, top: int = 5) -> dict[str, Any]:
    """Tensor by tensor (each file read once): {tensors, only_a, only_b, mismatched, exact_differ, max_rel_l2,
    max_abs, worst: the `top` tensors with the largest relative L2 (> 0), values_compared}. ValueError for a
    file that is not a readable safetensors file."""
    import numpy as np

    ha, oa = _header(a)
    hb, ob = _header(b)
    out: dict[str, Any] = {"format": "safetensors", "values_compared": True, "tensors": len(set(ha) | set(hb)),
                           "only_a": sorted(set(ha) - set(hb)), "only_b": sorted(set(hb) - set(ha)),
                           "mismatched": [], "exact_differ": [], "differ": 0, "max_rel_l2": 0.0, "max_abs": 0.0,
                           "worst": []}
    rels: list[tuple[float, str, float]] = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for name in sorted(set(ha) & set(hb), key=lambda n: ha[n].offsets[0]):  # in file order: one pass
            ta, tb = ha[name], hb[name]
            if ta.dtype != tb.dtype or ta.shape != tb.shape:
                out["mismatched"].append({"tensor": name, "a": [ta.dtype, list(ta.shape)],
                                          "b": [tb.dtype, list(tb.shape)]})
                continue
            fa.seek(oa + ta.offsets[0])
            fb.seek(ob + tb.offsets[0])
            ra, rb = fa.read(ta.offsets[1] - ta.offsets[0]), fb.read(tb.offsets[1] - tb.offsets[0])
            if ra == rb:
                continue
            out["differ"] += 1
            if ta.dtype not in _FLOATS and ta.dtype != "BF16":  # integer and byte tensors (RNG states): exact
                out["exact_differ"].append(name)
                continue
            x, y = _values(ra, ta.dtype), _values(rb, tb.dtype)
            d = x - y
            with np.errstate(all="ignore"):
                rel = float(np.linalg.norm(d) / max(float(np.linalg.norm(x)), 1e-30))
                mx = float(np.max(np.abs(d))) if d.size else 0.0
            rels.append((rel if math.isfinite(rel) else math.inf, name, mx if math.isfinite(mx) else math.inf))
    rels.sort(reverse=True)
    if rels:
        out["max_rel_l2"] = rels[0][0]
        out["max_abs"] = max(r[2] for r in rels)
    out["worst"] = [{"tensor": n, "rel_l2": r, "max_abs": m} for r, n, m in rels[:top] if r > 0]
    return out


def compare_dcp(a_entry: dict[str, Any], b_entry: dict[str, Any]) -> dict[str, Any]:
    """Two DCP checkpoints from their index entries (no pickle is read): tensor shapes and dtypes from the
    sharding facts, per-file sha256 (the shards and RNG records), world size. Values are not compared."""
    ta = ((a_entry.get("sharding") or {}).get("tensors") or {})
    tb = ((b_entry.get("sharding") or {}).get("tensors") or {})
    mismatched = [{"tensor": n, "a": [ta[n].get("dtype"), ta[n].get("shape")],
                   "b": [tb[n].get("dtype"), tb[n].get("shape")]}
                  for n in sorted(set(ta) & set(tb))
                  if (ta[n].get("dtype"), ta[n].get("shape")) != (tb[n].get("dtype"), tb[n].get("shape"))]

    def files(e: dict[str, Any]) -> dict[str, str]:
        return {str(f.get("path", "")).rsplit("/", 1)[-1]: str(f.get("sha256")) for f in e.get("files") or []
                if isinstance(f, dict) and not str(f.get("path", "")).endswith("/" + formats.DCP_METADATA)}

    fa, fb = files(a_entry), files(b_entry)
    return {"format": "dcp", "values_compared": False,
            "why": "DCP shard files are torch-serialized (shape and dtype in a pickle): tensors are not read "
                   "without unpickling; compared: shapes and dtypes from the index, per-file sha256",
            "tensors": len(set(ta) | set(tb)), "only_a": sorted(set(ta) - set(tb)), "only_b": sorted(set(tb) - set(ta)),
            "mismatched": mismatched, "exact_differ": [], "differ": None, "max_rel_l2": None, "max_abs": None,
            "worst": [], "world_size": [a_entry.get("world_size"), b_entry.get("world_size")],
            "files_differ": sorted(n for n in set(fa) & set(fb) if fa[n] != fb[n]),
            "files_only_a": sorted(set(fa) - set(fb)), "files_only_b": sorted(set(fb) - set(fa))}


def compare_entries(a_root: Path, a_entry: dict[str, Any], b_root: Path, b_entry: dict[str, Any],
                    top: int = 5) -> dict[str, Any]:
    """Two checkpoint index entries (checkpoints/index.json) of two bundles, compared tensor by tensor.
    Never raises for a bad file: {"error": ...} says what could not be read."""
    fa, fb = a_entry.get("format"), b_entry.get("format")
    try:
        if fa == formats.DCP_FORMAT and fb == formats.DCP_FORMAT:
            return compare_dcp(a_entry, b_entry)
        if fa == formats.DCP_FORMAT or fb == formats.DCP_FORMAT:
            return {"format": f"{fa or 'safetensors'} / {fb or 'safetensors'}", "values_compared": False,
                    "error": "one checkpoint is sharded (DCP), the other is not: not compared tensor by tensor"}
        outside = [s for s, e in (("A", a_entry), ("B", b_entry)) if e.get("in_bundle") is False]
        if outside:  # a captured command's file: `path` is relative to its working folder, not the bundle
            return {"format": "safetensors", "values_compared": False,
                    "error": f"the checkpoint of {' and '.join(outside)} is outside its bundle (a file the "
                             "command saved: only its digest is recorded)"}
        pa, pb = _inside(a_root, a_entry.get("path")), _inside(b_root, b_entry.get("path"))
        return compare_safetensors(pa, pb, top)
    except (OSError, ValueError) as exc:
        return {"format": "safetensors", "values_compared": False, "error": str(exc)}


def _inside(root: Path, rel: Any) -> Path:
    if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in Path(rel).parts:
        raise ValueError(f"checkpoint path {rel!r} is not a path inside the bundle")
    return root / rel


def within(cmp: dict[str, Any], bound: float) -> bool:
    """Every float tensor's relative L2 ≤ bound, every other tensor equal, the same tensor set, shapes and dtypes.
    A comparison that could not read values (DCP, an error) is never within a bound."""
    return (cmp.get("values_compared", False) and not cmp.get("error") and not cmp["only_a"] and not cmp["only_b"]
            and not cmp["mismatched"] and not cmp["exact_differ"] and cmp["max_rel_l2"] <= bound)


def summary_line(cmp: dict[str, Any]) -> str:
    """One line: what differs between the two checkpoints' tensors."""
    if cmp.get("error"):
        return f"not compared tensor by tensor: {cmp['error']}"
    parts = []
    if cmp.get("values_compared"):
        parts.append(f"{cmp['differ']} of {cmp['tensors']} tensors differ, max relative L2 {cmp['max_rel_l2']:.3g}, "
                     f"max |Δ| {cmp['max_abs']:.3g}")
        if cmp["worst"]:
            parts.append("most: " + ", ".join(f"{w['tensor']} ({w['rel_l2']:.3g})" for w in cmp["worst"][:3]))
    else:
        n = len(cmp.get("files_differ") or [])
        parts.append(f"DCP: values not read (torch-serialized shards); {n} shard/RNG files differ by sha256")
    if cmp["mismatched"]:
        parts.append("shape/dtype differ: " + ", ".join(
            f"{m['tensor']} {m['a'][0]}{m['a'][1]} → {m['b'][0]}{m['b'][1]}" for m in cmp["mismatched"][:5]))
    if cmp["only_a"]:
        parts.append("only in A: " + ", ".join(cmp["only_a"][:5]))
    if cmp["only_b"]:
        parts.append("only in B: " + ", ".join(cmp["only_b"][:5]))
    if cmp["exact_differ"]:
        parts.append("exact tensors differ: " + ", ".join(cmp["exact_differ"][:5]))
    return "; ".join(parts)
