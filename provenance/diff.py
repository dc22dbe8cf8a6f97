"""What differs between two bundles (or a bundle and its reproduction): the engine of `prov diff`.

    d = diff_bundles("runs/A", "runs/B")     # a JSON-able dict, section by section
    print(format_diff(d))                    # the same, readable in a terminal

Sections: run (identity, seed, status), config (dotted keys), code (files by sha256
from code/code.json), data (every dataset's files by sha256; the first differing
record when both bundles carry the file), environment (python, packages, torch,
thread count, hardware; environment variables for information), metrics (the
first step where the loss differs and the largest difference; the other logged
values; evaluations), order (the first step whose batch differs), checkpoints
(sha256 by step) and the final model.

`diff_bundles(a, b, verify=True)` first checks each bundle's seal with the audit's integrity
engine (provenance.audit.integrity: every file hashed against manifest.json, no file the seal
does not list) and records the outcome as `integrity` (one record a side, `integrity_record`);
without `verify` the records say "not verified" and nothing is hashed. The sections themselves
never trust a bundle: reading is bounded by the format limits of provenance.formats.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import struct
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path, PurePath
from typing import IO, Any

from provenance import formats, reader
from provenance.audit.view import Progress
from provenance.replay import STEPS_LOG, first_divergence

# metric keys that measure time, not computation: never compared
TIMING_KEYS = frozenset({"step", "time", "step_time"})
# torch facts compared as environment (thread counts are compared apart)
TORCH_KEYS = ("version", "cuda_available", "cuda_version", "cudnn_version", "driver", "gpus", "mkldnn",
              "float32_matmul_precision", "deterministic_algorithms", "deterministic_warn_only",
              "fill_uninitialized_memory", "cudnn_deterministic", "cudnn_benchmark")
# what decides the numbers (capture/env.py numerics_facts), compared only where both sides recorded them
TORCH_NUMERICS_KEYS = ("cpu_capability", "blas", "mkl_available", "openmp_available", "cuda_math")
# where a dataset was on the machine that ran, and how it got there: not a difference of the data
SOURCE_PLACE_KEYS = frozenset({"local_path", "path", "fetched"})
HARDWARE_KEYS = ("cpu_model", "machine", "cpu_count", "cpu_affinity", "ram_bytes")
# differences that cannot change what a run computes at a fixed thread count
MINOR_HARDWARE_KEYS = frozenset({"cpu_count", "cpu_affinity", "ram_bytes"})


# --- reading ------------------------------------------------------------------------------


def _open(root: Path) -> reader.Bundle:
    try:
        return reader.Bundle(root)
    except reader.Refused as exc:
        raise formats.FormatError(str(exc)) from None


@contextlib.contextmanager
def _reading(root: Path, bundle: reader.Bundle | None) -> Iterator[reader.Bundle]:
    """`bundle` when the caller has one open, else `root` opened for this read."""
    if bundle is not None:
        yield bundle
        return
    with _open(root) as b:
        yield b


def _bundle_json(bundle: reader.Bundle, rel: str, default: Any = None) -> Any:
    if not bundle.has(rel):
        return default
    try:
        return bundle.json(rel)
    except reader.BundleFileError as exc:
        raise formats.FormatError(str(exc)) from None


def _config_values(doc: Any) -> dict[str, Any]:
    """config.json's config as the run was given it (a NaN/inf that non_finite names read back as its float)."""
    cfg = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(cfg, dict):
        return {}
    return formats.config_values(cfg, doc.get("non_finite"))


