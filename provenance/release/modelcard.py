"""Hugging Face model card (model/README.md) generated from the bundle.

YAML front matter (license, library, datasets, metrics, and a model-index with the final
evaluation) followed by sections on the model, its training data (with digests), the
training procedure and hyperparameters, evaluation results, compute, decision notes, and
the provenance: root digest, signer, and the commands that verify, audit and reproduce it.
Every number comes from a file of the bundle, named where it is used.
"""

from __future__ import annotations

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


def front_matter(f: Facts) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    meta.update(hf_license(f.license))
    meta["library_name"] = "transformers" if f.model_config else "other"
    if f.model_config:
        meta["pipeline_tag"] = "text-generation" if str(f.architecture).endswith("LMHeadModel") or \
            "CausalLM" in str(f.architecture) else "other"
    tags = ["fullyopen", "reproducible", "signed"]
    if f.model_config.get("model_type"):
        tags.insert(0, str(f.model_config["model_type"]))
    meta["tags"] = tags
    meta["datasets"] = f.training_datasets
    final = f.final_eval
    metric_keys = [k for k in sorted(final) if k in METRIC_TYPES and isinstance(final[k], int | float)
                   and not isinstance(final[k], bool)]
    meta["metrics"] = sorted({METRIC_TYPES[k][0] for k in metric_keys})
    meta["model_name"] = f.name
    if metric_keys:
        ds = f.training_datasets[0] if f.training_datasets else f.name
        by_split: dict[str, list[str]] = {}
        for k in metric_keys:  # val_* metrics are on the validation split; others on held-out evaluation data
            by_split.setdefault("validation" if k.startswith("val_") else "evaluation", []).append(k)
        meta["model-index"] = [{
            "name": f.name,
            "results": [{
                "task": {"type": "text-generation", "name": "Text generation"},
                "dataset": {"name": f"{ds} ({split})", "type": ds, "split": split},
                "metrics": [{"type": METRIC_TYPES[k][0], "name": METRIC_TYPES[k][1], "value": final[k]}
                            for k in keys],
            } for split, keys in sorted(by_split.items(), key=lambda kv: kv[0] != "validation")],
        }]
    return meta


