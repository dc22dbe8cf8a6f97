"""`prov merge`: average checkpoints of one model (uniform or weighted "souping") into a new bundle.

    prov merge runs/<stage1> runs/<stage2>/checkpoints/step-00000100.safetensors --weights 0.5,0.5

Each input is a checkpoint of the default training script (`model.<name>` tensors) or a bundle
folder / model folder (its model/model.safetensors). The average is taken in a fixed order in
float32 (bitwise repeatable at the same thread count); the new bundle is a normal `start_run`
bundle whose model/ is the merged model, and whose lineage.json records each input as a
`merge` edge with its weight. Config and tokenizer come from the first input's bundle.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provenance import formats
from provenance.bundle import append_note
from provenance.config import ConfigError
from provenance.lineage.edges import file_digest
from provenance.lineage.observer import LineageCallback

TIED_SUFFIXES = ("lm_head.weight",)  # tied to the input embedding in the default model (GPT-2)


class MergeError(ConfigError):
    """Inputs that cannot be merged or loaded (bad input, exit 2); the message names the input and the tensor."""


def weights_file(path: str | os.PathLike[str]) -> Path:
    """The safetensors file of an input: a file as given, a bundle's model/, or a model folder's."""
    p = Path(path)
    for cand in (p, p / formats.MODEL_DIR / "model.safetensors", p / "model.safetensors"):
        if cand.is_file():
            return cand
    raise MergeError(f"{path}: no checkpoint or model.safetensors there")


def model_folder(path: str | os.PathLike[str]) -> Path:
    """Where an input's config.json and tokenizer are: its bundle's model/, or its own folder."""
    p = weights_file(path)
    for cand in (p.parent, p.parent.parent / formats.MODEL_DIR, p.parent.parent.parent / formats.MODEL_DIR):
        if (cand / "config.json").is_file():
            return cand
    raise MergeError(f"{path}: no model config (config.json) next to it or in its bundle's {formats.MODEL_DIR}/")


def read_model_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model's tensors of a checkpoint (without the `model.` prefix) or of a model file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = weights_file(path)
    with safe_open(str(p), framework="pt") as f:
        is_checkpoint = "fullyopen" in (f.metadata() or {})
    tensors = load_file(str(p))
    if is_checkpoint:
        return {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    return tensors


def load_weights(model: Any, path: str | os.PathLike[str]) -> None:
    """Warm start: load only the weights of a checkpoint or model file into `model` (no optimizer, no RNG).
    Missing tensors other than tied ones are an error naming them."""
    load_state(model, read_model_tensors(path), str(path))


def load_state(model: Any, tensors: dict[str, Any], where: str) -> None:
    """Load a model's tensors; a missing tensor other than a tied one is an error naming it."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    bad = [k for k in missing if k not in tied and not k.endswith(TIED_SUFFIXES)]
    if bad or unexpected:
        raise MergeError(f"{where}: does not fit the model (missing {bad[:3]}, unexpected {list(unexpected)[:3]})")


def average(states: Sequence[dict[str, Any]], weights: Sequence[float], names: Sequence[str]) -> dict[str, Any]:
    import torch

    # a model file drops tied copies (lm_head.weight) that a checkpoint keeps: compare without them
    common = set.intersection(*(set(s) for s in states))
    dropped = {k for s in states for k in s} - common
    if all(k.endswith(TIED_SUFFIXES) for k in dropped):
        states = [{k: v for k, v in s.items() if k in common} for s in states]
    first = states[0]
    for s, name in zip(states[1:], names[1:], strict=True):
        if set(s) != set(first):
            diff = sorted(set(s) ^ set(first))
            raise MergeError(f"{name}: its tensors differ from {names[0]}'s (e.g. {diff[0]})")
        for k in first:
            if s[k].shape != first[k].shape or s[k].dtype != first[k].dtype:
                raise MergeError(f"{name}: tensor {k} has shape {tuple(s[k].shape)} {s[k].dtype}, "
                                 f"{names[0]} has {tuple(first[k].shape)} {first[k].dtype}")
    out = {}
    for k in sorted(first):
        acc = torch.zeros_like(first[k], dtype=torch.float32)
        for s, w in zip(states, weights, strict=True):
            acc.add_(s[k].to(torch.float32), alpha=w)
        out[k] = acc.to(first[k].dtype)
    return out


def merge(inputs: Sequence[str | os.PathLike[str]], weights: Sequence[float] | None = None, *,
          runs_dir: str | os.PathLike[str] = "runs", name: str = "merge",
          stores: Sequence[str | os.PathLike[str]] = (), threads: int = 2,
          notes: Sequence[tuple[str, str, str | None]] = ()) -> Path:
    """Average the inputs into a new sealed bundle; returns its folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from provenance.run import start_run

    if len(inputs) < 2:
        raise MergeError("merge needs at least two inputs")
    if weights is None:
        weights = [1.0 / len(inputs)] * len(inputs)
    if len(weights) != len(inputs):
        raise MergeError(f"--weights: {len(weights)} weights for {len(inputs)} inputs")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise MergeError("--weights: weights must be non-negative and not all zero")
    total = sum(weights)
    weights = [w / total for w in weights]
    files = [weights_file(p) for p in inputs]
    template = model_folder(inputs[0])
    method = "uniform" if len(set(weights)) == 1 else "weighted"
    config = {"run": {"runs_dir": str(runs_dir), "name": name, "threads": threads},
              "merge": {"method": method, "inputs": [str(f) for f in files], "weights": list(weights),
                        "digests": [formats.digest_str(file_digest(f)) for f in files],
                        "template": str(template), "dtype": "float32 accumulation, in input order"}}
    # options first, inputs last: `prov reproduce` appends run.runs_dir=DIR, which lands among the inputs
    argv = [sys.executable, "-m", "provenance.cli", "merge", "--weights", ",".join(repr(w) for w in weights),
            "--runs-dir", str(runs_dir), "--name", name, "--threads", str(threads), *map(str, inputs)]
    import torch

    records = [formats.note_record(text, category, None, [], 1, about=about) for text, category, about in notes]
    torch.set_num_threads(threads)
    # everything that can fail on bad input happens before the run folder exists
    states = [read_model_tensors(f) for f in files]
    merged = average(states, weights, [str(f) for f in files])
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(template))
    load_state(model, merged, "the merged state")
    tokenizer = AutoTokenizer.from_pretrained(template) if (template / "tokenizer.json").is_file() else None
    lineage = LineageCallback(merge=list(zip(files, weights, strict=True)), stores=stores)
    with start_run(config, name=name, runs_dir=runs_dir, seed=0, threads=threads, argv=argv,
                   callbacks=[lineage]) as run:
        n_params = sum(int(t.numel()) for t in merged.values())
        run.record_batch(1, [])  # a merge reads no training samples
        run.log(1, merged_inputs=len(files), tensors=len(merged), parameters=n_params)  # one step: the merge
        run.checkpoint(1, model)  # the merged weights as a checkpoint too: `prov reproduce` compares its digest
        run.save_model(model, tokenizer)
        for rec in records:  # notes (with --about) go in before the seal
            append_note(run.writer, rec)
    return run.root

