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