def build_card(f: Facts, release: dict[str, Any]) -> str:
    """The model card's text. `release` holds date, fingerprint, audit and reproduction summaries."""
    meta = front_matter(f)
    mc = f.model_config
    cfg = f.cfg
    run = f.run
    bundle = f.run_id
    lines: list[str] = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    w = lines.append

    w(f"# {f.name}")
    w("")
    what = f"A {f.architecture} model trained in run `{bundle}`" if mc else \
        f"The outputs of run `{bundle}` (no `{formats.MODEL_DIR}/config.json`: not a transformers model)"
    w(f"{what}, released with everything needed to check it: the exact code, data, configuration, environment, "
      "logs, checkpoints and decision notes, sealed in one bundle whose every file is listed with its sha256"
      + (" and signed." if release.get("fingerprint") else "."))
    w("")
    w("## Model details")
    w("")
    rows: list[list[Any]] = [["Architecture", f.architecture], ["Model type", mc.get("model_type")]]
    if f.parameters is not None:
        rows.append(["Parameters", f"{f.parameters:,} ({', '.join(f.dtypes)})"])
    for key, label in (("n_layer", "Layers"), ("n_head", "Attention heads"), ("n_embd", "Hidden size"),
                       ("n_positions", "Context length"), ("vocab_size", "Vocabulary size"),
                       ("num_hidden_layers", "Layers"), ("hidden_size", "Hidden size")):
        if key in mc:
            rows.append([label, mc[key]])
    rows.append(["License", f.license or "not stated"])
    files = f.model_files() or f.output_files()
    rows.append(["Files", ", ".join(f"`{n}`" for n in files[:8]) + (" …" if len(files) > 8 else "") or "none"])
    w(_table(["", ""], rows))
    w("")
    if mc:
        w("Load it with `transformers`:")
        w("")
        w("```python")
        w("from transformers import AutoModelForCausalLM, AutoTokenizer")
        w(f'model = AutoModelForCausalLM.from_pretrained("{bundle}/{formats.MODEL_DIR}")')
        w(f'tokenizer = AutoTokenizer.from_pretrained("{bundle}/{formats.MODEL_DIR}")')
        w("```")
        w("")

    w("## Training data")
    w("")
    for name, m in f.manifests.items():
        src = m.get("source") if isinstance(m.get("source"), dict) else {}
        role = "training data" if name in f.training_datasets else "used by the run"
        w(f"### {name} ({role})")
        w("")
        desc = f"Source: {src.get('type', 'unknown')}"
        for k in ("generator", "version", "seed", "trainer", "from", "url", "repo_id", "code"):
            if src.get(k) is not None:
                desc += f"; {k}: `{src[k]}`"
        w(desc + f". License: {m.get('license') or 'not stated'}. Data card (Croissant): "
          f"`{formats.DATA_DIR}/{name}/{formats.CROISSANT_NAME}`.")
        w("")
        frows = [[f"`{e.get('path')}`", e.get("records"), e.get("size"), f"`sha256:{e.get('sha256')}`"]
                 for e in m.get("files", []) if isinstance(e, dict)]
        w(_table(["File", "Records", "Bytes", "Digest"], frows))
        w("")

    w("## Training procedure")
    w("")
    prow: list[list[Any]] = [["Command", f"`{' '.join(f.argv)}`" if f.argv else None],
                             ["Config digest", f"`{f.config.get('digest')}`"],
                             ["Steps", f.last_step], ["Tokens seen", f.tokens_seen],
                             ["Seed", run.get("seed")], ["Status", run.get("status")],
                             ["Started", run.get("started_at")], ["Ended", run.get("ended_at")]]
    det = run.get("determinism") if isinstance(run.get("determinism"), dict) else {}
    if det:
        prow.append(["Determinism", ", ".join(f"{k}={v}" for k, v in sorted(det.items()))])
    w(_table(["", ""], prow))
    w("")
    w("Hyperparameters (the resolved config, `config.json`):")
    w("")
    hrows = []
    for section in ("model", "tokenizer", "train"):
        sec = cfg.get(section)
        if isinstance(sec, dict):
            hrows += [[f"{section}.{k}", v] for k, v in sorted(sec.items())]
    w(_table(["Key", "Value"], hrows) if hrows else "No config recorded.")
    w("")

    w("## Evaluation results")
    w("")
    if f.evals:
        keys = sorted({k for e in f.evals for k in e if k not in ("step", "time")})
        w(_table(["Step", *keys], [[e.get("step"), *(e.get(k) for k in keys)] for e in f.evals]))
        w("")
        w(f"From `{formats.EVALS}`; the last row is the released model.")
    else:
        w("No evaluation was logged.")
    w("")
    repro = release.get("reproduction")
    if repro:
        w(f"Reproduction: {repro.get('verdict')}.")
        w("")

    w("## Compute")
    w("")
    hw = f.env.get("hardware") if isinstance(f.env.get("hardware"), dict) else {}
    torch = f.env.get("torch") if isinstance(f.env.get("torch"), dict) else {}
    gpus = torch.get("gpus") if isinstance(torch.get("gpus"), list) else []
    cores = hw.get("cpu_affinity") or hw.get("cpu_count")
    crow: list[list[Any]] = [["CPU", f"{hw.get('cpu_model')} ({cores} cores used)"],
                             ["GPUs", ", ".join(str(g.get("name")) for g in gpus) if gpus else "none"],
                             ["Torch threads", torch.get("num_threads")],
                             ["Wall time (s)", run.get("duration_s")]]
    dur = run.get("duration_s")
    if isinstance(dur, int | float) and dur > 0 and f.tokens_seen:
        crow.append(["Throughput (tokens/s)", round(f.tokens_seen / dur, 1)])
    py = f.env.get("python") if isinstance(f.env.get("python"), dict) else {}
    crow.append(["Software", f"Python {py.get('version')}, torch {torch.get('version')}; every package in "
                 f"`{formats.ENV_JSON}`"])
    w(_table(["", ""], crow))
    w("")

    w("## Decision notes")
    w("")
    if f.notes:
        w(_table(["Time", "Step", "Category", "Author", "Note"],
                 [[n.get("time"), n.get("step"), n.get("category"), n.get("author"), n.get("text")] for n in f.notes]))
    else:
        w(f"No decision notes were recorded (`{formats.NOTES}`).")
    w("")

    w("## Provenance: verify, audit, reproduce")
    w("")
    w(f"- Root digest of the run's files (the OMS manifest of the training run, release documents left out): "
      f"`sha256:{f.content_root_digest}`. The released bundle's own root digest is the subject of "
      f"`{formats.MANIFEST}` and of the signature.")
    fp = release.get("fingerprint")
    if fp:
        w(f"- Signed with the key `{fp}` (model_signing; the public key is `{formats.SIGNER_PUBLIC_KEY}` — compare "
          "its fingerprint with the one the producer publishes). SLSA provenance: "
          f"`{formats.SLSA_STATEMENT}`, signed in `{formats.SLSA_ENVELOPE}`.")
    else:
        w("- This release is not signed.")
    audit = release.get("audit")
    if audit:
        w(f"- Audit at release: {audit}.")
    w("")
    w("Verify the signature over every file (from the folder that holds the bundle):")
    w("")
    w("```sh")
    w(f"model_signing verify key {bundle} --public_key {bundle}/{formats.SIGNER_PUBLIC_KEY} "
      f"--signature {bundle}/{formats.SIGNATURE}")
    w("```")
    w("")
    w("Audit the bundle (seal, data, order, checkpoints, openness) and reproduce the run step by step:")
    w("")
    w("```sh")
    w(f"prov audit {bundle}")
    w(f"prov reproduce {bundle}")
    w("```")
    w("")
    w(f"The report `{formats.REPORT_HTML}` shows the curves, evaluations, checkpoints, notes and environment; "
      f"`{formats.OPENNESS_YAML}` is the Model Openness Framework record.")
    w("")
    return "\n".join(lines)
