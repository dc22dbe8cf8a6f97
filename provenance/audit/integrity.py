"""Integrity: every file is hashed (on every core) and compared with the seal (manifest.json, an
OMS in-toto statement): missing, extra and changed files are named with both digests, and the
root digest is recomputed."""

from __future__ import annotations

import time
from pathlib import Path

from provenance import formats
from provenance.audit.results import FileDiff, Finding, IntegrityResult, sha
from provenance.audit.view import DEFAULT_LIMITS, AuditLimits, AuditRefused, Progress, is_hex64
from provenance.bundle import BundleError, safe_relpath
from provenance.hashing import default_workers, hash_files, root_digest
from provenance.reader import BundleFileError, ReadLimits, load_json
from provenance.reader import scan_folder as _scan_folder


def scan_folder(root: Path, limits: ReadLimits = DEFAULT_LIMITS) -> dict[str, int]:
    """Every regular file under root -> its size. Refuses links, devices, FIFOs and sockets."""
    return _scan_folder(root, limits.max_files)


def load_manifest(root: Path, sizes: dict[str, int], limits: AuditLimits) -> tuple[str, dict[str, str], str | None]:
    """(root hex, {name: hex}, subject name) of manifest.json; AuditRefused when it is hostile."""
    m = formats.MANIFEST
    if sizes[m] > limits.max_json_bytes:
        raise AuditRefused(f"{m}: {sizes[m]} bytes is larger than the {limits.max_json_bytes}-byte limit; refused")
    with open(root / m, "rb") as f:
        data = f.read(limits.max_json_bytes + 1)
    if len(data) > limits.max_json_bytes:
        raise AuditRefused(f"{m}: larger than the {limits.max_json_bytes}-byte limit; refused")
    try:
        obj = load_json(data, m)
        root_hex, resources = formats.parse_oms_statement(obj)
    except BundleFileError as exc:
        raise AuditRefused(f"{m}: {exc.message}") from None
    except formats.FormatError as exc:
        raise AuditRefused(f"{exc}; refused") from None
    if not is_hex64(root_hex):
        raise AuditRefused(f"{m}: the subject digest is not a hex sha256; refused")
    for name, d in resources.items():
        try:
            clean = safe_relpath(name)
        except BundleError:
            raise AuditRefused(f"{m}: resource {name!r} escapes the bundle or is malformed; refused") from None
        if clean != name:
            raise AuditRefused(f"{m}: resource {name!r} is not in normal form; refused")
        if not is_hex64(d):
            raise AuditRefused(f"{m}: the digest of {name!r} is not a hex sha256; refused")
    subj = obj["subject"][0].get("name")
    return root_hex, resources, subj if isinstance(subj, str) else None


def check_integrity(root: Path, sizes: dict[str, int], manifest: tuple[str, dict[str, str], str | None] | None,
                    known: dict[str, str] | None = None, progress: Progress | None = None,
                    workers: int | None = None) -> IntegrityResult:
    res = IntegrityResult(sealed=manifest is not None)
    sealable: list[str] = []
    for rel in sorted(sizes, key=formats.resource_sort_key):
        if rel in formats.UNSEALED:
            if rel == formats.LOCK:
                res.findings.append(Finding("warning", "a live writer's lock file: the run may still be writing",
                                            rel))
            continue
        if ".tmp" in rel and any(formats.is_temp_name(p) for p in rel.split("/")):
            res.findings.append(Finding("warning", "leftover of an interrupted write; not covered by the seal", rel))
            continue
        sealable.append(rel)
    known = known or {}
    to_hash = [r for r in sealable if r not in known]
    res.files = len(sealable)
    res.bytes = sum(sizes[r] for r in sealable)
    res.workers = workers or default_workers()
    t0 = time.perf_counter()
    digests = {r: known[r] for r in sealable if r in known}
    if to_hash:
        total = sum(sizes[r] for r in to_hash)
        if progress is not None:
            progress.start("hashing", total)
        try:
            hashed = hash_files([root / r for r in to_hash], workers=workers,
                                progress=progress.advance if progress is not None else None)
        except OSError as exc:
            raise AuditRefused(f"cannot read {exc.filename or 'a file'}: {exc.strerror or exc}") from None
        finally:
            if progress is not None:
                progress.finish()
        for r in to_hash:
            digests[r] = hashed[root / r]
    res.seconds = time.perf_counter() - t0
    res.digests = digests
    res.root_actual = root_digest(digests[r] for r in sealable)
    if manifest is None:
        res.findings.append(Finding("error", f"the bundle is not sealed: {formats.MANIFEST} is missing",
                                    formats.MANIFEST))
        return res
    root_hex, resources, _ = manifest
    res.root_manifest = root_hex
    names = sorted(resources, key=formats.resource_sort_key)
    res.root_recomputed = root_digest(resources[n] for n in names)
    for n in names:
        if n in formats.UNSEALED:
            res.findings.append(Finding("error", f"{formats.MANIFEST} lists {n}, which a seal never covers", n))
        elif n not in digests:
            res.missing.append(FileDiff(n, resources[n], None))
        elif digests[n] != resources[n]:
            res.changed.append(FileDiff(n, resources[n], digests[n]))
    res.extra = [FileDiff(r, None, digests[r]) for r in sealable if r not in resources]
    if res.root_recomputed != root_hex:
        res.findings.append(Finding("error", f"the root digest in {formats.MANIFEST} does not match the digests it "
                                    "lists", formats.MANIFEST, sha(root_hex), sha(res.root_recomputed)))
    return res
