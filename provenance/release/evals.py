"""The evaluation results as an in-toto Statement, signed like the SLSA provenance.

Predicate type formats.EVAL_PREDICATE (ours; docs/release.md documents it). The proposed
in-toto `eval-result` predicate (in-toto/attestation PR #575) attests threshold verdicts
(`metric comparator threshold -> passed`) over salted commitments; our runs log measurements
without pre-registered thresholds, so inventing thresholds would be a claim nobody made.
The fields it shares with that proposal keep its names: `harness` (name and digest of the
code that evaluated), `sampleSize`, `assuranceLevel` (`self_attested`, or `reproduced`
when the bundle is itself a bitwise reproduction).

    subject:   the final model's files (sha256 from the seal)
    predicate: {run: {id, rootDigest, configDigest}, harness: {name, entryPoint, digest},
                datasets: [{name, path, digest, records, role}],
                results: [{step, metrics: {name: value}}],  # every evaluation, in step order
                final: {step, metrics}, sampleSize: {...}, assuranceLevel, evaluatedOn: time}
"""

from __future__ import annotations

from typing import Any

from provenance import formats
from provenance.release.facts import Facts


def _hex(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return None
    return v.split(":", 1)[1] if v.startswith("sha256:") else v


def _metrics(e: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(e.items()) if k not in ("step", "time") and not isinstance(v, bool)
            and isinstance(v, int | float)}


def build_statement(f: Facts) -> dict[str, Any]:
    names = f.model_files() or f.output_files()
    subjects = [{"name": n, "digest": {"sha256": f.resources[n]}} for n in names if n in f.resources]
    if not subjects and f.content_root_digest:
        subjects = [{"name": f.run_id, "digest": {"sha256": f.content_root_digest}}]
    datasets = []
    for name in f.manifests:
        for e in f.data_files(name):
            role = f.file_role(name, e["path"])
            if role != "evaluation":
                continue
            d: dict[str, Any] = {"name": name, "path": e["path"], "role": role}
            if _hex(e.get("sha256")):
                d["digest"] = {"sha256": _hex(e.get("sha256"))}
            if "records" in e:
                d["records"] = e["records"]
            datasets.append(d)
    entry = next((a for a in f.argv if a.endswith(".py")), None)
    if "-m" in f.argv and f.argv.index("-m") + 1 < len(f.argv):
        entry = f.argv[f.argv.index("-m") + 1]
    harness: dict[str, Any] = {"name": "the run's own evaluation (logged by its training script)",
                               "entryPoint": entry, "command": f.argv}
    if formats.CODE_SNAPSHOT in f.resources:
        harness["digest"] = {"sha256": f.resources[formats.CODE_SNAPSHOT]}
        harness["digestOf"] = formats.CODE_SNAPSHOT
    results = [{"step": e.get("step"), "time": e.get("time"), "metrics": _metrics(e)} for e in f.evals]
    final = f.final_eval
    cfg_train = f.cfg.get("train") if isinstance(f.cfg.get("train"), dict) else {}
    sample_size = {k: cfg_train[k] for k in ("eval_batches", "batch_size", "arith_eval_size") if k in cfg_train}
    bitwise = isinstance(f.reproduction, dict) and f.reproduction.get("bitwise") is True
    return {
        "_type": formats.INTOTO_STATEMENT,
        "subject": subjects,
        "predicateType": formats.EVAL_PREDICATE,
        "predicate": {
            "run": {"id": f.run_id, "rootDigest": {"sha256": f.content_root_digest},
                    "configDigest": f.config.get("digest")},
            "harness": harness,
            "datasets": datasets,
            "results": results,
            "final": {"step": final.get("step"), "metrics": _metrics(final)} if final else None,
            "sampleSize": sample_size or None,
            "assuranceLevel": "reproduced" if bitwise else "self_attested",
            "evaluatedOn": final.get("time") if final else None,
            "source": formats.EVALS,
        },
    }
