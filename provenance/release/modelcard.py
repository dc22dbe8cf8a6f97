"""Hugging Face model card (model/README.md) generated from the bundle.

YAML front matter (license, library, datasets, metrics, and a model-index with the final
evaluation) followed by sections on the model, its training data (with digests), the
training procedure and hyperparameters, evaluation results, compute, decision notes, and
the provenance: root digest, signer, and the commands that verify, audit and reproduce it.
Every number comes from a file of the bundle, named where it is used. The metadata is a
huggingface_hub.ModelCardData; the text is the Jinja2 template templates/model_card.md.j2
(Markdown: table cells are escaped by the `mdtable` filter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from provenance import formats
from provenance.release.facts import Facts

# Hugging Face license ids (lower-case SPDX where the Hub knows the license); others become "other"
HF_LICENSES = frozenset({
    "apache-2.0", "mit", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "cc0-1.0", "cc-by-2.0",
    "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0",
    "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0",
    "epl-1.0", "epl-2.0", "eupl-1.1", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by", "odbl", "openrail", "openrail++",
    "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "artistic-2.0", "bsl-1.0",
    "afl-3.0", "c-uda", "etalab-2.0",
})

METRIC_TYPES = {  # logged name -> (Hub metric type, readable name)
    "val_loss": ("loss", "Validation loss"),
    "loss": ("loss", "Loss"),
    "val_perplexity": ("perplexity", "Validation perplexity"),
    "perplexity": ("perplexity", "Perplexity"),
    "arith_exact_match": ("exact_match", "Arithmetic exact match"),
    "exact_match": ("exact_match", "Exact match"),
    "accuracy": ("accuracy", "Accuracy"),
}


def hf_license(spdx: str | None) -> dict[str, str]:
    if not spdx:
        return {"license": "unknown"}
    low = spdx.strip().lower()
    if low in HF_LICENSES:
        return {"license": low}
    return {"license": "other", "license_name": spdx, "license_link": f"https://spdx.org/licenses/{spdx}.html"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if v is None:
        return "—"
    return str(v)


def _cell(v: Any) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def card_data(f: Facts) -> Any:
    """The card's metadata as huggingface_hub.ModelCardData (license, library, tags, datasets, metrics and
    the final evaluation as eval_results, from which the Hub's model-index is written)."""
    from huggingface_hub import EvalResult, ModelCardData

    lic = hf_license(f.license)
    final = f.final_eval
    metric_keys = [k for k in sorted(final) if k in METRIC_TYPES and isinstance(final[k], int | float)
                   and not isinstance(final[k], bool)]
    ds = f.training_datasets[0] if f.training_datasets else f.name
    results = []
    for split in ("validation", "evaluation"):  # val_* metrics are on the validation split; others on held-out data
        for k in metric_keys:
            if (split == "validation") == k.startswith("val_"):
                results.append(EvalResult(task_type="text-generation", task_name="Text generation", dataset_type=ds,
                                          dataset_name=f"{ds} ({split})", dataset_split=split,
                                          metric_type=METRIC_TYPES[k][0], metric_name=METRIC_TYPES[k][1],
                                          metric_value=final[k]))
    tags = ["fullyopen", "reproducible", "signed"]
    if f.model_config.get("model_type"):
        tags.insert(0, str(f.model_config["model_type"]))
    pipeline = None
    if f.model_config:
        pipeline = "text-generation" if str(f.architecture).endswith("LMHeadModel") or \
            "CausalLM" in str(f.architecture) else "other"
    return ModelCardData(license=lic["license"], license_name=lic.get("license_name"),
                         license_link=lic.get("license_link"),
                         library_name="transformers" if f.model_config else "other", pipeline_tag=pipeline,
                         tags=tags, datasets=f.training_datasets,
                         metrics=sorted({METRIC_TYPES[k][0] for k in metric_keys}), model_name=f.name,
                         eval_results=results or None)


def front_matter(f: Facts) -> dict[str, Any]:
    """The card's YAML metadata as a dict (what the Hub parses)."""
    loaded = yaml.safe_load(card_data(f).to_yaml())
    return loaded if isinstance(loaded, dict) else {}


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=False, undefined=jinja2.StrictUndefined,  # Markdown: cells escaped below
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["mdtable"] = lambda rows, headers: _table(list(headers), [list(r) for r in rows])
    return env


