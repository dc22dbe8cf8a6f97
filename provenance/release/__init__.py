"""`prov release`: turn a sealed run bundle into a signed release.

    result = release("runs/<run_id>", key="~/.config/fullyopen/release-key.pem")

Order of operations (docs/release.md explains why):
1. audit the bundle as it is; a bundle whose files do not match its seal is never
   released (other audit failures need force=True);
2. write the data cards (data/<dataset>/croissant.json) and the model card
   (model/README.md), and re-seal: unchanged files keep the digests the audit computed;
3. audit again: the openness assessment now sees the cards;
4. write the openness record (MOT YAML), the SLSA provenance (plain, and in a DSSE
   envelope signed with the key), the signer's public key, release/release.json and the
   report, and re-seal;
5. sign the bundle with model_signing (the signature covers exactly the sealed files, so
   its root digest is manifest.json's), and optionally with Sigstore (keyless, network).

With `out`, the bundle is copied there first and the copy is released; the original
is left as it was.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provenance import __version__, formats, reader
from provenance.recover import add_note, record_reseal, sealed_resources
from provenance.release import croissant, cyclonedx, eu_summary, evals, modelcard, mot, report, slsa, spdx3
from provenance.release.facts import Facts, is_release_file
from provenance.release.signing import (
    SigningError,
    dsse_sign,
    fingerprint,
    load_private_key,
    public_pem,
    sign_bundle,
    sign_bundle_sigstore,
    verify_command,
    verify_signature,
)
from provenance.untrusted import escape

RELEASE_SCHEMA = formats.RELEASE_SCHEMA

__all__ = ["ReleaseError", "ReleaseResult", "SigningError", "release", "verify_signature"]


class ReleaseError(RuntimeError):
    """The bundle cannot be released as asked; the message says why (and names files)."""


@dataclass
class ReleaseResult:
    bundle: Path
    root_digest: str  # of the released bundle (manifest.json and the signature's subject)
    content_root_digest: str | None  # over the run's own files, release documents left out
    fingerprint: str | None
    signature: str | None
    sigstore: dict[str, Any] | None
    documents: dict[str, str]
    audit_ok: bool
    warnings: list[str] = field(default_factory=list)


def _known(root: Path, digests: dict[str, str]) -> dict[str, tuple[int, int, str]]:
    """Digests the audit just computed, keyed for seal_folder; release documents are always hashed again."""
    out = {}
    for rel, hexd in digests.items():
        if is_release_file(rel):
            continue
        try:
            st = (root / rel).stat()
        except OSError:
            continue
        out[rel] = (st.st_size, st.st_mtime_ns, hexd)
    return out


def _destination(src: Path, out: str | os.PathLike[str]) -> Path:
    dest = Path(out)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists():
        raise ReleaseError(f"{dest}: already exists; not overwriting it")
    if dest.resolve().is_relative_to(src.resolve()):
        raise ReleaseError(f"{dest}: inside the bundle being released")
    return dest


def standard_documents(f: Facts, stamp: str, producer: str = "", contact: str = "", *, validate: bool = True,
                       warnings: list[str] | None = None, only: str | None = None) -> list[tuple[str, str, Any]]:
    """The CycloneDX ML-BOM, the SPDX 3 document and the EU training-content summary (JSON and Markdown),
    or only one of them ("cyclonedx", "spdx", "eu-summary"); the first two validated by their ecosystems'
    validators when installed (ReleaseError if rejected). Returns [(label, bundle path, document)]."""
    out: list[tuple[str, str, Any]] = []
    checks: list[tuple[str, Any, Any]] = []
    if only in (None, "cyclonedx"):
        bom = cyclonedx.build_bom(f, stamp, producer or None)
        checks.append((formats.CYCLONEDX_BOM, bom, cyclonedx.validate))
        out.append(("CycloneDX 1.7 ML-BOM", formats.CYCLONEDX_BOM, bom))
    if only in (None, "spdx"):
        doc = spdx3.build_document(f, stamp, producer or None)
        checks.append((formats.SPDX_DOCUMENT, doc, spdx3.validate))
        out.append(("SPDX 3.0.1 (AI and Dataset profiles)", formats.SPDX_DOCUMENT, doc))
    if only in (None, "eu-summary"):
        summary = eu_summary.build_summary(f, stamp[:10], producer, contact)
        out.append(("EU AI Act training-content summary (JSON)", formats.EU_SUMMARY_JSON, summary))
        out.append(("EU AI Act training-content summary", formats.EU_SUMMARY_MD, eu_summary.render_markdown(summary)))
    for rel, doc, check in checks:
        if not validate:
            continue
        try:
            problems = check(doc)
        except ImportError:
            if warnings is not None:
                warnings.append(f"{rel}: its validator is not installed (pip install 'fullyopen[release]'); "
                                "not validated")
            continue
        if problems:
            raise ReleaseError(f"{rel}: the validator rejects it: {'; '.join(problems[:5])}")
    return out


def _failures(rep: Any, limit: int = 10) -> str:
    """The audit's failures on one line, escaped (a bundle's names never forge a line of output)."""
    items = [escape(f) for f in rep.failures()]
    return "; ".join(items[:limit]) + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _audit_summary(rep: Any) -> str:
    return (f"{'PASS' if rep.ok else 'FAIL'} (integrity {'ok' if rep.integrity.ok else 'FAILED'}, consistency "
            f"{'ok' if rep.consistency_ok else 'FAILED'}); the openness assessment is in {formats.OPENNESS_YAML}")


def release(run_dir: str | os.PathLike[str], key: str | os.PathLike[str] | None = None,
            out: str | os.PathLike[str] | None = None, sigstore: bool = False, *,
            reproduction: str | os.PathLike[str] | None = None, producer: str = "", contact: str = "",
            force: bool = False, progress: Any = None, identity_token: str | None = None,
            validate_cards: bool = True) -> ReleaseResult:
    """Release a sealed run bundle: documents, re-seal, signatures. See the module docstring."""
    src = Path(run_dir)
    if src.is_dir() and not src.is_symlink():
        try:  # links, FIFOs, devices, non-UTF-8 names: refused before anything is read, copied or written
            reader.scan_folder(src)
        except reader.Refused as exc:
            raise ReleaseError(f"{src}: the audit refused the bundle: {exc}") from None
    if not (src / formats.RUN_JSON).is_file():
        raise ReleaseError(f"{src}: not a run folder ({formats.RUN_JSON} is missing)")
    if not (src / formats.MANIFEST).is_file():
        raise ReleaseError(f"{src}: not sealed ({formats.MANIFEST} is missing); seal it with `prov seal` first")
    if (src / formats.LOCK).exists():
        raise ReleaseError(f"{src}: a live writer holds {formats.LOCK}; release a finished run")
    try:
        with reader.Bundle.of_files(src, [formats.RUN_JSON]) as b:
            status = b.run_info.get("status")  # forgiving: the audit below names what is wrong with run.json
    except reader.Refused as exc:
        raise ReleaseError(str(exc)) from None
    if status == "running":
        raise ReleaseError(f"{src}: the run is still running (status 'running'); release a finished run")
    private = load_private_key(key) if key is not None else None  # fail before writing anything
    fp = fingerprint(private.public_key()) if private is not None else None
    warnings: list[str] = []

    dest = src
    if out is not None:
        dest = _destination(src, out)
        try:
            shutil.copytree(src, dest, symlinks=True)
            for rel in (formats.SIGNATURE, formats.SIGSTORE_SIGNATURE):
                (dest / rel).unlink(missing_ok=True)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    try:
        return _release_in(dest, key, private, fp, warnings, reproduction=reproduction, producer=producer,
                           contact=contact, force=force, progress=progress, sigstore=sigstore,
                           identity_token=identity_token, validate_cards=validate_cards)
    except BaseException:
        if dest != src:  # a release into a new folder that failed leaves nothing behind
            shutil.rmtree(dest, ignore_errors=True)
        raise


def _release_in(dest: Path, key: str | os.PathLike[str] | None, private: Any, fp: str | None, warnings: list[str], *,
                reproduction: str | os.PathLike[str] | None, producer: str, contact: str, force: bool,
                progress: Any, sigstore: bool, identity_token: str | None, validate_cards: bool) -> ReleaseResult:
    from provenance.audit import AuditRefused, audit

    # 1. the bundle as it is must match its seal
    try:
        pre = audit(dest, progress=progress)
    except AuditRefused as exc:
        raise ReleaseError(f"{dest}: the audit refused the bundle: {exc}") from None
    if not pre.integrity.ok:
        raise ReleaseError(f"{dest}: the files do not match the seal; not releasing it: " + _failures(pre))
    if not pre.ok and not force:
        raise ReleaseError(f"{dest}: the audit fails (use --force to release anyway): " + _failures(pre))
    if not pre.ok:  # overriding the audit is a decision: recorded as a note, with what it overrode
        failures = pre.failures()
        add_note(dest, f"released with --force although the audit fails ({len(failures)} failure(s)): "
                 + "; ".join(failures[:5]), "override", producer or None, [], None)
        pre = audit(dest, progress=progress)
    known = _known(dest, pre.integrity.digests)  # before anything is written
    previous = sealed_resources(dest)  # the seal the audit just verified: every re-seal below is recorded
    for rel in (formats.SIGNATURE, formats.SIGSTORE_SIGNATURE):  # a re-release: the old signatures go
        (dest / rel).unlink(missing_ok=True)
    date = datetime.now(UTC).strftime("%Y-%m-%d")

    # 2. cards, then a seal that covers them
    f = Facts.load(dest)
    documents: dict[str, str] = {}
    for ds in f.manifests:
        rel = croissant.card_path(ds)
        formats.atomic_write_json(dest / rel, croissant.build_card(f, ds, date, producer or None))
        documents[f"Data card ({ds}, Croissant 1.1)"] = rel
        if validate_cards:
            try:
                problems, _ = croissant.validate(dest / rel)
            except ImportError:
                warnings.append("mlcroissant is not installed: the data cards were not validated "
                                "(pip install 'fullyopen[release]')")
                validate_cards = False
                problems = []
            if problems:
                raise ReleaseError(f"{rel}: mlcroissant rejects the data card: {'; '.join(problems)}")
    repro = report.load_reproduction(reproduction) if reproduction is not None else None
    repro_summary = f.reproduction if isinstance(f.reproduction, dict) else (repro or {}).get("summary")
    card_info = {"fingerprint": fp, "audit": _audit_summary(pre),
                 "reproduction": {"verdict": report.reproduction_verdict(repro_summary)[1]} if repro_summary else None}
    formats.atomic_write_bytes(dest / formats.MODEL_CARD, modelcard.build_card(f, card_info).encode())
    documents["Model card (Hugging Face)"] = formats.MODEL_CARD
    record_reseal(dest, previous, "prov release: the model card and the data cards", formats.RELEASE_COMMAND, known)
    previous = sealed_resources(dest)

    # 3. the audit that the openness record and the report show
    post = audit(dest, progress=progress)
    if not post.integrity.ok:
        raise ReleaseError(f"{dest}: the bundle changed while it was being released:\n  "
                           + "\n  ".join(post.failures()[:20]))
    known = _known(dest, post.integrity.digests)
    audit_dict = post.to_dict()

    # 4. openness record, SLSA provenance, key, release.json, report
    f = Facts.load(dest)
    record = mot.build_record(f, audit_dict["openness"], date, producer, contact)
    formats.atomic_write_bytes(dest / formats.OPENNESS_YAML,
                               mot.render(record, audit_dict["openness"], f.run_id).encode())
    documents["Openness record (Model Openness Tool)"] = formats.OPENNESS_YAML
    statement = slsa.build_statement(f)
    formats.atomic_write_json(dest / formats.SLSA_STATEMENT, statement)
    documents["SLSA provenance v1"] = formats.SLSA_STATEMENT
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for label, rel, doc in standard_documents(f, stamp, producer, contact, validate=validate_cards,
                                              warnings=warnings):
        if isinstance(doc, str):
            formats.atomic_write_bytes(dest / rel, doc.encode())
        else:
            formats.atomic_write_json(dest / rel, doc)
        documents[label] = rel
    eval_statement = evals.build_statement(f)
    formats.atomic_write_json(dest / formats.EVAL_STATEMENT, eval_statement)
    documents["Evaluation results (in-toto statement)"] = formats.EVAL_STATEMENT
    if private is not None:
        env = dsse_sign(statement, private)
        formats.atomic_write_bytes(dest / formats.SLSA_ENVELOPE, formats.dumps_line(env).encode())
        formats.atomic_write_bytes(dest / formats.EVAL_ENVELOPE,
                                   formats.dumps_line(dsse_sign(eval_statement, private)).encode())
        formats.atomic_write_bytes(dest / formats.SIGNER_PUBLIC_KEY, public_pem(private.public_key()))
        documents["SLSA provenance, signed (DSSE)"] = formats.SLSA_ENVELOPE
        documents["Evaluation results, signed (DSSE)"] = formats.EVAL_ENVELOPE
        documents["Signer's public key"] = formats.SIGNER_PUBLIC_KEY
    else:
        for rel in (formats.SLSA_ENVELOPE, formats.EVAL_ENVELOPE, formats.SIGNER_PUBLIC_KEY):
            (dest / rel).unlink(missing_ok=True)
    documents["Report"] = formats.REPORT_HTML
    documents["Release record"] = formats.RELEASE_JSON
    if private is not None:
        documents["Signature (model_signing)"] = formats.SIGNATURE
    if sigstore:
        documents["Signature (Sigstore keyless)"] = formats.SIGSTORE_SIGNATURE
    formats.atomic_write_json(dest / formats.RELEASE_JSON, {
        "schema": RELEASE_SCHEMA,
        "run_id": f.run_id,
        "date": date,
        "tool": {"name": "fullyopen", "version": __version__},
        "content_root_digest": f.content_root_digest,
        "signer": {"fingerprint": fp, "public_key": formats.SIGNER_PUBLIC_KEY if fp else None,
                   "signature": formats.SIGNATURE if fp else None,
                   "sigstore_signature": formats.SIGSTORE_SIGNATURE if sigstore else None},
        "audit": {"verdict": audit_dict["verdict"], "mof_class": audit_dict["openness"].get("highest_class"),
                  "fully_open": (audit_dict["openness"].get("fully_open") or {}).get("ok"),
                  "failures": audit_dict["failures"]},
        "reproduction": repro_summary,
        "documents": documents,
        "slsa_subjects": [s["name"] for s in statement["subject"]],
    })
    vcmd = verify_command(f.run_id, f"{f.run_id}/{formats.SIGNER_PUBLIC_KEY}") if fp else None
    html = report.build_report(f, {"date": date, "fingerprint": fp, "verify_command": vcmd, "audit": audit_dict,
                                   "reproduction": repro, "documents": documents})
    formats.atomic_write_bytes(dest / formats.REPORT_HTML, html.encode())
    root = record_reseal(dest, previous, "prov release: openness record, SLSA provenance, release documents",
                         formats.RELEASE_COMMAND, known)

    # 5. signatures over exactly the sealed files
    signature = None
    if key is not None:
        signed = sign_bundle(dest, key)
        signature = signed["signature"]
        if signed["root_digest"] != root:
            raise ReleaseError(f"{dest}: signed root digest {signed['root_digest']} is not the seal's {root}")
    store = sign_bundle_sigstore(dest, identity_token=identity_token) if sigstore else None
    if key is not None:
        check = verify_signature(dest)
        if not check or not check["ok"]:
            raise ReleaseError(f"{dest}: the new signature does not verify: {check and check['error']}")
    f = Facts.load(dest)
    return ReleaseResult(bundle=dest, root_digest=root, content_root_digest=f.content_root_digest, fingerprint=fp,
                         signature=signature, sigstore=store, documents=documents, audit_ok=post.ok,
                         warnings=warnings)
