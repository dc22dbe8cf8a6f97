"""`prov export BUNDLE --format F`: one release document, written without releasing the bundle.

The bundle is only read (never re-sealed or signed); the document goes to a file or to
stdout. The same builders as `prov release` make it, so an exported document is the one a
release would contain (apart from its date, and — for the model card and the openness
record — the audit summary, which here is the audit of the bundle as it is).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provenance import formats
from provenance.release.facts import Facts

FORMATS = ("cyclonedx", "spdx", "eu-summary", "eu-summary-json", "croissant", "mot", "model-card", "eval-results")


class ExportError(RuntimeError):
    """The document cannot be exported as asked; the message says why."""


def export(bundle: str | os.PathLike[str], fmt: str, *, dataset: str | None = None, producer: str = "",
           contact: str = "", validate: bool = True) -> str:
    """The document's text (JSON documents end with a newline)."""
    from provenance.release import ReleaseError, croissant, evals, modelcard, mot, standard_documents

    root = Path(bundle)
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not (root / formats.RUN_JSON).is_file():
        raise ExportError(f"{root}: not a run folder ({formats.RUN_JSON} is missing)")
    f = Facts.load(root)
    now = datetime.now(UTC)
    stamp, date = now.strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y-%m-%d")

    def dumps(obj: Any) -> str:
        return formats.dumps(obj)

    if fmt in ("cyclonedx", "spdx", "eu-summary", "eu-summary-json"):
        only = "eu-summary" if fmt.startswith("eu-summary") else fmt
        try:
            docs = standard_documents(f, stamp, producer, contact, validate=validate, only=only)
        except ReleaseError as exc:
            raise ExportError(str(exc)) from None
        by_rel = {rel: doc for _, rel, doc in docs}
        if fmt == "eu-summary":
            return str(by_rel[formats.EU_SUMMARY_MD])
        if fmt == "eu-summary-json":
            return dumps(by_rel[formats.EU_SUMMARY_JSON])
        return dumps(docs[0][2])
    if fmt == "eval-results":
        return dumps(evals.build_statement(f))
    if fmt == "croissant":
        names = list(f.manifests)
        if not names:
            raise ExportError(f"{root}: no data manifest to describe")
        name = dataset or (f.training_datasets[0] if f.training_datasets else names[0])
        if name not in f.manifests:
            raise ExportError(f"--dataset {name!r}: not a dataset of the bundle ({', '.join(names)})")
        return dumps(croissant.build_card(f, name, date, producer or None))
    from provenance.audit import AuditRefused, audit

    try:
        report = audit(root)
    except AuditRefused as exc:
        raise ExportError(f"{root}: the audit refused the bundle: {exc}") from None
    if fmt == "mot":
        openness = report.to_dict()["openness"]
        return mot.render(mot.build_record(f, openness, date, producer, contact), openness, f.run_id)
    verdict = "PASS" if report.ok else "FAIL"
    return modelcard.build_card(f, {"fingerprint": None, "audit": f"{verdict} (audit of the bundle as exported)",
                                    "reproduction": None})
