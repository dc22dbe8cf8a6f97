"""Tolerances (`--tolerance auto|bitwise|loss=<rel>,ckpt=<rel>`, `--calibrate`): when a reproduction that is not
bitwise still reproduces, within stated bounds, under a stated noise model.

The data order is always compared exactly: a different batch is never within tolerance. Losses are
compared per step by relative difference |a - b| / max(|a|, 1e-12); checkpoints tensor by tensor
(provenance.tensors, from the safetensors files without pickle): the model and optimizer tensors by
relative L2 distance ||a - b|| / max(||a||, 1e-30), every other tensor (RNG states) exactly, and a tensor
set, shape or dtype that differs is out of bounds.

The noise model (docs/reproduce.md): reordered floating-point reductions (another thread count, CPU
kernel, BLAS, GPU) add rounding noise at every step, which training carries forward. Over the n-th step
since the last state both runs share (n = step - first_step + 1: step 0, or the restored checkpoint)
    relative loss difference          <= S * eps_loss * n
    every tensor's relative L2 (ckpt) <= S * eps_ckpt * n
with a safety factor S (SAFETY) and per-step noise eps_loss, eps_ckpt that come either from the class of
the environment difference (DEFAULT_NOISE: stated defaults) or from `--calibrate` (a short segment run
twice on this machine at two thread counts: eps = max over steps of measured / n, never below one float32
rounding, FLOOR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance.reproduce.options import Refused
from provenance.tensors import compare_entries, compare_safetensors
from provenance.tensors import within as checkpoint_within

FLOOR = 2.0 ** -23  # one float32 rounding (relative): the least per-step noise the model assumes
SAFETY = 10.0  # bounds are SAFETY x the per-step noise: a real divergence is orders of magnitude above it
# per-step noise (eps_loss, eps_ckpt) by the class of environment difference, used by auto without --calibrate.
# threads: measured on this project's 2-core development machine (docs/reproduce.md: another thread count gives
# relative loss differences of about one float32 rounding per step and a checkpoint relative L2 of about 1e-5 per
# step); cpu, gpu, gpu-tf32: stated assumptions (not measured here), wider by the precision of what differs.
DEFAULT_NOISE: dict[str, tuple[float, float, str]] = {
    "threads": (FLOOR, 1e-5, "another thread count: the same kernels, reductions in another order"),
    "cpu": (1e-6, 1e-4, "another CPU, CPU capability, BLAS/oneDNN build or torch/package version: other kernels"),
    "gpu": (1e-5, 1e-3, "a GPU without a determinism claim, or another GPU, driver, CUDA or cuDNN"),
    "gpu-tf32": (1e-3, 1e-2, "TF32 or reduced-precision reductions on either side (10-bit mantissa matmuls)"),
}
CLASS_ORDER = ("threads", "cpu", "gpu", "gpu-tf32")


@dataclass(frozen=True)
class NoiseModel:
    """Bounds that grow linearly with the steps since the last shared state: S * eps * n."""

    eps_loss: float
    eps_ckpt: float
    source: str  # "calibrated on this machine" or "default for <class>"
    cls: str = "threads"
    safety: float = SAFETY
    calibration: dict[str, Any] | None = field(default=None, compare=False)

    def loss_bound(self, n: int) -> float:
        return self.safety * self.eps_loss * max(1, n)

    def ckpt_bound(self, n: int) -> float:
        return self.safety * self.eps_ckpt * max(1, n)

    def to_dict(self) -> dict[str, Any]:
        return {"formula": "relative loss difference <= safety * eps_loss * n; each checkpoint tensor's relative "
                           "L2 <= safety * eps_ckpt * n; n = steps since the last shared state",
                "eps_loss": self.eps_loss, "eps_ckpt": self.eps_ckpt, "safety": self.safety, "class": self.cls,
                "source": self.source}


@dataclass(frozen=True)
class Tolerance:
    mode: str  # "bitwise" | "bounds"
    loss_rel: float | None = None  # fixed bounds (loss=,ckpt=); with a noise model, its bound at n = 1
    ckpt_rel: float | None = None
    asked: str = "auto"  # what --tolerance said
    why: str = ""  # how auto chose
    model: NoiseModel | None = None  # bounds growing with the step (auto, --calibrate); None: fixed bounds

    def loss_bound(self, n: int) -> float:
        assert self.loss_rel is not None
        return self.model.loss_bound(n) if self.model is not None else self.loss_rel

    def ckpt_bound(self, n: int) -> float:
        assert self.ckpt_rel is not None
        return self.model.ckpt_bound(n) if self.model is not None else self.ckpt_rel

    def to_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "mode": self.mode, "loss_rel": self.loss_rel, "ckpt_rel": self.ckpt_rel,
                "why": self.why, "model": self.model.to_dict() if self.model is not None else None,
                "calibration": self.model.calibration if self.model is not None else None}

    def text(self) -> str:
        if self.mode == "bitwise":
            return "bitwise"
        m = self.model
        if m is not None:
            return (f"loss relative difference ≤ {m.safety:g} × {m.eps_loss:.3g} × n, checkpoint tensors' relative L2 "
                    f"≤ {m.safety:g} × {m.eps_ckpt:.3g} × n at the n-th step since the shared state ({m.source})")
        return f"loss relative difference ≤ {self.loss_rel:g}, checkpoint tensors' relative L2 ≤ {self.ckpt_rel:g}"

    @classmethod
    def of_model(cls, model: NoiseModel, asked: str = "auto", why: str = "") -> Tolerance:
        return cls("bounds", model.loss_bound(1), model.ckpt_bound(1), asked=asked, why=why or model.source,
                   model=model)


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
        raise Refused(f"--tolerance {text!r}: give both loss=<rel>,ckpt=<rel>")
    return got["loss"], got["ckpt"]


# --- which noise class an environment difference belongs to (capture/env.py records the facts) --------------

_GPU_KEYS = ("cuda_version", "cudnn_version", "driver", "gpus", "cuda_available")
_TF32_KNOBS = ("cuda_matmul_allow_tf32", "cudnn_allow_tf32", "cuda_matmul_allow_fp16_reduced_precision_reduction",
               "cuda_matmul_allow_bf16_reduced_precision_reduction")


def _device_type(env: dict[str, Any]) -> str | None:
    """The device type the run recorded it trained on (env/environment.json `device`, written when the run
    ended: formats.TRAINING_DEVICE): "cpu", "cuda", "xpu", "mps", "unknown"…; None without that record."""
    from provenance import formats

    device = env.get(formats.TRAINING_DEVICE)
    used = device.get("type") if isinstance(device, dict) else None
    return used if isinstance(used, str) and used else None


def _on_gpu(env: dict[str, Any]) -> bool:
    """Did the run compute on an accelerator (a GPU)? What it recorded it used decides: any device but the CPU
    (cuda, xpu, mps, or unknown) is one; a bundle without that record (older, or a `prov run` capture) is
    taken as a GPU run where CUDA was available with GPUs."""
    used = _device_type(env)
    if used is not None:
        return used != "cpu"
    t = env.get("torch") or {}
    return bool(t.get("cuda_available") and t.get("gpus"))


def _tf32(env: dict[str, Any]) -> bool:
    t = env.get("torch") or {}
    knobs = t.get("determinism_knobs") or {}
    return _on_gpu(env) and (any(knobs.get(k) is True for k in _TF32_KNOBS)
                             or t.get("float32_matmul_precision") in ("high", "medium"))


def determinism_claim(env: dict[str, Any], run: dict[str, Any] | None = None) -> tuple[bool, str]:
    """Does the original's environment claim bitwise-repeatable numbers on the same hardware and software?
    On a CPU, yes (torch's CPU kernels are deterministic at a fixed thread count). On a GPU only with
    deterministic algorithms on, cuDNN deterministic and not benchmarking, CUBLAS_WORKSPACE_CONFIG set, and
    no TF32 / reduced-precision reductions (which are deterministic but make any kernel change visible)."""
    if not _on_gpu(env):
        return True, "a CPU run: deterministic at a fixed thread count"
    used = _device_type(env)
    if used not in (None, "cuda"):  # the determinism knobs recorded are CUDA's: they say nothing of another device
        from provenance import formats

        available = (env.get(formats.TRAINING_DEVICE) or {}).get("available")
        where = f"a run on {used}" + (f" ({', '.join(map(str, available))} available)"
                                      if isinstance(available, list) and available else "")
        return False, f"{where}: no bitwise claim (the determinism settings recorded are CUDA's)"
    t = env.get("torch") or {}
    det = (run or {}).get("determinism") or {}
    missing = []
    if not det.get("deterministic_algorithms", t.get("deterministic_algorithms")):
        missing.append("deterministic algorithms off")
    if not det.get("cudnn_deterministic", t.get("cudnn_deterministic")) or det.get(
            "cudnn_benchmark", t.get("cudnn_benchmark")):
        missing.append("cuDNN not deterministic")
    if not (det.get("cublas_workspace_config") or env.get("cublas_workspace_config")):
        missing.append("CUBLAS_WORKSPACE_CONFIG not set")
    if missing:
        return False, "a GPU run without a determinism claim (" + ", ".join(missing) + ")"
    return True, "a GPU run with deterministic algorithms, cuDNN deterministic and CUBLAS_WORKSPACE_CONFIG"


def noise_class(differences: list[dict[str, Any]], env_a: dict[str, Any] | None = None,
                env_b: dict[str, Any] | None = None) -> str | None:
    """The widest class among the significant environment differences (provenance.diff.diff_env records),
    and what either side's GPU math modes add; None when nothing differs."""
    found: set[str] = set()
    for x in differences:
        if not x.get("significant", True) or x.get("category") == "env_vars":
            continue
        cat, name = x.get("category"), str(x.get("name"))
        if cat == "threads":
            found.add("threads")
        elif cat == "device":  # one trained on a GPU, the other on the CPU
            found.add("gpu")
        elif cat == "torch" and any(_on_gpu(e or {}) for e in (env_a, env_b)):  # on a CPU they change nothing
            found.add("gpu-tf32" if name in (*_TF32_KNOBS, "float32_matmul_precision") else "gpu")
        elif cat == "torch" and name in _GPU_KEYS:
            found.add("gpu")  # one side has CUDA, the other not
        else:
            found.add("cpu")
    for e in (env_a, env_b):
        if e and _tf32(e):
            found.add("gpu-tf32")
        elif e and _on_gpu(e) and not determinism_claim(e)[0]:
            found.add("gpu")
    return max(found, key=CLASS_ORDER.index) if found else None


def resolve(asked: str, environment_differs: list[str], differences: list[dict[str, Any]] | None = None,
            env_a: dict[str, Any] | None = None, env_b: dict[str, Any] | None = None,
            run_a: dict[str, Any] | None = None, calibrated: NoiseModel | None = None) -> Tolerance:
    """The tolerance used. auto: bitwise where the original's environment claims determinism and nothing
    differs (same hardware and software, the recorded thread count); otherwise bounds from the noise model
    (calibrated when --calibrate measured it, else the default of the difference's class)."""
    parsed = parse_tolerance(asked)
    if parsed == "bitwise":
        return Tolerance("bitwise", asked=asked, why="asked for")
    if parsed != "auto":
        loss, ckpt = parsed  # type: ignore[misc]
        return Tolerance("bounds", loss, ckpt, asked=asked, why="asked for")
    claims, claim_why = determinism_claim(env_a or {}, run_a)
    if differences is None:  # only the lines are known: a difference of unknown class is "cpu"
        differences = [{"category": "cpu", "name": line, "significant": True} for line in environment_differs]
    cls = noise_class(differences, env_a, env_b)
    if cls is None and claims:
        return Tolerance("bitwise", asked=asked, why=f"the same environment as recorded ({claim_why}): bitwise is "
                                                       "expected")
    cls = cls or "gpu"
    what = ("the environment differs (" + "; ".join(environment_differs[:3])
            + (f" and {len(environment_differs) - 3} more" if len(environment_differs) > 3 else "") + ")"
            if environment_differs else claim_why)
    if calibrated is not None:
        return Tolerance.of_model(calibrated, asked, f"{what}: bounds calibrated on this machine")
    eps_l, eps_c, desc = DEFAULT_NOISE[cls]
    model = NoiseModel(eps_l, eps_c, f"default for class {cls}: {desc}", cls)
    return Tolerance.of_model(model, asked, f"{what}: the noise model's default for class {cls}")


def loss_rel(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return 0.0 if a == b else math.inf
    return abs(a - b) / max(abs(a), 1e-12)


def compare_checkpoints(a: Path, b: Path, top: int = 5) -> dict[str, Any]:
    """Two safetensors checkpoints tensor by tensor (provenance.tensors.compare_safetensors)."""
    return compare_safetensors(a, b, top)


# --- the divergence curve: per step, and at each checkpoint ---------------------------------------------


@dataclass
class _Side:
    """What the bounds read of one bundle, through the one reader (bounded; strict JSON lines)."""

    losses: dict[int, Any]
    order: dict[int, list[int]]
    steps_log: list[dict[str, Any]]
    checkpoints: dict[int, dict[str, Any]]


def _read_side(root: Path) -> _Side:
    from provenance import formats, reader
    from provenance.diff import checkpoint_entries
    from provenance.replay import STEPS_LOG

    try:
        with reader.Bundle(root) as b:
            # a non-finite loss is written as "NaN"/"Infinity"/"-Infinity" (strict JSON): decoded, never skipped
            return _Side(losses={r["step"]: _loss(r.get("loss")) for r in b.records(formats.METRICS)
                                 if isinstance(r.get("step"), int)},
                         order={s.step: s.sample_ids for s in b.order(0)}, steps_log=b.records(STEPS_LOG),
                         checkpoints=checkpoint_entries(root, b))
    except (reader.Refused, reader.BundleFileError) as exc:
        raise formats.FormatError(str(exc)) from None


def _loss(value: Any) -> Any:
    """A logged loss: a float (a non-finite one decoded from its strict-JSON name), else as logged."""
    from provenance import formats

    return formats.as_float(value) if isinstance(value, float | str) else value


def _non_finite(**values: float) -> dict[str, str]:
    """{name: "nan" | "inf" | "-inf"} of the values that are not finite (the curve writes them as null)."""
    return {k: "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") for k, v in values.items()
            if not math.isfinite(v)}


def divergence_curve(orig_root: Path, repro: Path, first_step: int, last_step: int, tol: Tolerance | None,
                     compared: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The per-step difference between the original and the reproduction: every step's loss (both, |Δ|,
    relative) and every checkpoint's largest tensor relative L2, with the bound at that step under `tol`."""
    sa, sb = _read_side(orig_root), _read_side(repro)
    ma, mb = sa.losses, sb.losses
    bounded = tol is not None and tol.mode == "bounds"
    steps = []
    for s in sorted(set(ma) & set(mb)):
        a, b = ma[s], mb[s]
        if not (first_step <= s <= last_step) or not isinstance(a, float) or not isinstance(b, float):
            continue
        rel = loss_rel(a, b)
        row = {"step": s, "loss_original": a, "loss": b, "abs_diff": abs(a - b) if math.isfinite(a - b)
               else None, "rel_diff": rel if math.isfinite(rel) else None,
               "bound": tol.loss_bound(s - first_step + 1) if bounded and tol is not None else None}
        wild = _non_finite(loss_original=a, loss=b, abs_diff=abs(a - b), rel_diff=rel)
        if wild:  # explicit: the numbers that are null here, and what they are
            row.update({k: None for k in wild}, non_finite=wild)
        steps.append(row)
    ea, eb = sa.checkpoints, sb.checkpoints
    ckpts = []
    for s in sorted(set(ea) & set(eb)):
        if not first_step <= s <= last_step:
            continue
        same = ea[s].get("sha256") == eb[s].get("sha256")
        cmp = None if same else (compared or {}).get(s) or compare_entries(orig_root, ea[s], repro, eb[s])
        row = {"step": s, "same_digest": same, "rel_l2": 0.0 if same else cmp.get("max_rel_l2"),
               "max_abs": 0.0 if same else cmp.get("max_abs"),
               "worst": [] if same else cmp.get("worst", [])[:3],
               "values_compared": True if same else bool(cmp.get("values_compared")),
               "bound": tol.ckpt_bound(s - first_step + 1) if bounded and tol is not None else None}
        wild = _non_finite(**{k: row[k] for k in ("rel_l2", "max_abs") if isinstance(row[k], float)})
        if wild:  # a NaN or inf in a tensor: null in the curve, named here
            row.update({k: None for k in wild}, non_finite=wild)
        ckpts.append(row)
    return {"first_step": first_step, "last_step": last_step,
            "n": "steps since the last shared state: step - first_step + 1", "steps": steps, "checkpoints": ckpts}


# --- calibration: the noise floor of this machine ---------------------------------------------------------


def measure_noise(a: Path, b: Path, first_step: int, last_step: int) -> dict[str, Any]:
    """The noise floor between two runs of the same segment on this machine (two thread counts): per step the
    relative loss difference, per checkpoint the largest tensor relative L2, and the per-step noise
    eps = max(measured / n) (n = step - first_step + 1), never below FLOOR. Refused when the two runs did not
    train on the same batches (a calibration must differ in the floats only)."""
    oa, ob = _read_side(a).order, _read_side(b).order
    bad = [s for s in sorted(set(oa) & set(ob)) if first_step <= s <= last_step and oa[s] != ob[s]]
    if bad:
        raise Refused(f"--calibrate: the two calibration runs trained on other batches at step {bad[0]}: "
                      "the segment is not repeatable on this machine")
    curve = divergence_curve(a, b, first_step, last_step, None)
    if not curve["steps"]:
        raise Refused("--calibrate: the calibration runs logged no common step")
    # a NaN or inf difference is no noise floor: ignored it would read as 0 (a loss) or make every bound infinite
    wild = [c["step"] for c in curve["steps"] if c["rel_diff"] is None] + \
           [c["step"] for c in curve["checkpoints"] if c["values_compared"]
            and (c.get("non_finite") or not math.isfinite(c["rel_l2"] or 0.0))]
    if wild:
        raise Refused(f"--calibrate: the two calibration runs differ by a non-finite amount (NaN or inf) at step "
                      f"{min(wild)}: that is no noise floor; nothing can be calibrated from them")
    loss_ps = max(((c["rel_diff"] or 0.0) / (c["step"] - first_step + 1) for c in curve["steps"]), default=0.0)
    ck_ps = max(((c["rel_l2"] or 0.0) / (c["step"] - first_step + 1) for c in curve["checkpoints"]
                 if c["values_compared"]), default=0.0)
    return {"first_step": first_step, "last_step": last_step,
            "loss_rel": [[c["step"], c["rel_diff"]] for c in curve["steps"]],
            "checkpoint_rel_l2": [[c["step"], c["rel_l2"]] for c in curve["checkpoints"]],
            "max_loss_rel": max((c["rel_diff"] or 0.0 for c in curve["steps"]), default=0.0),
            "max_ckpt_rel_l2": max((c["rel_l2"] or 0.0 for c in curve["checkpoints"]), default=0.0),
            "loss_per_step": loss_ps, "ckpt_per_step": ck_ps, "bitwise_equal": all(
                c["rel_diff"] == 0.0 for c in curve["steps"]) and all(c["same_digest"] for c in curve["checkpoints"]),
            "checkpoints": len(curve["checkpoints"])}


def calibrated_model(measured: dict[str, Any], safety: float = SAFETY) -> NoiseModel:
    """The noise model from a calibration: eps = the measured per-step noise, never below FLOOR. Without a
    checkpoint in the calibration segment, eps_ckpt is the threads default (stated in the report)."""
    eps_c = measured["ckpt_per_step"] if measured.get("checkpoints") else DEFAULT_NOISE["threads"][1]
    return NoiseModel(max(measured["loss_per_step"], FLOOR), max(eps_c, FLOOR),
                      f"calibrated on this machine: steps {measured['first_step']}–{measured['last_step']} run at "
                      f"thread counts {measured.get('threads')}", "calibrated", safety, calibration=measured)


# --- the bounds: which step is the first out of them -------------------------------------------------


def check_bounds(orig_root: Path, orig_checkpoints: dict[int, str], repro: Path, first_step: int, last_step: int,
                 tol: Tolerance, compared: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every step of [first_step, last_step] against `tol`: the batch exactly, the loss and every checkpoint
    within the bound at its step. `compared`: step -> tensor comparison already made (the diff's), so that
    each checkpoint is read once. Returns {"first_out": the first divergence out of bounds (provenance.replay's
    definition) or None, "max_loss_rel", "max_loss_rel_step", "max_ckpt_rel_l2", "checkpoints"}."""
    from provenance.replay import first_divergence

    assert tol.loss_rel is not None and tol.ckpt_rel is not None
    sa, sb = _read_side(orig_root), _read_side(repro)
    found: list[dict[str, Any] | None] = []
    for r in sb.steps_log:
        if isinstance(r.get("step"), int) and r.get("order") in ("differs", "not recorded"):
            found.append({"step": r["step"], "kind": "order", "detail": "the batch differs (order is always "
                          "compared exactly: a different batch is never within tolerance)"})
            break
    oa, ob = sa.order, sb.order
    bad_order = [s for s in sorted(set(oa) & set(ob)) if first_step <= s <= last_step and oa[s] != ob[s]]
    if bad_order:
        found.append({"step": bad_order[0], "kind": "order", "detail": "the batch differs (order is always compared "
                      "exactly)"})
    ma, mb = sa.losses, sb.losses
    max_rel, max_step = 0.0, None
    for s in sorted(set(ma) & set(mb)):
        a, b = ma[s], mb[s]
        if not (first_step <= s <= last_step) or not isinstance(a, float) or not isinstance(b, float):
            continue
        rel = loss_rel(a, b)
        if rel > max_rel:
            max_rel, max_step = rel, s
        bound = tol.loss_bound(s - first_step + 1)
        if rel > bound:
            found.append({"step": s, "kind": "loss", "loss_recorded": a, "loss": b, "abs_diff": abs(a - b),
                          "rel_diff": rel, "bound": bound})
            break
    ours, theirs = sb.checkpoints, sa.checkpoints
    ckpts: list[dict[str, Any]] = []
    for s in sorted(orig_checkpoints):
        if not first_step <= s <= last_step:
            continue
        if s not in ours:
            found.append({"step": s, "kind": "checkpoint missing"})
            break
        entry: dict[str, Any] = {"step": s, "same_digest": ours[s].get("sha256") == orig_checkpoints[s]}
        if not entry["same_digest"]:
            cmp = (compared or {}).get(s) or compare_entries(orig_root, theirs.get(s, {}), repro, ours[s])
            bound = tol.ckpt_bound(s - first_step + 1)
            entry.update(cmp, bound=bound)
            if not checkpoint_within(cmp, bound):
                found.append({"step": s, "kind": "checkpoint", "rel_l2": cmp.get("max_rel_l2"), "bound": bound,
                              "worst": cmp.get("worst", [])[:3], "mismatched": cmp.get("mismatched", [])[:3],
                              "only_a": cmp.get("only_a", [])[:3], "only_b": cmp.get("only_b", [])[:3],
                              "exact_differ": cmp.get("exact_differ", [])[:3], "error": cmp.get("error"),
                              "values_compared": cmp.get("values_compared")})
                ckpts.append(entry)
                break
        ckpts.append(entry)
    return {"first_out": first_divergence(found), "max_loss_rel": max_rel, "max_loss_rel_step": max_step,
            "max_ckpt_rel_l2": max((c.get("max_rel_l2") or 0.0 for c in ckpts), default=0.0), "checkpoints": ckpts}


def out_of_bounds_text(first: dict[str, Any]) -> str:
    k, s = first.get("kind"), first.get("step")
    if k == "loss":
        return (f"the loss of step {s} is out of tolerance: {first['loss_recorded']!r} recorded, {first['loss']!r} now "
                f"(relative difference {first['rel_diff']:.3g} > {first['bound']:.3g})")
    if k == "checkpoint":
        what = []
        if first.get("mismatched"):
            what.append("tensor shapes or dtypes differ: " + ", ".join(m["tensor"] for m in first["mismatched"]))
        if first.get("only_a") or first.get("only_b"):
            what.append("the tensor sets differ: " + ", ".join([*first.get("only_a", []), *first.get("only_b", [])]))
        if first.get("exact_differ"):
            what.append("exact tensors differ: " + ", ".join(first["exact_differ"]))
        if first.get("error") or (not first.get("values_compared", True) and not what):
            what.append(first.get("error") or "its tensors could not be compared (DCP shards are not read without "
                        "unpickling): only a bitwise match reproduces it")
        if not what:
            worst = first.get("worst") or [{}]
            what.append(f"relative L2 {first['rel_l2']:.3g} > {first['bound']:.3g} (most: {worst[0].get('tensor')})")
        return f"the checkpoint of step {s} is out of tolerance: " + "; ".join(what)
    if k == "checkpoint missing":
        return f"the original saved a checkpoint at step {s}; the reproduction did not"
    return f"the batch of step {s} differs (order is always compared exactly)"
