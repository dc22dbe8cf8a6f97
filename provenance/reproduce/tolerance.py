"""Tolerances (`--tolerance auto|bitwise|loss=<rel>,ckpt=<rel>`): when a reproduction that is not bitwise
still reproduces, within stated bounds, and the tensor-level comparison of checkpoints it needs.

The data order is always compared exactly: a different batch is never within tolerance. Losses are
compared per step by relative difference |a - b| / max(|a|, 1e-12); checkpoints tensor by tensor
(read from the safetensors files without pickle): the model and optimizer tensors by relative L2
distance ||a - b|| / max(||a||, 1e-30), every other tensor (RNG states) exactly, and a tensor set,
shape or dtype that differs is out of bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provenance import reader
from provenance.reproduce.options import Refused

# auto's bounds where the environment differs (another thread count, CPU, BLAS...): float32 noise that
# stays small; documented in docs/reproduce.md. Not calibrated on this machine (no --calibrate yet).
AUTO_LOSS_REL = 1e-3
AUTO_CKPT_REL = 1e-3
_DTYPES = {"F64": ("d", 8), "F32": ("f", 4), "F16": ("e", 2)}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class Tolerance:
    mode: str  # "bitwise" | "bounds"
    loss_rel: float | None = None
    ckpt_rel: float | None = None
    asked: str = "auto"  # what --tolerance said
    why: str = ""  # how auto chose

    def to_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "mode": self.mode, "loss_rel": self.loss_rel, "ckpt_rel": self.ckpt_rel,
                "why": self.why}

    def text(self) -> str:
        if self.mode == "bitwise":
            return "bitwise"
        return f"loss relative difference ≤ {self.loss_rel:g}, checkpoint tensors' relative L2 ≤ {self.ckpt_rel:g}"


def parse_tolerance(text: str) -> str | tuple[float, float]:
    """'auto', 'bitwise', or (loss_rel, ckpt_rel) from 'loss=<rel>,ckpt=<rel>'; Refused otherwise."""
    t = text.strip()
    if t in ("auto", "bitwise"):
        return t
    got: dict[str, float] = {}
    for part in t.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("loss", "ckpt") or key in got:
            raise Refused(f"--tolerance {text!r}: expected auto, bitwise or loss=<rel>,ckpt=<rel>")
        try:
            v = float(value)
        except ValueError:
            raise Refused(f"--tolerance {text!r}: {key}={value!r} is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise Refused(f"--tolerance {text!r}: {key} must be a finite number ≥ 0")
        got[key] = v
    if set(got) != {"loss", "ckpt"}:
        raise Refused(f"--tolerance {text!r}: give both loss=<rel> and ckpt=<rel>")
    return got["loss"], got["ckpt"]


def resolve(asked: str, environment_differs: list[str]) -> Tolerance:
    """The tolerance used: auto is bitwise where nothing in the environment differs (same hardware and
    software, the recorded thread count), and the auto bounds otherwise."""
    parsed = parse_tolerance(asked)
    if parsed == "bitwise":
        return Tolerance("bitwise", asked=asked, why="asked for")
    if parsed == "auto":
        if not environment_differs:
            return Tolerance("bitwise", asked=asked, why="the same environment as recorded: bitwise is expected")
        return Tolerance("bounds", AUTO_LOSS_REL, AUTO_CKPT_REL, asked=asked,
                         why="the environment differs (" + "; ".join(environment_differs[:3])
                         + (f" and {len(environment_differs) - 3} more" if len(environment_differs) > 3 else "")
                         + "): auto bounds")
    loss, ckpt = parsed  # type: ignore[misc]
    return Tolerance("bounds", loss, ckpt, asked=asked, why="asked for")


def loss_rel(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return 0.0 if a == b else math.inf
    return abs(a - b) / max(abs(a), 1e-12)


# --- tensors of a safetensors checkpoint, without pickle and without torch ---------------------------


def _header(path: Path) -> tuple[dict[str, Any], int]:
    """{tensor: {dtype, shape, data_offsets}} and where the data section starts, via the reader's one parser."""
    try:
        h = reader.safetensors_header(path, _MAX_HEADER)
    except reader.HeaderError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    tensors = {name: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": list(t.offsets)}
               for name, t in h.tensors.items()}
    return tensors, 8 + h.header_bytes


