"""The records of a captured command (provenance.capture.inject), read back and finished at the seal.

`finalize(root)` runs in the `prov run` parent when the command has ended (and in `prov
seal` after a crash): it drops torn tails left by a killed process, rebuilds
checkpoints/index.json from what was hashed, and returns what run.json should say about
the command (its own seeds and determinism settings, not the wrapper's). `read(root)`
gives a reproduction the original's per-step records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance import formats
from provenance.bundle import write_checkpoint_index


def is_captured(root: Path) -> bool:
    return (root / formats.CAPTURE_DIR).is_dir() or (root / formats.capture_paths(0).order).is_file()


def _trim_jsonl(path: Path) -> bool:
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
    return True


def _trim_order(root: Path, rank: int) -> bool:
    """Whole step records, and exactly the ids they claim (a kill between the two writes leaves extra ids)."""
    _, ids_rel, steps_rel, version = formats.order_files(root, rank)
    width = formats.order_id_width(version)
    steps_path, ids_path = root / steps_rel, root / ids_rel
    if not steps_path.is_file():
        return False
    raw = steps_path.read_bytes()
    usable = len(raw) - len(raw) % formats.ORDER_STEP_RECORD.size
    n_ids = sum(n for _s, n, _c in formats.ORDER_STEP_RECORD.iter_unpack(raw[:usable]))
    changed = False
    if usable != len(raw):
        with open(steps_path, "r+b") as f:
            f.truncate(usable)
        changed = True
    if ids_path.is_file() and ids_path.stat().st_size > width * n_ids:
        with open(ids_path, "r+b") as f:
            f.truncate(width * n_ids)
        changed = True
    return changed


def _ranks(root: Path) -> list[int]:
    out = set()
    for p in (root / formats.CAPTURE_DIR).glob("order.rank*.jsonl"):
        try:
            out.add(int(p.name[len("order.rank"):-len(".jsonl")]))
        except ValueError:
            continue
    return sorted(out) or [0]


def _metrics_and_order_agree(root: Path, rank: int) -> None:
    """A kill between a step's writes: keep the steps recorded in every file (order first, then metrics)."""
    paths = formats.capture_paths(rank)
    order_steps = [int(r["step"]) for r in formats.read_jsonl(root / paths.order) if isinstance(r.get("step"), int)]
    metric_steps = [int(r["step"]) for r in formats.read_jsonl(root / paths.metrics) if isinstance(r.get("step"), int)]
    _, ids_rel, steps_rel, version = formats.order_files(root, rank)
    native = [s.step for s in formats.read_order(root / ids_rel, root / steps_rel)]
    last = min((max(x) if x else 0) for x in (order_steps, metric_steps, native))
    for rel, steps in ((paths.order, order_steps), (paths.metrics, metric_steps)):
        if steps and max(steps) > last:
            lines = (root / rel).read_bytes().split(b"\n")
            keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= last]
            formats.atomic_write_bytes(root / rel, b"".join(ln + b"\n" for ln in keep))
    if native and max(native) > last:
        raw = (root / steps_rel).read_bytes()
        recs = list(formats.ORDER_STEP_RECORD.iter_unpack(raw))
        keep_n = sum(1 for s, _n, _c in recs if s <= last)
        n_ids = sum(n for s, n, _c in recs[:keep_n])
        with open(root / steps_rel, "r+b") as f:
            f.truncate(keep_n * formats.ORDER_STEP_RECORD.size)
        with open(root / ids_rel, "r+b") as f:
            f.truncate(formats.order_id_width(version) * n_ids)


def _first(calls: list[dict[str, Any]], prefix: str) -> Any:
    return next((c.get("value") for c in calls if str(c.get("function", "")).startswith(prefix)), None)