def _bundle_jsonl(bundle: reader.Bundle, rel: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (reader.Bundle.records: strict, a torn last line skipped)."""
    try:
        return bundle.records(rel)
    except reader.BundleFileError as exc:
        raise formats.FormatError(str(exc)) from None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {dotted.key: leaf}; an empty mapping is a leaf."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj} if prefix else {}


def data_manifests(root: Path, bundle: reader.Bundle | None = None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with _reading(root, bundle) as b:
        rels = sorted((r for r in b.files if r.startswith(formats.DATA_DIR + "/") and r.count("/") == 2
                       and r.endswith("/manifest.json")), key=lambda r: r.split("/")[1])
        for rel in rels:
            try:
                name = b.data_manifest(rel.split("/")[1]).name  # typed and strict
            except reader.BundleFileError as exc:
                raise formats.FormatError(str(exc)) from None
            out[name] = _bundle_json(b, rel)
    return out


def bundle_info(root: Path, bundle: reader.Bundle | None = None) -> dict[str, Any]:
    with _reading(root, bundle) as b:
        run = _bundle_json(b, formats.RUN_JSON, {}) or {}
        root_digest = None
        if b.has(formats.MANIFEST):
            manifest = _bundle_json(b, formats.MANIFEST)  # unreadable or hostile JSON refuses the diff
            try:
                root_digest = formats.parse_oms_statement(manifest)[0]
            except formats.FormatError:
                root_digest = None
    return {"path": str(root), "run_id": run.get("run_id"), "status": run.get("status"),
            "root_digest": root_digest, "seed": run.get("seed"), "reproduces": run.get("reproduces"),
            "duration_s": run.get("duration_s"), "last_step": run.get("last_step")}


# --- integrity ----------------------------------------------------------------------------

# integrity states of one side: the seal checked and every file matched; no seal (a run still
# running, or killed before `prov seal`); the seal checked and something does not match it (or the
# seal itself is malformed, or was removed from a bundle that shows it had one); not checked
INTACT, UNSEALED, TAMPERED, NOT_VERIFIED = "intact", "unsealed", "tampered", "not verified"
# files whose presence shows that a bundle was sealed (a re-seal record, a signature of the seal)
SEALED_EVIDENCE = (formats.RESEALS, formats.SIGNATURE, formats.SIGSTORE_SIGNATURE)


def integrity_record(bundle: reader.Bundle | None, status: Any = None, *, verify: bool = True,
                     workers: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """The seal of one bundle checked by the audit's engine (provenance.audit.integrity), as a JSON-able
    record: {state, sealed, ok, status, root_digest, files, bytes, changed, missing, extra, problems,
    warnings}. `ok` is False for a tampered bundle and for an unsealed one: nothing shows that an unsealed
    bundle's files are what its run wrote (a seal deleted from an edited bundle looks the same)."""
    from provenance.audit.integrity import check_integrity, load_manifest
    from provenance.audit.view import DEFAULT_LIMITS

    rec: dict[str, Any] = {"state": NOT_VERIFIED, "sealed": None, "ok": True, "status": status,
                           "root_digest": None, "files": 0, "bytes": 0, "changed": [], "missing": [], "extra": [],
                           "problems": [], "warnings": []}
    if not verify or bundle is None:
        return rec
    sizes = bundle.sizes
    if formats.LOCK in sizes:
        rec["warnings"].append({"file": formats.LOCK,
                                "message": "a live writer's lock file: the run may still be writing"})
    if formats.MANIFEST not in sizes:
        rec.update(sealed=False, state=UNSEALED, ok=False)
        evidence = [n for n in SEALED_EVIDENCE if n in sizes]
        if evidence:  # a bundle that was sealed, whose seal is gone: the seal was removed, not never made
            rec.update(state=TAMPERED, ok=False)
            rec["problems"].append({"file": formats.MANIFEST, "message": f"{formats.MANIFEST} is missing, but "
                                    f"{', '.join(evidence)} shows the bundle was sealed"})
        return rec
    rec["sealed"] = True
    try:
        manifest = load_manifest(bundle.root, sizes, DEFAULT_LIMITS)
    except reader.Refused as exc:  # a seal that cannot be checked is no seal to trust
        rec.update(state=TAMPERED, ok=False)
        rec["problems"].append({"file": formats.MANIFEST, "message": f"the seal cannot be checked: {exc}"})
        return rec
    res = check_integrity(bundle.root, sizes, manifest, bundle.digests or None, progress, workers)
    rec.update(state=INTACT if res.ok else TAMPERED, ok=res.ok, root_digest=manifest[0], files=res.files,
               bytes=res.bytes, changed=[x.to_dict() for x in res.changed],
               missing=[x.to_dict() for x in res.missing], extra=[x.to_dict() for x in res.extra])
    for f in res.findings:
        (rec["problems"] if f.level == "error" else rec["warnings"]).append({"file": f.file, "message": f.message})
    return rec


# --- sections -----------------------------------------------------------------------------


def diff_config(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Config keys that differ. `not_counted`: the differing keys that name places on the machine that ran
    (formats.PATH_KEYS, which a reproduction sets by design): shown, but not a difference that counts."""
    fa, fb = flatten(a), flatten(b)
    changed = [{"key": k, "a": fa[k], "b": fb[k]} for k in sorted(set(fa) & set(fb))  # NaN is NaN here
               if formats.strict_json(fa[k]) != formats.strict_json(fb[k]) or type(fa[k]) is not type(fb[k])]
    only_a = [{"key": k, "value": fa[k]} for k in sorted(set(fa) - set(fb))]
    only_b = [{"key": k, "value": fb[k]} for k in sorted(set(fb) - set(fa))]
    return {"changed": changed, "only_a": only_a, "only_b": only_b, "keys": len(set(fa) | set(fb)),
            "not_counted": sorted(x["key"] for x in (*changed, *only_a, *only_b) if x["key"] in formats.PATH_KEYS)}


def diff_code(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    fa, fb = a.get("files") or {}, b.get("files") or {}
    return {
        "commit": [a.get("commit"), b.get("commit")],
        "dirty": [a.get("dirty"), b.get("dirty")],
        "changed": [{"path": p, "a": fa[p], "b": fb[p]} for p in sorted(set(fa) & set(fb)) if fa[p] != fb[p]],
        "only_a": sorted(set(fa) - set(fb)),
        "only_b": sorted(set(fb) - set(fa)),
        "same_files": sum(1 for p in set(fa) & set(fb) if fa[p] == fb[p]),
    }


def _lines(src: Path | IO[bytes]) -> Iterator[bytes]:
    with (open(src, "rb") if isinstance(src, Path) else src) as f:
        yield from f


def first_differing_record(a: Path | IO[bytes], b: Path | IO[bytes]) -> int | None:
    """0-based number of the first line (record) that differs between two files (a path: a data file
    outside a bundle; a stream: a bundled one opened through reader.Bundle); None if none."""
    for i, (x, y) in enumerate(zip_longest(_lines(a), _lines(b))):
        if x != y:
            return i
    return None


def first_step_using(root: Path, sample: int) -> int | None:
    """The first recorded step (rank 0) whose batch holds `sample` (read through reader.Bundle)."""
    with _open(root) as b:
        try:
            order = b.order(0)
        except reader.BundleFileError as exc:
            raise formats.FormatError(str(exc)) from None
    return next((st.step for st in order if sample in st.sample_ids), None)


def describe_record(manifest: dict[str, Any], path: str, record: int, order_root: Path | None) -> dict[str, Any]:
    """Name a differing record: its line, and the sample id (and first step using it) for the samples file."""
    out: dict[str, Any] = {"record": record, "line": record + 1}
    samples = manifest.get("samples") or {}
    if samples.get("file") == path:
        out["sample"] = record
        if order_root is not None:
            out["first_step_using_sample"] = first_step_using(order_root, record)
    return out


def bundled_file(root: Path, manifest: dict[str, Any], path: str) -> Path | None:
    rel = manifest.get("bundled_files")
    if not isinstance(rel, str):
        return None
    p = root / rel / path
    return p if p.is_file() else None


def _bundled(b: reader.Bundle | None, root: Path, manifest: dict[str, Any], path: str) -> Path | IO[bytes] | None:
    """A bundled data file: opened through the bundle's reader when there is one (never a link)."""
    rel = manifest.get("bundled_files")
    if b is None or not isinstance(rel, str):
        return bundled_file(root, manifest, path)
    name = f"{rel}/{path}"
    return b.open(name) if b.has(name) else None


def diff_data(a_root: Path, b_root: Path, bundles: tuple[reader.Bundle, reader.Bundle] | None = None
              ) -> dict[str, Any]:
    ma = data_manifests(a_root, bundles[0] if bundles else None)
    mb = data_manifests(b_root, bundles[1] if bundles else None)
    datasets: dict[str, Any] = {}
    for name in sorted(set(ma) & set(mb)):
        fa = {e["path"]: e for e in ma[name].get("files", [])}
        fb = {e["path"]: e for e in mb[name].get("files", [])}
        changed = []
        for p in sorted(set(fa) & set(fb)):
            if fa[p].get("sha256") != fb[p].get("sha256") or fa[p].get("size") != fb[p].get("size"):
                entry: dict[str, Any] = {"path": p, "a": {"sha256": fa[p].get("sha256"), "size": fa[p].get("size")},
                                         "b": {"sha256": fb[p].get("sha256"), "size": fb[p].get("size")}}
                pa = _bundled(bundles[0] if bundles else None, a_root, ma[name], p)
                pb = _bundled(bundles[1] if bundles else None, b_root, mb[name], p)
                if pa is not None and pb is not None:
                    rec = first_differing_record(pa, pb)
                    if rec is not None:
                        entry.update(describe_record(ma[name], p, rec, a_root))
                for s in (pa, pb):
                    if s is not None and not isinstance(s, Path):
                        s.close()
                changed.append(entry)
        sa = {k: v for k, v in (ma[name].get("source") or {}).items() if k not in SOURCE_PLACE_KEYS}
        sb = {k: v for k, v in (mb[name].get("source") or {}).items() if k not in SOURCE_PLACE_KEYS}
        source = [{"key": c["key"], "a": c["a"], "b": c["b"]} for c in diff_config(sa, sb)["changed"]]
        datasets[name] = {"changed": changed, "only_a": sorted(set(fa) - set(fb)), "only_b": sorted(set(fb) - set(fa)),
                          "source": source, "files": len(set(fa) | set(fb))}
    return {"datasets": datasets, "only_a": sorted(set(ma) - set(mb)), "only_b": sorted(set(mb) - set(ma))}


def threads(run: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    det = run.get("determinism") or {}
    torch = env.get("torch") or {}
    return {"num_threads": det.get("num_threads", torch.get("num_threads")),
            "num_interop_threads": det.get("num_interop_threads", torch.get("num_interop_threads"))}


IMPORTED_KEY = formats.IMPORTED_DISTRIBUTIONS  # env/environment.json: the distributions the training imported


def _norm(name: str) -> str:
    return "".join("-" if c in "_." else c for c in name.lower())


def imported_distributions(*envs: dict[str, Any]) -> set[str] | None:
    """The distributions (PEP 503 names) that the runs' training imported, from each environment's record
    (a list of names or a {name: version} map); None when no side recorded it (every package counts)."""
    out: set[str] | None = None
    for env in envs:
        rec = env.get(IMPORTED_KEY) if isinstance(env, dict) else None
        if isinstance(rec, dict | list):
            out = (out or set()) | {_norm(str(n)) for n in rec}
    return out


def diff_env(a: dict[str, Any], b: dict[str, Any], a_threads: dict[str, Any] | None = None,
             b_threads: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Environment differences as a flat list, each {category, name, a, b, significant}.

    A section absent on one side (e.g. torch facts not captured) is not compared.
    `significant` is False only for what cannot change the computed numbers (core
    count, memory, OS release, environment variables, and, where a run recorded the
    distributions its training imported, packages that it did not import); --strict-env
    counts every one.
    """
    out: list[dict[str, Any]] = []

    def add(category: str, name: str, va: Any, vb: Any, significant: bool = True) -> None:
        if va != vb:
            out.append({"category": category, "name": name, "a": va, "b": vb, "significant": significant})

    pa, pb = a.get("python"), b.get("python")
    if pa and pb:
        for k in ("implementation", "version"):
            add("python", k, pa.get(k), pb.get(k))
    ka, kb = a.get("packages"), b.get("packages")
    if isinstance(ka, dict) and isinstance(kb, dict):
        used = imported_distributions(a, b)
        for n in sorted(set(ka) | set(kb)):
            add("packages", n, ka.get(n), kb.get(n), significant=used is None or _norm(n) in used)
            if used is not None and _norm(n) not in used and out and out[-1]["name"] == n:
                out[-1]["why"] = "not imported by the training"
    ta, tb = a.get("torch"), b.get("torch")
    if isinstance(ta, dict) and isinstance(tb, dict) and ta.get("installed") and tb.get("installed"):
        for k in TORCH_KEYS:
            add("torch", k, ta.get(k), tb.get(k))
        for k in TORCH_NUMERICS_KEYS:
            if k in ta and k in tb:
                add("torch", k, ta.get(k), tb.get(k))
    if a_threads is not None and b_threads is not None:
        for k in ("num_threads", "num_interop_threads"):
            if a_threads.get(k) is not None and b_threads.get(k) is not None:
                add("threads", k, a_threads.get(k), b_threads.get(k))
    da, db = a.get(formats.TRAINING_DEVICE), b.get(formats.TRAINING_DEVICE)  # what each run trained on
    if isinstance(da, dict) and isinstance(db, dict):
        add("device", "type", da.get("type"), db.get("type"))
    ha, hb = a.get("hardware"), b.get("hardware")
    if isinstance(ha, dict) and isinstance(hb, dict):
        for k in HARDWARE_KEYS:
            add("hardware", k, ha.get(k), hb.get(k), significant=k not in MINOR_HARDWARE_KEYS)
    oa, ob = a.get("os"), b.get("os")
    if isinstance(oa, dict) and isinstance(ob, dict):
        for k in ("system", "release"):
            add("os", k, oa.get(k), ob.get(k), significant=k == "system")
    ea, eb = a.get("env_vars"), b.get("env_vars")
    if isinstance(ea, dict) and isinstance(eb, dict):
        for k in sorted(set(ea) | set(eb)):
            add("env_vars", k, ea.get(k), eb.get(k), significant=False)
    return out


def env_line(d: dict[str, Any]) -> str:
    """One difference in words: 'package numpy 2.0.1 → 2.1.0', 'thread count 2 → 1'."""
    cat, name = d["category"], d["name"]
    a, b = _short(d["a"]), _short(d["b"])
    if cat == "threads":
        label = "thread count" if name == "num_threads" else "inter-op thread count"
    elif cat == "device":
        label = "training device"
    elif cat == "packages":
        label = f"package {name}"
        if d["a"] is None:
            return f"package {name} {b} only in the second"
        if d["b"] is None:
            return f"package {name} {a} only in the first"
    else:
        label = f"{cat} {name}"
    return f"{label} {a} → {b}"


def _bits(x: float) -> bytes:
    return struct.pack(">d", x)


def same_value(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return _bits(x) == _bits(y) or (math.isnan(x) and math.isnan(y))
    return x == y and type(x) is type(y)


def _abs_diff(x: Any, y: Any) -> float | None:
    if isinstance(x, int | float) and isinstance(y, int | float) and not isinstance(x, bool):
        try:
            return abs(float(x) - float(y))
        except OverflowError:
            return math.inf
    return None


def _value(v: Any) -> Any:
    """A logged value as compared: a non-finite number as the strict writers write it ("NaN", "Infinity",
    "-Infinity", formats.strict_json) is that float again, so that NaN equals NaN and |inf - x| is inf."""
    return float(v) if isinstance(v, str) and v in formats.NON_FINITE else v


def diff_series(a: list[dict[str, Any]], b: list[dict[str, Any]], primary: str) -> dict[str, Any]:
    """Compare two step-indexed logs: the primary key in detail, the others by first differing step."""
    sa = {int(r["step"]): {k: _value(v) for k, v in r.items()} for r in a if isinstance(r.get("step"), int)}
    sb = {int(r["step"]): {k: _value(v) for k, v in r.items()} for r in b if isinstance(r.get("step"), int)}
    common = sorted(set(sa) & set(sb))
    out: dict[str, Any] = {"steps_compared": len(common), "only_a": len(set(sa) - set(sb)),
                           "only_b": len(set(sb) - set(sa)), "primary": primary,
                           "first_diff_step": None, "n_differ": 0, "max_abs_diff": 0.0, "max_abs_diff_step": None,
                           "other_keys": {}}
    keys = sorted({k for s in common for k in (*sa[s], *sb[s])} - TIMING_KEYS)
    for step in common:
        ra, rb = sa[step], sb[step]
        for k in keys:
            va, vb = ra.get(k), rb.get(k)
            if same_value(va, vb):
                continue
            if k == primary:
                out["n_differ"] += 1
                d = _abs_diff(va, vb)
                if out["first_diff_step"] is None:
                    out.update({"first_diff_step": step, "a": va, "b": vb, "abs_diff": d})
                if d is not None and (d > out["max_abs_diff"] or math.isnan(d)):
                    out.update({"max_abs_diff": d, "max_abs_diff_step": step})
            elif k not in out["other_keys"]:
                out["other_keys"][k] = {"first_diff_step": step, "a": va, "b": vb}
    if out["first_diff_step"] is None:
        out.pop("max_abs_diff_step")
    return out


def diff_order(a_root: Path, b_root: Path, bundles: tuple[reader.Bundle, reader.Bundle] | None = None
               ) -> dict[str, Any]:
    with _reading(a_root, bundles[0] if bundles else None) as ba, \
            _reading(b_root, bundles[1] if bundles else None) as bb:
        try:
            oa = {s.step: s.sample_ids for s in ba.order(0)}
            ob = {s.step: s.sample_ids for s in bb.order(0)}
        except reader.BundleFileError as exc:
            raise formats.FormatError(str(exc)) from None
    common = sorted(set(oa) & set(ob))
    out: dict[str, Any] = {"steps_compared": len(common), "only_a": len(set(oa) - set(ob)),
                           "only_b": len(set(ob) - set(oa)), "first_diff_step": None}
    for step in common:
        if oa[step] != ob[step]:
            x, y = list(oa[step]), list(ob[step])
            pos = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            out.update({"first_diff_step": step, "position": pos,
                        "a_sample": x[pos] if pos < len(x) else None, "b_sample": y[pos] if pos < len(y) else None,
                        "a_batch_digest": formats.batch_digest(x), "b_batch_digest": formats.batch_digest(y)})
            break
    return out


def checkpoint_digests(root: Path, bundle: reader.Bundle | None = None) -> dict[int, str]:
    if bundle is None and not root.is_dir():
        return {}
    with _reading(root, bundle) as b:
        try:
            index = b.checkpoint_index()  # typed and strict
        except reader.BundleFileError as exc:
            raise formats.FormatError(str(exc)) from None
    return {e.step: e.sha256 for e in index.checkpoints} if index is not None else {}


def checkpoint_entries(root: Path, bundle: reader.Bundle | None = None) -> dict[int, dict[str, Any]]:
    """step -> the checkpoint index entry (path, format, sha256, ...)."""
    if bundle is None and not root.is_dir():
        return {}
    with _reading(root, bundle) as b:
        idx = _bundle_json(b, formats.CHECKPOINT_INDEX, {}) or {}
    entries = idx.get("checkpoints", []) if isinstance(idx, dict) else None
    out: dict[int, dict[str, Any]] = {}
    for e in entries if isinstance(entries, list) else [None]:
        step = e.get("step") if isinstance(e, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or not isinstance(e.get("sha256"), str):
            raise formats.FormatError(f"{root.name}: {formats.CHECKPOINT_INDEX}: a checkpoint entry without an "
                                      f"integer step and a sha256 ({str(e)[:80]!r})")
        out[step] = e
    return out


def diff_checkpoints(a_root: Path, b_root: Path, bundles: tuple[reader.Bundle, reader.Bundle] | None = None
                     ) -> dict[str, Any]:
    """Checkpoint digests by step; where two checkpoints of one step differ, their tensor-by-tensor
    comparison (provenance.tensors: each file read once, never unpickled) as `tensors`."""
    from provenance import tensors

    ea = checkpoint_entries(a_root, bundles[0] if bundles else None)
    eb = checkpoint_entries(b_root, bundles[1] if bundles else None)
    common = sorted(set(ea) & set(eb))
    differ = [{"step": s, "a": ea[s]["sha256"], "b": eb[s]["sha256"],
               "tensors": tensors.compare_entries(a_root, ea[s], b_root, eb[s])}
              for s in common if ea[s]["sha256"] != eb[s]["sha256"]]
    return {"compared": len(common), "differ": differ,
            "only_a": sorted(set(ea) - set(eb)), "only_b": sorted(set(eb) - set(ea))}


def _replayed_order(repro: Path, info: dict[str, Any], original: dict[str, Any]) -> dict[str, Any] | None:
    """The first step at which a reproduction's sampler chose another batch than `original` recorded
    (from its reproduction/steps.jsonl: the recorded batch was replayed, so its order file cannot show it)."""
    rep = info.get("reproduces")
    if not isinstance(rep, dict) or not original.get("root_digest"):
        return None
    if rep.get("root_digest") != original["root_digest"]:
        return None
    with _open(repro) as b:
        steps = _bundle_jsonl(b, STEPS_LOG)
    for r in steps:
        if isinstance(r.get("step"), int) and r.get("order") in ("differs", "not recorded"):
            what = ("the original recorded no batch for this step" if r["order"] == "not recorded" else
                    f"the reproduction's sampler chose batch {_short(r.get('batch_digest'))} where the original "
                    f"had {_short(r.get('recorded_batch_digest'))}; the recorded batch was replayed")
            return {"step": r["step"], "kind": "order", "detail": what}
    return None


def _step_range(records: list[dict[str, Any]]) -> tuple[int, int] | None:
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    return (min(steps), max(steps)) if steps else None


def diff_first_divergence(d: dict[str, Any], a_root: Path, b_root: Path, metrics_a: list[dict[str, Any]],
                          metrics_b: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first divergent step of B against A, under the one definition of provenance.replay
    (the same as the verdict of `prov reproduce`): per step the batch, then the loss bits, then the
    checkpoint digest; an evaluation only when no step diverged."""
    found: list[dict[str, Any] | None] = []
    o = d["order"]
    if o["first_diff_step"] is not None:
        found.append({"step": o["first_diff_step"], "kind": "order", "position": o["position"],
                      "recorded_sample": o["a_sample"], "computed_sample": o["b_sample"]})
    found.append(_replayed_order(b_root, d["b"], d["a"]))
    found.append(_replayed_order(a_root, d["a"], d["b"]))
    order_first = first_divergence(x for x in found if x is not None)
    m = d["metrics"]
    if m["first_diff_step"] is not None:
        s = m["first_diff_step"]
        found.append({"step": s, "kind": "loss", "loss_recorded": m["a"], "loss": m["b"], "abs_diff": m.get("abs_diff"),
                      "order_matched": order_first is None or order_first["step"] > s})
    ck = d["checkpoints"]
    if ck["differ"]:
        c = ck["differ"][0]
        found.append({"step": c["step"], "kind": "checkpoint", "expected": f"sha256:{c['a']}",
                      "actual": f"sha256:{c['b']}"})
    for missing, other, side in ((ck["only_a"], _step_range(metrics_b), "b"),
                                 (ck["only_b"], _step_range(metrics_a), "a")):
        reached = [s for s in missing if other is not None and other[0] <= s <= other[1]]
        if reached:
            found.append({"step": reached[0], "kind": "checkpoint missing", "missing_in": side})
    e = d["eval"]
    if e["first_diff_step"] is not None:
        found.append({"step": e["first_diff_step"], "kind": "eval", "a": e["a"], "b": e["b"]})
    return first_divergence(found)


def _resources(root: Path, bundle: reader.Bundle | None = None) -> dict[str, str]:
    try:
        with _reading(root, bundle) as b:
            manifest = _bundle_json(b, formats.MANIFEST)  # unreadable or hostile JSON refuses the diff
    except OSError:
        return {}
    try:
        return formats.parse_oms_statement(manifest)[1] if manifest is not None else {}
    except formats.FormatError:  # not a seal: nothing to compare
        return {}


def diff_model(a_root: Path, b_root: Path, bundles: tuple[reader.Bundle, reader.Bundle] | None = None
               ) -> dict[str, Any]:
    prefix = formats.MODEL_DIR + "/"
    ra = {k: v for k, v in _resources(a_root, bundles[0] if bundles else None).items() if k.startswith(prefix)}
    rb = {k: v for k, v in _resources(b_root, bundles[1] if bundles else None).items() if k.startswith(prefix)}
    return {"files": len(set(ra) | set(rb)),
            "changed": sorted(k for k in set(ra) & set(rb) if ra[k] != rb[k]),
            "only_a": sorted(set(ra) - set(rb)), "only_b": sorted(set(rb) - set(ra))}


def _output_files(root: Path, bundle: reader.Bundle | None = None) -> dict[str, str]:
    """{label/path: sha256} of outputs/index.json (declared outputs of a wrapped run); {} without one."""
    with _reading(root, bundle) as b:
        idx = _bundle_json(b, formats.OUTPUTS_INDEX, {}) or {}
    out: dict[str, str] = {}
    for e in idx.get("outputs", []) if isinstance(idx, dict) else []:
        if not isinstance(e, dict):
            continue
        for f in e.get("files", []) if isinstance(e.get("files"), list) else []:
            if isinstance(f, dict) and isinstance(f.get("path"), str):
                out[f"{e.get('label')}/{f['path']}"] = str(f.get("sha256"))
    return out


def diff_outputs(a_root: Path, b_root: Path, bundles: tuple[reader.Bundle, reader.Bundle] | None = None
                 ) -> dict[str, Any]:
    oa = _output_files(a_root, bundles[0] if bundles else None)
    ob = _output_files(b_root, bundles[1] if bundles else None)
    common = sorted(set(oa) & set(ob))
    return {"files": len(set(oa) | set(ob)), "same_files": sum(1 for k in common if oa[k] == ob[k]),
            "changed": [{"path": k, "a": oa[k], "b": ob[k]} for k in common if oa[k] != ob[k]],
            "only_a": sorted(set(oa) - set(ob)), "only_b": sorted(set(ob) - set(oa))}


def command_core(argv: Any, config_keys: set[str] | frozenset[str]) -> list[str] | None:
    """What a recorded command line says beyond what the diff compares elsewhere: without the interpreter's
    path (its version is compared as environment), the script by its file name (the code is compared by
    content), the config file (`--config X`, `--config=X`, or a first argument naming a .yaml/.yml/.json: the
    resolved config is compared key by key) and `key=value` overrides of config keys (compared as config).
    None for an argv that is not a list of strings of an interpreter and what it runs."""
    if not (isinstance(argv, list) and len(argv) >= 2 and all(isinstance(x, str) for x in argv)):
        return None
    if argv[1] == "-m" and len(argv) >= 3:
        head, rest = ["-m", argv[2]], argv[3:]
    else:
        head, rest = [PurePath(argv[1]).name], argv[2:]
    if rest and "=" not in rest[0] and rest[0].endswith((".yaml", ".yml", ".json")):
        rest = rest[1:]
    out: list[str] = []
    skip = False
    for tok in rest:
        if skip:
            skip = False
            continue
        if tok == "--config":
            skip = True
            continue
        key = tok.split("=", 1)[0]
        if tok.startswith("--config=") or ("=" in tok and not tok.startswith("-") and (
                key in config_keys or any(k.startswith(key + ".") for k in config_keys))):
            continue
        out.append(tok)
    return head + out


def diff_command(cfg_a: dict[str, Any], cfg_b: dict[str, Any]) -> dict[str, Any]:
    """The two recorded command lines (config.json argv), whole. `counted` is False where they differ only
    in what cannot change the numbers by itself and is compared elsewhere (command_core): a reproduction's
    command, which runs the recorded resolved config from its work folder, by design."""
    a, b = cfg_a.get("argv"), cfg_b.get("argv")
    keys = set(flatten(cfg_a.get("config") or {})) | set(flatten(cfg_b.get("config") or {}))
    core_a, core_b = command_core(a, keys), command_core(b, keys)
    counted = a != b and (core_a is None or core_b is None or core_a != core_b)
    return {"a": a, "b": b, "same": a == b, "counted": counted}


# --- the whole diff -------------------------------------------------------------------------


def diff_bundles(a: str | Path, b: str | Path, *, verify: bool = False, workers: int | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """The diff of two run folders. With `verify`, each bundle's seal is checked first (every byte
    hashed, as `prov audit` does) and `integrity` says what was found; without it, "not verified"."""
    a, b = Path(a), Path(b)
    for p in (a, b):
        if not (p / formats.RUN_JSON).is_file():
            raise formats.FormatError(f"{p}: not a run bundle ({formats.RUN_JSON} is missing)")
    with _open(a) as ba, _open(b) as bb:  # every section reads through the one bundle reader
        run_a, run_b = _bundle_json(ba, formats.RUN_JSON, {}), _bundle_json(bb, formats.RUN_JSON, {})
        integrity: dict[str, dict[str, Any]] = {}
        for side, bun, run in (("a", ba, run_a), ("b", bb, run_b)):
            if side == "b" and verify and b.resolve() == a.resolve():  # one folder twice: hashed once
                integrity["b"] = dict(integrity["a"])
                continue
            integrity[side] = integrity_record(bun, run.get("status") if isinstance(run, dict) else None,
                                               verify=verify, workers=workers, progress=progress)
        env_a, env_b = _bundle_json(ba, formats.ENV_JSON, {}) or {}, _bundle_json(bb, formats.ENV_JSON, {}) or {}
        cfg_a, cfg_b = _bundle_json(ba, formats.CONFIG_JSON, {}) or {}, _bundle_json(bb, formats.CONFIG_JSON, {}) or {}
        code_a, code_b = _bundle_json(ba, formats.CODE_JSON, {}) or {}, _bundle_json(bb, formats.CODE_JSON, {}) or {}
        metrics_a, metrics_b = _bundle_jsonl(ba, formats.METRICS), _bundle_jsonl(bb, formats.METRICS)
        evals_a, evals_b = _bundle_jsonl(ba, formats.EVALS), _bundle_jsonl(bb, formats.EVALS)
        thr_a, thr_b = threads(run_a, env_a), threads(run_b, env_b)
        env = diff_env(env_a, env_b, thr_a, thr_b)
        d = {
            "schema": formats.DIFF_SCHEMA,
            "integrity": integrity,
            "a": bundle_info(a, ba),
            "b": bundle_info(b, bb),
            "config": diff_config(_config_values(cfg_a), _config_values(cfg_b)),
            "code": diff_code(code_a, code_b),
            "data": diff_data(a, b, (ba, bb)),
            "environment": {"differences": env, "threads": [thr_a.get("num_threads"), thr_b.get("num_threads")],
                            "torch": [(env_a.get("torch") or {}).get("version"),
                                      (env_b.get("torch") or {}).get("version")],
                            "cpu_model": [(env_a.get("hardware") or {}).get("cpu_model"),
                                          (env_b.get("hardware") or {}).get("cpu_model")],
                            "packages": [len(env_a.get("packages") or {}), len(env_b.get("packages") or {})]},
            "metrics": diff_series(metrics_a, metrics_b, "loss"),
            "eval": diff_series(evals_a, evals_b, "val_loss"),
            "order": diff_order(a, b, (ba, bb)),
            "checkpoints": diff_checkpoints(a, b, (ba, bb)),
            "model": diff_model(a, b, (ba, bb)),
            "outputs": diff_outputs(a, b, (ba, bb)),
            "command": diff_command(cfg_a, cfg_b),
        }
        d["first_divergence"] = diff_first_divergence(d, a, b, metrics_a, metrics_b)
        d["same"] = {
            "config": not any(x["key"] not in d["config"]["not_counted"] for x in
                              (*d["config"]["changed"], *d["config"]["only_a"], *d["config"]["only_b"])),
            "code": not (d["code"]["changed"] or d["code"]["only_a"] or d["code"]["only_b"]),
            "data": not (d["data"]["only_a"] or d["data"]["only_b"] or any(
                v["changed"] or v["only_a"] or v["only_b"] for v in d["data"]["datasets"].values())),
            "environment": not any(x["significant"] for x in env),
            "metrics": d["metrics"]["first_diff_step"] is None and not d["metrics"]["other_keys"],
            "eval": d["eval"]["first_diff_step"] is None and not d["eval"]["other_keys"],
            "order": d["order"]["first_diff_step"] is None,
            "checkpoints": not d["checkpoints"]["differ"],
            "model": not (d["model"]["changed"] or d["model"]["only_a"] or d["model"]["only_b"]),
            "outputs": not (d["outputs"]["changed"] or d["outputs"]["only_a"] or d["outputs"]["only_b"]),
            "command": not d["command"]["counted"],
        }
        d["differs"] = differing_sections(d)
        d["identical"] = not d["differs"]
    return d


def differing_sections(d: dict[str, Any]) -> list[str]:
    """The sections in which any difference was found (what `prov diff --exit-code` exits 1 for): those
    `same` says differ, and also steps, evaluations, batches or checkpoints present on one side only and
    a dataset's source. Differences that cannot change the numbers (environment variables, core count,
    memory, OS release, packages the training did not import) and those a reproduction has by design (the
    config's path keys, formats.PATH_KEYS; a command that differs only in its interpreter's path, config
    file and config overrides; run id, times, host) are listed but not counted."""
    out = {k for k, same in d["same"].items() if not same}
    for k in ("metrics", "eval", "order"):
        if d[k]["only_a"] or d[k]["only_b"]:
            out.add(k)
    if d["checkpoints"]["only_a"] or d["checkpoints"]["only_b"]:
        out.add("checkpoints")
    if any(v["source"] for v in d["data"]["datasets"].values()):
        out.add("data")
    return sorted(out)


# --- text -------------------------------------------------------------------------------------


def _short(v: Any, n: int = 60) -> str:
    if isinstance(v, str) and v.startswith("sha256:"):
        v = v[7:]
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return f"sha256:{v[:12]}…"
    s = repr(v) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 1] + "…"


def _printable(s: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def _whole(v: Any) -> str:
    """A value in full (control characters escaped)."""
    return _printable(v if isinstance(v, str) else repr(v))


def _command(argv: Any) -> str:
    if isinstance(argv, list) and all(isinstance(x, str) for x in argv):
        return _printable(shlex.join(argv))
    return "(not recorded)" if argv is None else _whole(argv)


def _num(v: Any) -> str:
    return repr(v) if isinstance(v, float) else _short(v)


def divergence_text(first: dict[str, Any], a: str = "the original", b: str = "the reproduction") -> str:
    """A first divergence (provenance.replay's definition) in words."""
    k, s = first.get("kind"), first.get("step")
    if k == "loss":  # a record read back from a file (the replay's summary) has a NaN as "NaN" (strict JSON)
        rec, got = _value(first.get("loss_recorded")), _value(first.get("loss"))
        delta = formats.as_float(first.get("abs_diff")) or 0.0
        return (f"the loss differs at step {s}: {rec!r} in {a}, {got!r} in {b} "
                f"(|Δ| {delta:.3g}" + (", same batch)" if first.get("order_matched") else ")"))
    if k == "order":
        if first.get("detail"):
            return f"the batch of step {s}: {first['detail']}"
        used = {True: f"; {b} trained on the replayed batch of {a}",  # run.batch: its return value was read
                False: f"; {b} did not use the replayed batch (run.batch's return value was never read, or "
                       "run.record_batch recorded the script's own)"}.get(first.get("replayed"), "")
        return (f"the batch of step {s} differs: {b} has sample {first.get('computed_sample')} where {a} had "
                f"{first.get('recorded_sample')} (position {first.get('position')}){used}")
    if k == "checkpoint":
        return (f"the checkpoint of step {s} differs: {first.get('expected')} in {a}, {first.get('actual')} "
                f"in {b}")
    if k == "checkpoint missing":
        saved, not_saved = (b, a) if first.get("missing_in") == "a" else (a, b)
        return f"{saved} saved a checkpoint at step {s}; {not_saved} did not"
    if k == "eval":
        return f"the evaluation of step {s} differs ({first.get('a')!r} → {first.get('b')!r})"
    return f"step {s}: {k}"


def _size(n: Any) -> str:
    if not isinstance(n, int) or n < 1000:
        return f"{n} bytes"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"  # pragma: no cover


def _names(entries: list[str], n: int = 3) -> str:
    more = len(entries) - n
    return ", ".join(entries[:n]) + (f" and {more} more" if more > 0 else "")


def integrity_text(rec: dict[str, Any]) -> str:
    """One side's integrity in words: 'sealed, intact (41 files, 1.2 MB)', 'not sealed (status running)',
    'tampered: logs/metrics.jsonl changed since the seal, ...', 'not verified: the seal was not checked'."""
    warn = "".join(f"; warning: {w['message']}" + (f" ({w['file']})" if w.get("file") else "")
                   for w in rec.get("warnings", [])[:2])
    state = rec.get("state")
    if state == NOT_VERIFIED:
        return "not verified: the seal was not checked"
    if state == UNSEALED:
        why = "nothing to check the files against (`prov seal` seals a killed run; --no-verify compares a live " \
              "one without this check)"
        if rec.get("status") != "running":  # it ended: a sealer still pending, a crash while sealing, or removed
            why = "the run ended but no seal is there (a seal still pending, a crash while sealing, or a seal " \
                  "removed); `prov seal` seals it, `prov audit` fails it"
        return f"not sealed (status {rec.get('status')}): {why}{warn}"
    if state == INTACT:
        return f"sealed, intact ({rec['files']} files, {_size(rec['bytes'])} hashed, all match the seal){warn}"
    what = [f"{x['name']} changed since the seal" for x in rec.get("changed", [])]
    what += [f"{x['name']} missing" for x in rec.get("missing", [])]
    what += [f"{x['name']} not in the seal" for x in rec.get("extra", [])]
    what += [p["message"] for p in rec.get("problems", [])]
    return f"tampered: {_names(what)}{warn}"


def format_diff(d: dict[str, Any], verbose: bool = False) -> str:
    """The diff for a terminal: one headline per section, details under it."""
    lines: list[str] = []
    for side in ("a", "b"):
        i = d[side]
        seal = (d.get("integrity") or {}).get(side) or {}
        rd = f"sha256:{i['root_digest'][:12]}…" if i.get("root_digest") else (
            "unreadable" if seal.get("sealed") else "not sealed")  # a manifest.json that is not a seal
        rep = ""
        if i.get("reproduces"):
            rep = f", reproduces {i['reproduces'].get('run_id')}"
        lines.append(f"{side.upper()}: {i['path']} (run {i.get('run_id')}, {i.get('status')}, root {rd}{rep})")
    for side in ("a", "b"):
        if isinstance((d.get("integrity") or {}).get(side), dict):
            lines.append(f"integrity {side.upper()}: {integrity_text(d['integrity'][side])}")

    cmd = d.get("command") or {}
    if cmd.get("a") is not None or cmd.get("b") is not None:  # whole commands: never cut to look alike
        if cmd.get("same"):
            lines.append(f"command: same: {_command(cmd['a'])}")
        else:
            lines.append("command: differs" + ("" if cmd.get("counted", True) else
                                               " (not counted: only the interpreter's path, the config file and "
                                               "config overrides differ; the config is compared below)"))
            lines.append(f"  A: {_command(cmd.get('a'))}")
            lines.append(f"  B: {_command(cmd.get('b'))}")

    c = d["config"]
    n = len(c["changed"]) + len(c["only_a"]) + len(c["only_b"])
    places = c.get("not_counted") or []
    head = 'same' if not n else f'{n} key(s) differ'
    if n and len(places) == n:
        head = f"same but {n} path key(s) of the machine that ran (not counted)"
    elif places:
        head += f" ({len(places)} of them path keys, not counted)"
    lines.append(f"config: {head} ({c['keys']} keys)")
    tag = {k: " (a path of the machine that ran: not counted)" for k in places}
    for ch in c["changed"]:  # values whole: two long values (a command) must not look equal
        lines.append(f"  {ch['key']}: {_whole(ch['a'])} → {_whole(ch['b'])}{tag.get(ch['key'], '')}")
    for ch in c["only_a"]:
        lines.append(f"  {ch['key']}: only in A ({_whole(ch['value'])}){tag.get(ch['key'], '')}")
    for ch in c["only_b"]:
        lines.append(f"  {ch['key']}: only in B ({_whole(ch['value'])}){tag.get(ch['key'], '')}")

    code = d["code"]
    n = len(code["changed"]) + len(code["only_a"]) + len(code["only_b"])
    total = code["same_files"] + n
    commits = ""
    if code["commit"][0] != code["commit"][1]:
        commits = f"; commit {_short(code['commit'][0], 12)} → {_short(code['commit'][1], 12)}"
    lines.append(f"code: {'same' if not n else f'{n} of {total} files differ'} ({total} files{commits})")
    for ch in code["changed"]:
        lines.append(f"  M {ch['path']}  {_short(ch['a'])} → {_short(ch['b'])}")
    for p in code["only_a"]:
        lines.append(f"  - {p} (only in A)")
    for p in code["only_b"]:
        lines.append(f"  + {p} (only in B)")

    data = d["data"]
    nfiles = sum(v["files"] for v in data["datasets"].values())
    if d["same"]["data"]:
        lines.append(f"data: same ({len(data['datasets'])} datasets, {nfiles} files)")
    else:
        lines.append("data: differs")
        for name in data["only_a"]:
            lines.append(f"  dataset {name}: only in A")
        for name in data["only_b"]:
            lines.append(f"  dataset {name}: only in B")
        for name, v in data["datasets"].items():
            for ch in v["changed"]:
                where = ""
                if "sample" in ch:
                    where = f"; first differing sample {ch['sample']} (line {ch['line']})"
                    if ch.get("first_step_using_sample") is not None:
                        where += f", first used at step {ch['first_step_using_sample']}"
                elif "line" in ch:
                    where = f"; first differing line {ch['line']}"
                lines.append(f"  {name}/{ch['path']}: {_short(ch['a']['sha256'])} ({ch['a']['size']} bytes) → "
                             f"{_short(ch['b']['sha256'])} ({ch['b']['size']} bytes){where}")
            for p in v["only_a"]:
                lines.append(f"  {name}/{p}: only in A")
            for p in v["only_b"]:
                lines.append(f"  {name}/{p}: only in B")
    for name, v in data["datasets"].items():
        for ch in v["source"]:
            lines.append(f"  {name} source {ch['key']}: {_short(ch['a'])} → {_short(ch['b'])}")

    env = d["environment"]
    sig = [x for x in env["differences"] if x["significant"]]
    minor = [x for x in env["differences"] if not x["significant"] and x["category"] != "env_vars"]
    envvars = [x for x in env["differences"] if x["category"] == "env_vars"]
    by_cat = {cat: [x for x in sig if x["category"] == cat] for cat in ("python", "packages", "torch", "threads",
                                                                         "hardware", "os")}
    npk = len(by_cat["packages"])
    n_unused = sum(1 for m in minor if m["category"] == "packages")
    lines.append(f"packages: {f'{npk} differ' if npk else 'same'} "
                 f"({env['packages'][0]} / {env['packages'][1]} installed"
                 + (f"; {n_unused} more differ that the training does not import)" if n_unused else ")"))
    for x in by_cat["packages"]:
        lines.append(f"  {env_line(x)}")
    for x in (m for m in minor if m["category"] == "packages"):
        lines.append(f"  {env_line(x)} ({x.get('why', 'cannot change the numbers')})")
    lines.append(f"torch: {'same' if not by_cat['torch'] else 'differs'} ({_short(env['torch'][0])} / "
                 f"{_short(env['torch'][1])})")
    for x in by_cat["torch"] + by_cat["python"]:
        lines.append(f"  {env_line(x)}")
    lines.append(f"threads: {'same' if not by_cat['threads'] else 'differ'} "
                 f"({env['threads'][0]} / {env['threads'][1]})")
    for x in by_cat["threads"]:
        lines.append(f"  {env_line(x)}")
    hw = by_cat["hardware"] + by_cat["os"]
    lines.append(f"hardware: {'same' if not hw else 'differs'} ({env['cpu_model'][0]} / {env['cpu_model'][1]})")
    for x in hw + [m for m in minor if m["category"] != "packages"]:
        lines.append(f"  {env_line(x)}" + ("" if x["significant"] else " (cannot change the numbers)"))
    if envvars:
        if verbose:
            lines.append(f"environment variables: {len(envvars)} differ (for information)")
            for x in envvars:
                lines.append(f"  {x['name']}: {_short(x['a'])} → {_short(x['b'])}")
        else:
            lines.append(f"environment variables: {len(envvars)} differ (for information; --verbose lists them)")

    for key, title in (("metrics", "metrics"), ("eval", "evaluations")):
        m = d[key]
        head = f"{title}: {m['steps_compared']} steps compared"
        if m["only_a"] or m["only_b"]:
            head += f" ({m['only_a']} only in A, {m['only_b']} only in B)"
        if m["first_diff_step"] is None:
            lines.append(f"{head}; {m['primary']} bitwise equal" + ("" if m["other_keys"] else ", all values equal"))
        else:
            lines.append(f"{head}; {m['primary']} first differs at step {m['first_diff_step']} "
                         f"({_num(m['a'])} → {_num(m['b'])}); largest |Δ| {m['max_abs_diff']:.6g} at step "
                         f"{m['max_abs_diff_step']}; {m['n_differ']} of {m['steps_compared']} steps differ")
        for k, v in m["other_keys"].items():
            lines.append(f"  {k} first differs at step {v['first_diff_step']} ({_num(v['a'])} → {_num(v['b'])})")

    o = d["order"]
    if o["first_diff_step"] is None:
        lines.append(f"order: same ({o['steps_compared']} steps compared)")
    else:
        lines.append(f"order: first differs at step {o['first_diff_step']} (position {o['position']}: sample "
                     f"{o['a_sample']} → {o['b_sample']})")
    ck = d["checkpoints"]
    extra = "".join([f"; only in A: steps {ck['only_a']}" if ck["only_a"] else "",
                     f"; only in B: steps {ck['only_b']}" if ck["only_b"] else ""])
    if ck["differ"]:
        lines.append(f"checkpoints: {len(ck['differ'])} of {ck['compared']} differ (first at step "
                     f"{ck['differ'][0]['step']}){extra}")
        from provenance.tensors import summary_line

        for c in ck["differ"]:
            if c.get("tensors"):
                lines.append(f"  step {c['step']}: {_printable(summary_line(c['tensors']))}")
    else:
        lines.append(f"checkpoints: {ck['compared']} compared, all sha256 equal{extra}")
    o = d["outputs"]
    if o["files"]:
        n = len(o["changed"]) + len(o["only_a"]) + len(o["only_b"])
        nf = o["files"]
        lines.append(f"outputs: {'same' if not n else f'{n} of {nf} files differ'} "
                     f"({nf} declared output files, by sha256)")
        for ch in o["changed"]:
            lines.append(f"  M {ch['path']}  {_short(ch['a'])} → {_short(ch['b'])}")
        for p in o["only_a"]:
            lines.append(f"  - {p} (only in A)")
        for p in o["only_b"]:
            lines.append(f"  + {p} (only in B)")
    first = d.get("first_divergence")
    if first is None:
        lines.append("first divergence: none (every batch, loss and checkpoint digest compared is equal)")
    else:
        lines.append(f"first divergence: step {first['step']} ({first['kind']}): "
                     + divergence_text(first, "A", "B"))
    mo = d["model"]
    if mo["files"]:
        n = len(mo["changed"]) + len(mo["only_a"]) + len(mo["only_b"])
        nf = mo["files"]
        lines.append(f"model: {'same' if not n else f'{n} of {nf} files differ'}"
                     + ("".join(f"\n  {p}" for p in mo["changed"] + mo["only_a"] + mo["only_b"])))
    return "\n".join(lines)
