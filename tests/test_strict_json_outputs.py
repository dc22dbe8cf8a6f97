"""Every JSON the commands print or export is strict (no bare NaN/Infinity, which jq and JSON.parse refuse),
also for a bundle written before the strict writers, whose logs hold bare NaN."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from provenance import formats
from provenance.bundle import seal_folder
from provenance.release.export import export


def _refuse(word: str) -> object:
    raise ValueError(f"not strict JSON: {word}")


def strict(text: str) -> object:
    return json.loads(text, parse_constant=_refuse)


def _old_style_nan_evals(tiny_bundle: Path, tmp_path: Path) -> Path:
    b = tmp_path / tiny_bundle.name
    shutil.copytree(tiny_bundle, b)
    rows = list(formats.read_jsonl(b / formats.EVALS))
    assert rows, "the tiny bundle evaluates"
    for r in rows:
        for k, v in list(r.items()):
            if k.startswith("val_") and isinstance(v, float):
                r[k] = float("nan")
    # json.dumps as bundles were written before the strict writers: a bare NaN
    (b / formats.EVALS).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    seal_folder(b)
    return b


def test_exported_eval_results_of_a_nan_evaluation_are_strict(tiny_bundle: Path, tmp_path: Path) -> None:
    b = _old_style_nan_evals(tiny_bundle, tmp_path)
    doc = strict(export(b, "eval-results"))
    text = json.dumps(doc)
    assert '"NaN"' in text  # the value is kept, named, not dropped
    strict(export(b, "eu-summary-json"))


def test_strict_ascii_writer_names_non_finite_numbers() -> None:
    out = formats.dumps_ascii({"a": math.inf, "b": [-math.inf, math.nan], "name": "é"})
    assert strict(out) == {"a": "Infinity", "b": ["-Infinity", "NaN"], "name": "é"} and "\\u00e9" in out


def _header_json(path: Path) -> dict[str, object]:
    """The safetensors header of `path`, every JSON string in it parsed strictly."""
    import struct
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    head = strict(raw[8:8 + n].decode())
    assert isinstance(head, dict)
    return head


def test_a_checkpoint_with_inf_and_nan_is_strict_and_restores_the_same_values(tmp_path: Path) -> None:
    """A checkpoint whose extra holds inf/NaN (best_val), an optimizer param group with an inf, a python and a
    numpy RNG with a cached gauss of inf: its metadata is strict JSON and each value restores as it was; a
    genuine string "NaN" in extra stays a string."""
    import random

    import numpy as np
    import torch

    from provenance.capture.state import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["max_norm"] = math.inf
    extra = {"best_val": math.inf, "worst": -math.inf, "val": [1.5, math.nan], "name": "NaN"}
    kind, keys, pos, _, _ = np.random.get_state()
    np.random.set_state((kind, keys, pos, 1, math.inf))
    version, state, _ = random.getstate()
    random.setstate((version, state, math.inf))
    ckpt = tmp_path / "step.safetensors"
    save_checkpoint(ckpt, 3, model, opt, extra=extra)
    meta = strict(_header_json(ckpt)["__metadata__"]["fullyopen"])  # type: ignore[index]
    assert isinstance(meta, dict)
    for key in ("extra", "optim.param_groups", "rng.numpy", "rng.python", "non_finite"):
        strict(meta[key])
    assert strict(meta["extra"])["best_val"] == "Infinity"  # type: ignore[index]
    np.random.seed(0)
    random.seed(0)
    opt.param_groups[0]["max_norm"] = 1.0
    out = load_checkpoint(ckpt, model, opt)
    got = out["extra"]
    assert got["best_val"] == math.inf and got["worst"] == -math.inf and got["val"][0] == 1.5
    assert math.isnan(got["val"][1]) and got["name"] == "NaN"
    assert opt.param_groups[0]["max_norm"] == math.inf
    assert np.random.get_state()[4] == math.inf and random.getstate()[2] == math.inf
    # a checkpoint of finite values keeps the bytes the plain json.dumps text gave (a reproduction's sha256)
    plain = {"best_val": 0.5}
    save_checkpoint(tmp_path / "finite.safetensors", 3, model, None, extra=plain)
    fmeta = strict(_header_json(tmp_path / "finite.safetensors")["__metadata__"]["fullyopen"])  # type: ignore[index]
    assert fmeta["extra"] == json.dumps(plain, sort_keys=True) and "non_finite" not in fmeta  # type: ignore[index]


def test_a_saved_module_with_inf_init_args_is_strict_and_reads_back(tmp_path: Path) -> None:
    import torch

    from provenance.capture.state import module_init_args, save_module

    args = {"features": 3, "clip": math.inf, "floor": [-math.inf, 0.5], "pad": "NaN"}
    save_module(tmp_path / "model", torch.nn.Linear(3, 3), init_args=args)
    doc = strict((tmp_path / "model" / "config.json").read_text())
    assert doc["init_args"]["clip"] == "Infinity" and doc["init_args_non_finite"] == [["clip"], ["floor", 0]]  # type: ignore[index]
    assert module_init_args(tmp_path / "model") == args
    assert not [p.name for p in (tmp_path / "model").iterdir() if p.name.startswith(".")]  # atomic: no leftovers