def build_card(f: Facts, release: dict[str, Any]) -> str:
    """The model card's text. `release` holds fingerprint, audit and reproduction summaries."""
    mc = f.model_config
    cfg = f.cfg
    run = f.run
    bundle = f.run_id
    what = f"A {f.architecture} model trained in run `{bundle}`" if mc else \
        f"The outputs of run `{bundle}` (no `{formats.MODEL_DIR}/config.json`: not a transformers model)"
    intro = (f"{what}, released with everything needed to check it: the exact code, data, configuration, "
             "environment, logs, checkpoints and decision notes, sealed in one bundle whose every file is listed "
             "with its sha256" + (" and signed." if release.get("fingerprint") else "."))
    details: list[list[Any]] = [["Architecture", f.architecture], ["Model type", mc.get("model_type")]]
    if f.parameters is not None:
        details.append(["Parameters", f"{f.parameters:,} ({', '.join(f.dtypes)})"])
    for key, label in (("n_layer", "Layers"), ("n_head", "Attention heads"), ("n_embd", "Hidden size"),
                       ("n_positions", "Context length"), ("vocab_size", "Vocabulary size"),
                       ("num_hidden_layers", "Layers"), ("hidden_size", "Hidden size")):
        if key in mc:
            details.append([label, mc[key]])
    details.append(["License", f.license or "not stated"])
    files = f.model_files() or f.output_files()
    details.append(["Files", ", ".join(f"`{n}`" for n in files[:8]) + (" …" if len(files) > 8 else "") or "none"])

    datasets = []
    for name, m in f.manifests.items():
        src = m.get("source") if isinstance(m.get("source"), dict) else {}
        desc = f"Source: {src.get('type', 'unknown')}"
        for k in ("generator", "version", "seed", "trainer", "from", "url", "repo_id", "code"):
            if src.get(k) is not None:
                desc += f"; {k}: `{src[k]}`"
        desc += (f". License: {m.get('license') or 'not stated'}. Data card (Croissant): "
                 f"`{formats.DATA_DIR}/{name}/{formats.CROISSANT_NAME}`.")
        datasets.append({"name": name, "role": "training data" if name in f.training_datasets else "used by the run",
                         "description": desc,
                         "files": [[f"`{e.get('path')}`", e.get("records"), e.get("size"),
                                    f"`sha256:{e.get('sha256')}`"] for e in m.get("files", []) if isinstance(e, dict)]})
    procedure: list[list[Any]] = [["Command", f"`{' '.join(f.argv)}`" if f.argv else None],
                                  ["Config digest", f"`{f.config.get('digest')}`"],
                                  ["Steps", f.last_step], ["Tokens seen", f.tokens_seen],
                                  ["Seed", run.get("seed")], ["Status", run.get("status")],
                                  ["Started", run.get("started_at")], ["Ended", run.get("ended_at")]]
    det = run.get("determinism") if isinstance(run.get("determinism"), dict) else {}
    if det:
        procedure.append(["Determinism", ", ".join(f"{k}={v}" for k, v in sorted(det.items()))])
    hyper = []
    for section in ("model", "tokenizer", "train"):
        sec = cfg.get(section)
        if isinstance(sec, dict):
            hyper += [[f"{section}.{k}", v] for k, v in sorted(sec.items())]
    evals = None
    if f.evals:
        keys = sorted({k for e in f.evals for k in e if k not in ("step", "time")})
        evals = {"columns": keys, "rows": [[e.get("step"), *(e.get(k) for k in keys)] for e in f.evals]}
    hw = f.env.get("hardware") if isinstance(f.env.get("hardware"), dict) else {}
    torch = f.env.get("torch") if isinstance(f.env.get("torch"), dict) else {}
    gpus = torch.get("gpus") if isinstance(torch.get("gpus"), list) else []
    cores = hw.get("cpu_affinity") or hw.get("cpu_count")
    compute: list[list[Any]] = [["CPU", f"{hw.get('cpu_model')} ({cores} cores used)"],
                                ["GPUs", ", ".join(str(g.get("name")) for g in gpus) if gpus else "none"],
                                ["Torch threads", torch.get("num_threads")],
                                ["Wall time (s)", run.get("duration_s")]]
    dur = run.get("duration_s")
    if isinstance(dur, int | float) and dur > 0 and f.tokens_seen:
        compute.append(["Throughput (tokens/s)", round(f.tokens_seen / dur, 1)])
    py = f.env.get("python") if isinstance(f.env.get("python"), dict) else {}
    compute.append(["Software", f"Python {py.get('version')}, torch {torch.get('version')}; every package in "
                    f"`{formats.ENV_JSON}`"])
    repro = release.get("reproduction")
    return _environment().get_template("model_card.md.j2").render(
        front_matter=card_data(f).to_yaml().rstrip(), name=f.name, intro=intro, details=details,
        transformers=bool(mc), bundle=bundle, model_dir=formats.MODEL_DIR, datasets=datasets, procedure=procedure,
        hyperparameters=hyper, evals=evals, evals_file=formats.EVALS,
        reproduction=repro.get("verdict") if repro else None, compute=compute,
        notes=[[n.get("time"), n.get("step"), n.get("category"), n.get("author"), n.get("text")] for n in f.notes],
        notes_file=formats.NOTES, content_root_digest=f.content_root_digest, manifest=formats.MANIFEST,
        fingerprint=release.get("fingerprint"), public_key=formats.SIGNER_PUBLIC_KEY, slsa=formats.SLSA_STATEMENT,
        slsa_envelope=formats.SLSA_ENVELOPE, audit=release.get("audit"), signature=formats.SIGNATURE,
        report=formats.REPORT_HTML, openness=formats.OPENNESS_YAML)
