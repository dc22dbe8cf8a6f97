"""Checks of what training produced: metrics and evaluations, checkpoints, the final model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from provenance import formats
from provenance.audit.results import CheckResult, SkipCheck, sha
from provenance.audit.view import BundleFileError, BundleView, is_hex64, is_int
from provenance.records import CheckpointEntry


def check_metrics(view: BundleView, out: CheckResult) -> None:
    status = view.run_info.get("status")
    if not view.has(formats.METRICS):
        if status == "completed":
            raise BundleFileError(formats.METRICS, "missing: a completed run logs its steps")
        raise SkipCheck(f"no metrics logged (run {status})")
    records, problems = view.jsonl(formats.METRICS)
    for p in problems:
        out.error(p, file=formats.METRICS)
    steps: list[int] = []
    gaps = 0
    for line, rec in records:
        step = rec.get("step")
        if not is_int(step):
            out.error(f"line {line}: 'step' must be an integer, got {step!r}", file=formats.METRICS)
            continue
        if steps and step != steps[-1] + 1:
            gaps += 1
            if gaps <= 5:
                what = "repeats" if step <= steps[-1] else "skips ahead from"
                out.error(f"line {line}: step {step} {what} step {steps[-1]}: metric steps must be contiguous",
                          file=formats.METRICS, expected=str(steps[-1] + 1), actual=str(step))
        steps.append(step)
    if gaps > 5:
        out.error(f"{gaps} discontinuities in all", file=formats.METRICS)
    if not steps and status == "completed":
        out.warn("a completed run logged no steps", file=formats.METRICS)
    if view.has(formats.EVALS):
        erecs, eproblems = view.jsonl(formats.EVALS)
        for p in eproblems:
            out.error(p, file=formats.EVALS)
        last = steps[-1] if steps else None
        for line, rec in erecs:
            s = rec.get("step")
            if not is_int(s):
                out.error(f"line {line}: 'step' must be an integer, got {s!r}", file=formats.EVALS)
            elif last is not None and s > last:
                out.error(f"line {line}: an evaluation at step {s}, after the last logged step {last}",
                          file=formats.EVALS)
    out.summary = f"steps {steps[0]}..{steps[-1]}, contiguous" if steps and not gaps else f"{len(steps)} steps"


def check_checkpoints(view: BundleView, out: CheckResult) -> None:
    idx_rel = formats.CHECKPOINT_INDEX
    on_disk = [f for f in view.under(formats.CHECKPOINT_DIR) if f != idx_rel]
    if not view.has(idx_rel):
        for rel in on_disk:
            out.error(f"{rel} is not in a checkpoint index ({idx_rel} is missing)", file=rel)
        if not on_disk:
            raise SkipCheck("no checkpoints")
        return
    try:
        index = view.checkpoint_index()  # typed and strict: schema, each entry's step, path, sha256, size
    except BundleFileError as exc:
        raise BundleFileError(idx_rel, f"not a checkpoint index ({formats.CHECKPOINT_INDEX_SCHEMA}): "
                                       f"{exc.message}") from None
    assert index is not None
    metric_steps = set(view.metric_steps() or [])
    indexed: set[str] = set()
    seen_steps: set[int] = set()
    for i, entry in enumerate(index.checkpoints):
        if not is_hex64(entry.sha256):
            out.error(f"checkpoints[{i}] needs a step, a path and a hex sha256", file=idx_rel)
            continue
        step, rel = entry.step, entry.path
        if entry.format == formats.DCP_FORMAT:
            if step in seen_steps:
                out.error(f"step {step} is indexed twice", file=idx_rel)
            seen_steps.add(step)
            indexed.update(_check_sharded(view, entry, out))
            if metric_steps and step not in metric_steps:
                out.error(f"checkpoint step {step} does not appear in {formats.METRICS}", file=rel)
            continue
        try:
            view.path(rel, where=idx_rel)
        except BundleFileError as exc:  # missing, or a path that escapes the bundle (never opened)
            out.error(f"the checkpoint of step {step}: {exc.message}", file=idx_rel, expected=sha(entry.sha256))
            continue
        indexed.add(rel)
        if step in seen_steps:
            out.error(f"step {step} is indexed twice", file=idx_rel)
        seen_steps.add(step)
        if rel != formats.checkpoint_name(step):
            out.warn(f"the checkpoint of step {step} is named {rel}, not {formats.checkpoint_name(step)}", file=rel)
        if view.digest(rel) != entry.sha256:
            out.error(f"the checkpoint of step {step} does not match its index", file=rel,
                      expected=sha(entry.sha256), actual=sha(view.digest(rel)))
        if entry.size is not None and entry.size != view.size(rel):
            out.error(f"has {view.size(rel)} bytes, the index says {entry.size}", file=rel)
        if metric_steps and step not in metric_steps:
            out.error(f"checkpoint step {step} does not appear in {formats.METRICS}", file=rel)
        elif not metric_steps:
            out.error(f"checkpoint step {step} cannot be matched: {formats.METRICS} has no steps", file=rel)
        try:
            header = view.safetensors_header(rel)
        except BundleFileError as exc:  # a malformed header or one that claims what the file cannot hold
            out.error(exc.message, file=rel)
            continue
        try:
            meta = header.fullyopen_metadata()
        except BundleFileError as exc:
            out.error(f"metadata: {exc.message}", file=rel)
            continue
        mstep = meta.get("step")
        if mstep is not None and str(mstep) != str(step):
            out.error(f"the checkpoint's own metadata says step {mstep}, the index says {step}", file=rel,
                      expected=str(step), actual=str(mstep))
    partial: dict[str, list[str]] = {}
    for rel in on_disk:
        if rel in indexed:
            continue
        folder, _, _ = rel.rpartition("/")
        if folder != formats.CHECKPOINT_DIR and folder.startswith(formats.CHECKPOINT_DIR + "/step-"):
            partial.setdefault(folder, []).append(rel)  # a sharded checkpoint's folder that was never indexed
        else:
            out.error(f"{rel} is not in the checkpoint index", file=rel, actual=sha(view.digest(rel)))
    completed = view.run_info.get("status") == "completed"
    for folder, files in sorted(partial.items()):
        msg = (f"{folder}/ is an incomplete sharded checkpoint ({len(files)} files, not indexed): "
               "a rank stopped during the save; it is not a valid checkpoint")
        if folder in {e.path for e in index.checkpoints}:
            for rel in files:
                out.error(f"{rel} is not listed in the index entry of its checkpoint", file=rel,
                          actual=sha(view.digest(rel)))
        elif completed:
            out.error(msg, file=folder)
        else:
            out.warn(msg, file=folder)
    out.summary = f"{len(seen_steps)} checkpoints, digests and steps agree" if not out.errors \
        else f"{len(seen_steps)} checkpoints indexed"


def _check_sharded(view: BundleView, e: CheckpointEntry, out: CheckResult) -> set[str]:
    """A DCP checkpoint's index entry against its folder: every file there, with its size and sha256
    (from the integrity pass: each byte read once), every rank present, the content digest. The pickled
    `.metadata` is hashed like any file and never parsed. Returns the files it accounts for."""
    step, rel = e.step, e.path.rstrip("/")
    files, world = e.files, e.world_size
    if files is None or world is None or world < 1:
        out.error(f"the sharded checkpoint of step {step} needs files and a world size", file=formats.CHECKPOINT_INDEX)
        return set()
    if rel != formats.dcp_checkpoint_dir(step):
        out.warn(f"the sharded checkpoint of step {step} is at {rel}, not {formats.dcp_checkpoint_dir(step)}", file=rel)
    accounted: set[str] = set()
    ranks_with_shards: set[int] = set()
    ok = True
    for f in files:
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not is_hex64(f.get("sha256")) \
                or not f["path"].startswith(rel + "/"):
            out.error(f"the sharded checkpoint of step {step}: a malformed file entry", file=formats.CHECKPOINT_INDEX)
            ok = False
            continue
        frel = f["path"]
        accounted.add(frel)
        name = frel.rsplit("/", 1)[-1]
        if is_int(f.get("rank")) and name.endswith(".distcp") and view.has(frel):
            ranks_with_shards.add(f["rank"])
        if not view.has(frel):
            out.error(f"shard file {frel} of the checkpoint of step {step} (rank {f.get('rank')}) is missing",
                      file=frel, expected=sha(f["sha256"]))
            ok = False
            continue
        if view.digest(frel) != f["sha256"]:
            out.error(f"shard file of the checkpoint of step {step} does not match its index", file=frel,
                      expected=sha(f["sha256"]), actual=sha(view.digest(frel)))
            ok = False
        if is_int(f.get("size")) and f["size"] != view.size(frel):
            out.error(f"has {view.size(frel)} bytes, the index says {f['size']}", file=frel)
            ok = False
    missing_ranks = sorted(set(range(world)) - ranks_with_shards)
    if missing_ranks:
        out.error(f"the sharded checkpoint of step {step} has no shard file of ranks {missing_ranks} "
                  f"(world size {world})", file=rel)
    for r in e.extra.get("ranks") or []:
        if isinstance(r, dict) and isinstance(r.get("record"), str):
            accounted.add(r["record"])
    if ok and formats.dcp_content_digest(files) != e.sha256:
        out.error(f"the content digest of the sharded checkpoint of step {step} does not match its files",
                  file=formats.CHECKPOINT_INDEX, expected=sha(e.sha256))
    return accounted


# parameter count implied by a model config: model_type -> f(config, stored names) -> (expected, ignored names)
ParamFormula = Callable[[dict[str, Any], dict[str, list[int]]], tuple[int, set[str], list[str]]]
PARAMETER_FORMULAS: dict[str, ParamFormula] = {}


def _positive(cfg: dict[str, Any], key: str) -> int:
    v = cfg.get(key)
    if not is_int(v) or v <= 0:
        raise BundleFileError(f"{formats.MODEL_DIR}/config.json", f"{key} must be a positive integer, got {v!r}")
    return v


def _gpt2_parameters(cfg: dict[str, Any], shapes: dict[str, list[int]]) -> tuple[int, set[str], list[str]]:
    """GPT-2 (transformers' GPT2LMHeadModel / GPT2Model) as save_pretrained stores it."""
    v, p, e, n_layer = (_positive(cfg, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer"))
    inner = cfg.get("n_inner") if is_int(cfg.get("n_inner")) and cfg["n_inner"] > 0 else 4 * e
    per_layer = (2 * e  # ln_1
                 + e * 3 * e + 3 * e  # attn.c_attn
                 + e * e + e  # attn.c_proj
                 + 2 * e  # ln_2
                 + e * inner + inner  # mlp.c_fc
                 + inner * e + e)  # mlp.c_proj
    if cfg.get("add_cross_attention"):
        per_layer += (e * e + e) + (e * 2 * e + 2 * e) + (e * e + e) + 2 * e
    total = v * e + p * e + n_layer * per_layer + 2 * e  # wte, wpe, blocks, ln_f
    ignored: set[str] = set()
    notes: list[str] = []
    # causal-mask buffers older transformers versions saved: not parameters
    for name in shapes:
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            ignored.add(name)
    if ignored:
        notes.append(f"{len(ignored)} attention-mask buffers are not counted")
    head = next((n for n in shapes if n == "lm_head.weight" or n.endswith(".lm_head.weight")), None)
    tied = cfg.get("tie_word_embeddings", True) is not False
    if tied:
        if head is not None:
            ignored.add(head)
            notes.append("lm_head.weight is stored although tied to the embeddings: not counted twice")
    else:
        total += v * e
    return total, ignored, notes


PARAMETER_FORMULAS["gpt2"] = _gpt2_parameters


def _torch_module_parameters(cfg: dict[str, Any], shapes: dict[str, list[int]]) -> tuple[int, set[str], list[str]]:
    """A plain torch module saved by run.save_model: the tensors its config.json describes, shape for shape."""
    rel = f"{formats.MODEL_DIR}/config.json"
    described = cfg.get("tensors")
    if cfg.get("schema") != formats.TORCH_MODULE_SCHEMA or not isinstance(described, dict):
        raise BundleFileError(rel, f"model_type torch-module needs schema {formats.TORCH_MODULE_SCHEMA} and tensors")
    expected = 0
    for name, t in described.items():
        shape = t.get("shape") if isinstance(t, dict) else None
        if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
            raise BundleFileError(rel, f"tensors.{name}.shape must be a list of non-negative integers")
        if shapes.get(name, shape) != shape:
            raise BundleFileError(rel, f"tensor {name!r} is {shapes[name]} in the weights, {shape} in the description")
        n = 1
        for d in shape:
            n *= d
        expected += n
    return expected, set(), [f"{cfg.get('class')}"]


PARAMETER_FORMULAS["torch-module"] = _torch_module_parameters

# run config (config.json "config.model") keys -> model/config.json keys, per model type
_RUN_CONFIG_KEYS = {"gpt2": {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd",
                             "block_size": "n_positions", "vocab_size": "vocab_size"}}


def check_model(view: BundleView, out: CheckResult) -> None:
    mdir = formats.MODEL_DIR
    files = view.under(mdir)
    status = view.run_info.get("status")
    if not files:
        if status == "completed" and not view.run_info.get("stopped_by_replay"):
            raise BundleFileError(f"{mdir}/", "missing: a completed run saves its final model")
        if status == "completed":  # a reproduction stopped after the steps it was asked to check
            raise SkipCheck("no final model (a reproduction stopped after the steps it checked)")
        raise SkipCheck(f"no final model (run {status})")
    cfg_rel = f"{mdir}/config.json"
    cfg = view.json(cfg_rel)
    if not isinstance(cfg, dict):
        raise BundleFileError(cfg_rel, "not a JSON object")
    index_rel = f"{mdir}/model.safetensors.index.json"
    if view.has(index_rel):
        idx = view.json(index_rel)
        wmap = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wmap, dict) or not wmap:
            raise BundleFileError(index_rel, "has no weight_map")
        shards = sorted({f"{mdir}/{s}" for s in wmap.values() if isinstance(s, str)})
    elif view.has(f"{mdir}/model.safetensors"):
        shards = [f"{mdir}/model.safetensors"]
    else:
        pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
        raise BundleFileError(f"{mdir}/model.safetensors", "missing" + (
            f"; {', '.join(pickles)} is pickle-based and is never loaded by an audit" if pickles else ""))
    shapes: dict[str, list[int]] = {}
    for shard in shards:
        try:
            header = view.safetensors_header(shard, where=index_rel if len(shards) > 1 else shard)
        except BundleFileError as exc:  # an escaping name, a missing shard, a malformed or lying header
            out.error(exc.message, file=exc.rel)
            return
        for k, t in header.tensors.items():
            if k in shapes:
                out.error(f"tensor {k!r} is stored twice", file=shard)
            shapes[k] = list(t.shape)
    count = 0
    mtype = cfg.get("model_type")
    formula = PARAMETER_FORMULAS.get(mtype) if isinstance(mtype, str) else None
    ignored: set[str] = set()
    notes: list[str] = []
    expected: int | None = None
    if formula is not None:
        expected, ignored, notes = formula(cfg, shapes)
    for k, shape in shapes.items():
        if k in ignored:
            continue
        n = 1
        for d in shape:
            n *= d
        count += n
    if expected is None:
        out.warn(f"no parameter formula for model_type {mtype!r}: counted {count:,} parameters, not compared",
                 file=cfg_rel)
    elif count != expected:
        out.error(f"the weights hold {count:,} parameters; the config ({mtype}) implies {expected:,}",
                  file=shards[0], expected=str(expected), actual=str(count))
    run_cfg = view.try_json(formats.CONFIG_JSON)
    model_section = (run_cfg.get("config") or {}).get("model") if isinstance(run_cfg, dict) else None
    if isinstance(model_section, dict) and isinstance(mtype, str):
        for rk, mk in _RUN_CONFIG_KEYS.get(mtype, {}).items():
            if rk in model_section and mk in cfg and model_section[rk] != cfg[mk]:
                out.error(f"config.json model.{rk} is {model_section[rk]!r} but {cfg_rel} {mk} is {cfg[mk]!r}",
                          file=cfg_rel, expected=repr(model_section[rk]), actual=repr(cfg[mk]))
    out.summary = f"{count:,} parameters in {len(shapes) - len(ignored)} tensors" + (
        f"; the {mtype} config implies {expected:,}" if expected is not None else "") + (
        f" ({'; '.join(notes)})" if notes else "")