def compare_checkpoints(a: Path, b: Path, top: int = 5) -> dict[str, Any]:
    """Tensor by tensor: per-tensor relative L2 distance (float tensors) or exact equality (others),
    the tensors that differ most, and tensor-set, shape and dtype mismatches."""
    import numpy as np

    ha, oa = _header(a)
    hb, ob = _header(b)
    out: dict[str, Any] = {"tensors": len(set(ha) | set(hb)), "only_a": sorted(set(ha) - set(hb)),
                           "only_b": sorted(set(hb) - set(ha)), "mismatched": [], "exact_differ": [],
                           "max_rel_l2": 0.0, "max_abs": 0.0, "worst": []}
    rels: list[tuple[float, str, float]] = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for name in sorted(set(ha) & set(hb)):
            ta, tb = ha[name], hb[name]
            if ta.get("dtype") != tb.get("dtype") or ta.get("shape") != tb.get("shape"):
                out["mismatched"].append({"tensor": name, "a": [ta.get("dtype"), ta.get("shape")],
                                          "b": [tb.get("dtype"), tb.get("shape")]})
                continue
            (sa, ea), (sb, eb) = ta["data_offsets"], tb["data_offsets"]
            fa.seek(oa + int(sa))
            fb.seek(ob + int(sb))
            ra, rb = fa.read(int(ea) - int(sa)), fb.read(int(eb) - int(sb))
            if ra == rb:
                rels.append((0.0, name, 0.0))
                continue
            dtype = str(ta.get("dtype"))
            if dtype == "BF16":  # the upper half of a float32
                x = (np.frombuffer(ra, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
                y = (np.frombuffer(rb, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
            elif dtype in _DTYPES:
                x = np.frombuffer(ra, dtype=np.dtype("<" + _DTYPES[dtype][0])).astype(np.float64)
                y = np.frombuffer(rb, dtype=np.dtype("<" + _DTYPES[dtype][0])).astype(np.float64)
            else:  # integer and byte tensors (RNG states, counters): exact
                out["exact_differ"].append(name)
                continue
            d = x - y
            rel = float(np.linalg.norm(d) / max(float(np.linalg.norm(x)), 1e-30))
            mx = float(np.max(np.abs(d))) if d.size else 0.0
            rels.append((rel if math.isfinite(rel) else math.inf, name, mx))
    rels.sort(reverse=True)
    if rels:
        out["max_rel_l2"] = rels[0][0]
        out["max_abs"] = max(r[2] for r in rels)
    out["worst"] = [{"tensor": n, "rel_l2": r, "max_abs": m} for r, n, m in rels[:top] if r > 0]
    return out


def checkpoint_within(cmp: dict[str, Any], bound: float) -> bool:
    return (not cmp["only_a"] and not cmp["only_b"] and not cmp["mismatched"] and not cmp["exact_differ"]
            and cmp["max_rel_l2"] <= bound)


# --- the bounds: which step is the first out of them -------------------------------------------------


def check_bounds(orig_root: Path, orig_checkpoints: dict[int, str], repro: Path, first_step: int, last_step: int,
                 tol: Tolerance) -> dict[str, Any]:
    """Every step of [first_step, last_step] against `tol`: the batch exactly, the loss and every checkpoint
    within bounds. Returns {"first_out": the first divergence out of bounds (provenance.replay's
    definition) or None, "max_loss_rel", "max_loss_rel_step", "checkpoints": [per checkpoint comparison]}."""
    from provenance import formats, reader
    from provenance.diff import checkpoint_digests
    from provenance.replay import STEPS_LOG, first_divergence

    assert tol.loss_rel is not None and tol.ckpt_rel is not None
    try:  # both bundles read through the one reader (bounded; strict JSON lines, a torn last line skipped)
        with reader.Bundle(orig_root) as bo, reader.Bundle(repro) as br:
            steps_log, metrics_a, metrics_b = br.records(STEPS_LOG), bo.records(formats.METRICS), \
                br.records(formats.METRICS)
            oa = {s.step: s.sample_ids for s in bo.order(0)}
            ob = {s.step: s.sample_ids for s in br.order(0)}
            ours = checkpoint_digests(repro, br)
    except (reader.Refused, reader.BundleFileError) as exc:
        raise formats.FormatError(str(exc)) from None
    found: list[dict[str, Any] | None] = []
    for r in steps_log:
        if isinstance(r.get("step"), int) and r.get("order") in ("differs", "not recorded"):
            found.append({"step": r["step"], "kind": "order", "detail": "the batch differs (order is always "
                          "compared exactly: a different batch is never within tolerance)"})
            break
    bad_order = [s for s in sorted(set(oa) & set(ob)) if first_step <= s <= last_step and oa[s] != ob[s]]
    if bad_order:
        found.append({"step": bad_order[0], "kind": "order", "detail": "the batch differs (order is always compared "
                      "exactly)"})
    ma = {r["step"]: r.get("loss") for r in metrics_a if isinstance(r.get("step"), int)}
    mb = {r["step"]: r.get("loss") for r in metrics_b if isinstance(r.get("step"), int)}
    max_rel, max_step = 0.0, None
    for s in sorted(set(ma) & set(mb)):
        a, b = ma[s], mb[s]
        if not (first_step <= s <= last_step) or not isinstance(a, float) or not isinstance(b, float):
            continue
        rel = loss_rel(a, b)
        if rel > max_rel:
            max_rel, max_step = rel, s
        if rel > tol.loss_rel:
            found.append({"step": s, "kind": "loss", "loss_recorded": a, "loss": b, "abs_diff": abs(a - b),
                          "rel_diff": rel, "bound": tol.loss_rel})
            break
    ckpts: list[dict[str, Any]] = []
    for s in sorted(orig_checkpoints):
        if not first_step <= s <= last_step:
            continue
        if s not in ours:
            found.append({"step": s, "kind": "checkpoint missing"})
            break
        entry: dict[str, Any] = {"step": s, "same_digest": ours[s] == orig_checkpoints[s]}
        if not entry["same_digest"]:
            cmp = compare_checkpoints(orig_root / formats.checkpoint_name(s), repro / formats.checkpoint_name(s))
            entry.update(cmp)
            if not checkpoint_within(cmp, tol.ckpt_rel):
                found.append({"step": s, "kind": "checkpoint", "rel_l2": cmp["max_rel_l2"], "bound": tol.ckpt_rel,
                              "worst": cmp["worst"][:3], "mismatched": cmp["mismatched"][:3],
                              "only_a": cmp["only_a"][:3], "only_b": cmp["only_b"][:3],
                              "exact_differ": cmp["exact_differ"][:3]})
                ckpts.append(entry)
                break
        ckpts.append(entry)
    return {"first_out": first_divergence(found), "max_loss_rel": max_rel, "max_loss_rel_step": max_step,
            "max_ckpt_rel_l2": max((c.get("max_rel_l2", 0.0) for c in ckpts), default=0.0), "checkpoints": ckpts}


def out_of_bounds_text(first: dict[str, Any]) -> str:
    k, s = first.get("kind"), first.get("step")
    if k == "loss":
        return (f"the loss of step {s} is out of tolerance: {first['loss_recorded']!r} recorded, {first['loss']!r} now "
                f"(relative difference {first['rel_diff']:.3g} > {first['bound']:g})")
    if k == "checkpoint":
        what = []
        if first.get("mismatched"):
            what.append("tensor shapes or dtypes differ: " + ", ".join(m["tensor"] for m in first["mismatched"]))
        if first.get("only_a") or first.get("only_b"):
            what.append("the tensor sets differ: " + ", ".join([*first.get("only_a", []), *first.get("only_b", [])]))
        if first.get("exact_differ"):
            what.append("exact tensors differ: " + ", ".join(first["exact_differ"]))
        if not what:
            worst = first.get("worst") or [{}]
            what.append(f"relative L2 {first['rel_l2']:.3g} > {first['bound']:g} (most: {worst[0].get('tensor')})")
        return f"the checkpoint of step {s} is out of tolerance: " + "; ".join(what)
    if k == "checkpoint missing":
        return f"the original saved a checkpoint at step {s}; the reproduction did not"
    return f"the batch of step {s} differs (order is always compared exactly)"
