"""`prov audit`: integrity, consistency and openness of a bundle (a run folder or a release archive).

    report = audit("runs/<run_id>")            # or audit("release.tar.gz")
    report.ok                                   # integrity and consistency hold (and the class asked for)
    print(report.to_text()); report.to_json()   # the terminal report; the fullyopen.audit/v1 document

1. Integrity (integrity.py): every file is hashed (on every core) and compared with the seal
   (manifest.json, an OMS in-toto statement): missing, extra and changed files are named with
   both digests, and the root digest is recomputed.
2. Consistency: the claims inside the bundle agree with each other. The checks are an explicit
   list (registry.py): the built-ins (checks_*.py) and the extension checks declared as entry
   points (`fullyopen.audit_checks` in pyproject.toml); `audit(path, checks=[...])` runs others.
3. Openness: provenance.openness scores the bundle against the Model Openness Framework and
   the "fully open" list.

Hostile input: an audit never executes code from the bundle and never unpickles. The bundle is
read through provenance.reader (bounded JSON, safetensors headers only, tars through
archive.TarReader); archives are unpacked by provenance.archive into a temporary folder that is
removed afterwards. Links, devices, names that escape the bundle and oversized or malformed
manifests are refused (AuditRefused) with a message naming what was refused. docs/audit.md
documents the JSON schema; docs/architecture.md where a new check goes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from provenance import formats
from provenance.audit.checks_training import PARAMETER_FORMULAS
from provenance.audit.integrity import check_integrity, load_manifest, scan_folder
from provenance.audit.registry import (
    ENTRY_POINT_GROUP,
    Check,
    CheckFunc,
    builtin_checks,
    default_checks,
    extension_checks,
    run_checks,
)
from provenance.audit.render import render_text
from provenance.audit.report import AUDIT_SCHEMA, EXIT_FAILED, EXIT_OK, EXIT_REFUSED, AuditReport, refusal_to_dict
from provenance.audit.results import CheckResult, FileDiff, Finding, IntegrityResult, SkipCheck
from provenance.audit.view import DEFAULT_LIMITS, AuditLimits, AuditRefused, BundleFileError, BundleView, Progress
from provenance.openness import CLASSES, assess
from provenance.reader import Bundle

__all__ = ["AUDIT_SCHEMA", "DEFAULT_LIMITS", "ENTRY_POINT_GROUP", "EXIT_FAILED", "EXIT_OK", "EXIT_REFUSED",
           "PARAMETER_FORMULAS", "AuditLimits", "AuditRefused", "AuditReport", "BundleFileError", "BundleView",
           "Check", "CheckFunc", "CheckResult", "FileDiff", "Finding", "IntegrityResult", "Progress", "SkipCheck",
           "audit", "builtin_checks", "check_integrity", "default_checks", "extension_checks", "load_manifest",
           "refusal_to_dict", "render_text", "run_checks", "scan_folder"]


def audit(path: str | os.PathLike[str], require_class: str | None = None, progress: Progress | None = None, *,
          limits: AuditLimits = DEFAULT_LIMITS, tmp_dir: str | os.PathLike[str] | None = None,
          workers: int | None = None, checks: list[Check] | None = None) -> AuditReport:
    """Audit a run folder or a release archive (.tar / .tar.gz).

    `checks` is the list of consistency checks to run (None: default_checks(), the built-ins and
    the declared extensions). Raises AuditRefused (naming what it refused) for hostile or
    unusable input; otherwise returns the report, whose `.ok` is the verdict. An archive is
    unpacked into a temporary folder (under tmp_dir) that is removed before this returns.
    """
    if require_class is not None and require_class not in CLASSES:
        raise ValueError(f"require_class must be one of I, II, III, got {require_class!r}")
    t0 = time.perf_counter()
    target = str(path)
    p = Path(path)
    unpack = _bytes_progress(progress, "unpacking", p.stat().st_size) if p.is_file() else None
    try:
        bundle = Bundle(p, limits, tmp_dir=tmp_dir, progress=unpack)
    finally:
        if unpack is not None and progress is not None:
            progress.finish()
    with bundle:
        report = _audit_bundle(bundle, target, require_class, progress, limits, workers, checks)
    report.seconds = time.perf_counter() - t0
    return report


def _bytes_progress(progress: Progress | None, label: str, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    progress.start(label, total)
    return progress.advance


def _audit_bundle(bundle: Bundle, target: str, require_class: str | None, progress: Progress | None,
                  limits: AuditLimits, workers: int | None, checks: list[Check] | None) -> AuditReport:
    sizes = bundle.sizes
    if formats.RUN_JSON not in sizes and formats.MANIFEST not in sizes:
        raise AuditRefused(f"{target}: not a run bundle (neither {formats.RUN_JSON} nor {formats.MANIFEST} is there)")
    if formats.MANIFEST in sizes:
        bundle.path(formats.MANIFEST)  # on disk (an archive's small files are kept in memory)
    root = bundle.root
    manifest = load_manifest(root, sizes, limits) if formats.MANIFEST in sizes else None
    integrity = check_integrity(root, sizes, manifest, bundle.digests or None, progress, workers)
    view: BundleView = bundle
    view.limits = limits
    view.digests = integrity.digests
    view.sealed = manifest[1] if manifest else None
    view.subject = manifest[2] if manifest else None
    results = run_checks(view, checks)
    openness = assess(view, require_class)
    info = view.run_info
    run = {k: info.get(k) for k in ("run_id", "name", "status", "exit_status", "license")}
    run["reproduces"] = info.get("reproduces") if isinstance(info.get("reproduces"), dict) else None
    cfg = view.try_json(formats.CONFIG_JSON)
    argv = cfg.get("argv") if isinstance(cfg, dict) else None
    run["command"] = argv if isinstance(argv, list) and all(isinstance(a, str) for a in argv) else None
    return AuditReport(target=target, kind=bundle.kind, integrity=integrity, checks=results, openness=openness,
                       run=run, archive_sha256=bundle.archive_sha256)