def finalize(root: Path) -> dict[str, Any]:
    """Make the captured records whole after the command ended; return run.json's updates (may be empty)."""
    if not is_captured(root):
        return {}
    repaired = []
    for rank in _ranks(root):
        paths = formats.capture_paths(rank)
        for rel in (paths.order, paths.seeds, paths.logged, paths.checkpoints, paths.events, paths.metrics):
            if _trim_jsonl(root / rel):
                repaired.append(rel)
        if _trim_order(root, rank):
            repaired.append(formats.order_files(root, rank)[2])
        _metrics_and_order_agree(root, rank)
    p0 = formats.capture_paths(0)
    hashed = list(formats.read_jsonl(root / p0.checkpoints))
    if hashed:
        write_checkpoint_index(root, hashed, captured=True)
    seeds = list(formats.read_jsonl(root / p0.seeds))
    facts_path = root / p0.facts
    facts = formats.read_json(facts_path) if facts_path.is_file() else {}
    steps = sum(1 for _ in formats.read_jsonl(root / p0.order))
    evidence: dict[str, int] = {}
    for r in formats.read_jsonl(root / p0.order):
        evidence[str(r.get("evidence"))] = evidence.get(str(r.get("evidence")), 0) + 1
    events = list(formats.read_jsonl(root / p0.events))
    out: dict[str, Any] = {"capture": {"schema": formats.CAPTURE_SCHEMA, "steps": steps, "evidence": evidence,
                                       "seed_calls": len(seeds), "checkpoints": len(hashed),
                                       "observer_failures": sum(1 for e in events
                                                                if e.get("event") == "observer_failed"),
                                       "repaired": repaired}}
    if seeds:
        torch_seed = _first(seeds, "torch.")
        py_seed = _first(seeds, "random.")
        np_seed = _first(seeds, "numpy.")
        hf_seed = _first(seeds, "transformers.")
        main = next(v for v in (hf_seed, torch_seed, py_seed, np_seed, seeds[0].get("value")) if v is not None)
        out["seed"] = main
        out["seeds"] = {"python": py_seed if py_seed is not None else hf_seed,
                        "numpy": np_seed if np_seed is not None else hf_seed,
                        "torch": torch_seed if torch_seed is not None else hf_seed,
                        "source": "captured from the command (capture/seeds.rank0.jsonl)"}
    else:
        out["seed"] = None
        out["seeds"] = {"python": None, "numpy": None, "torch": None,
                        "source": "the command set no seed (none captured)"}
    if facts:
        keys = ("num_threads", "num_interop_threads", "deterministic_algorithms", "fill_uninitialized_memory",
                "cublas_workspace_config", "cudnn_deterministic", "cudnn_benchmark", "deterministic_warn_only",
                "float32_matmul_precision")
        out["determinism"] = {k: facts.get(k) for k in keys if k in facts}
        out["determinism"]["source"] = "captured from the command at its first step"
    return out


# --- reading a captured original ------------------------------------------------------------------


@dataclass
class CapturedStep:
    step: int
    evidence: str
    ids: tuple[int, ...] | None
    content: list[str]
    loss: float | None
    loss_bits: str | None
    micro_losses: list[float] = field(default_factory=list)
    lr: Any = None


@dataclass
class Captured:
    steps: dict[int, CapturedStep]
    checkpoints: list[dict[str, Any]]
    seeds: list[dict[str, Any]]
    logged: list[dict[str, Any]]
    facts: dict[str, Any]


def _number(v: Any) -> Any:
    """A captured loss: a non-finite one is written "NaN"/"Infinity"/"-Infinity" (strict JSON): that float."""
    return formats.as_float(v) if isinstance(v, str) and v in formats.NON_FINITE else v


def read(root: Path, rank: int = 0) -> Captured:
    paths = formats.capture_paths(rank)
    _, ids_rel, steps_rel, _v = formats.order_files(root, rank)
    native = {s.step: s.sample_ids for s in formats.read_order(root / ids_rel, root / steps_rel)}
    metrics = {int(r["step"]): r for r in formats.read_jsonl(root / paths.metrics) if isinstance(r.get("step"), int)}
    steps: dict[int, CapturedStep] = {}
    for r in formats.read_jsonl(root / paths.order):
        s = r.get("step")
        if not isinstance(s, int):
            continue
        m = metrics.get(s, {})
        steps[s] = CapturedStep(step=s, evidence=str(r.get("evidence")), ids=native.get(s),
                                content=list(r.get("content") or []),
                                loss=_number(m.get("loss")), loss_bits=m.get("loss_bits"),
                                micro_losses=[_number(x) for x in m.get("micro_losses") or []], lr=m.get("lr"))
    facts_path = root / paths.facts
    return Captured(steps=steps, checkpoints=list(formats.read_jsonl(root / paths.checkpoints)),
                    seeds=list(formats.read_jsonl(root / paths.seeds)),
                    logged=list(formats.read_jsonl(root / paths.logged)),
                    facts=formats.read_json(facts_path) if facts_path.is_file() else {})
