"""`prov audit`: integrity, consistency and openness of a bundle (a run folder or a release archive).

    report = audit("runs/<run_id>")            # or audit("release.tar.gz")
    report.ok                                   # integrity and consistency hold (and the class asked for)
    print(report.to_text()); report.to_json()   # the terminal report; the fullyopen.audit/v1 document

1. Integrity: every file is hashed (on every core) and compared with the seal
   (manifest.json, an OMS in-toto statement): missing, extra and changed files are
   named with both digests, and the root digest is recomputed.
2. Consistency: the claims inside the bundle agree with each other. Each claim is a
   check in a registry (`consistency_check`); another module adds its own checks by
   registering them, e.g. the reproduction module for reproduction/.
3. Openness: provenance.openness scores the bundle against the Model Openness
   Framework and the "fully open" list.

Hostile input: an audit never executes code from the bundle and never unpickles:
JSON is parsed with size limits, tensors are read with safetensors (headers and
shapes only), archives are unpacked by provenance.archive into a temporary folder
that is removed afterwards. Links, devices, names that escape the bundle and
oversized or malformed manifests are refused (AuditRefused) with a message naming
what was refused. docs/audit.md documents the JSON schema.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import re
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from provenance import formats
from provenance.archive import ArchiveError, SafeTarInfo, detect_archive, unpacked
from provenance.bundle import BundleError, safe_relpath
from provenance.hashing import default_workers, hash_files, root_digest
from provenance.openness import CLASS_NAMES, CLASSES, OpennessReport, assess
from provenance.reader import Bundle, BundleFileError, ReadLimits, Refused, load_json
from provenance.reader import scan_folder as _scan_folder

AUDIT_SCHEMA = formats.AUDIT_SCHEMA
EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


AuditRefused = Refused  # the input was refused as hostile or unusable; the message names what was refused


@dataclass(frozen=True)
class AuditLimits(ReadLimits):
    max_findings: int = 1000  # findings kept per check (the rest are counted)


DEFAULT_LIMITS = AuditLimits()


class Progress(Protocol):
    """Told how many bytes there are to read, then how many were read (from several threads)."""

    def start(self, label: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


# --- findings and results --------------------------------------------------------------


@dataclass
class Finding:
    level: str  # "error" | "warning"
    message: str
    file: str | None = None
    expected: str | None = None
    actual: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "message": self.message, "file": self.file, "expected": self.expected,
                "actual": self.actual}


class SkipCheck(Exception):
    """Raised by a check that does not apply to this bundle; the message says why."""


@dataclass
class CheckResult:
    name: str
    title: str
    status: str = "pass"  # pass | warn | fail | skip
    summary: str = ""
    findings: list[Finding] = field(default_factory=list)
    dropped: int = 0  # findings beyond the limit, counted but not kept
    limit: int = 1000

    def _add(self, f: Finding) -> None:
        if len(self.findings) >= self.limit:
            self.dropped += 1
            if f.level == "error":
                self.status = "fail"
            return
        self.findings.append(f)

    def error(self, message: str, *, file: str | None = None, expected: str | None = None,
              actual: str | None = None) -> None:
        self._add(Finding("error", message, file, expected, actual))

    def warn(self, message: str, *, file: str | None = None, expected: str | None = None,
             actual: str | None = None) -> None:
        self._add(Finding("warning", message, file, expected, actual))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def settle(self) -> None:
        if self.status == "skip":
            return
        if self.errors or self.status == "fail":
            self.status = "fail"
        elif self.findings:
            self.status = "warn"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "status": self.status, "summary": self.summary,
                "findings": [f.to_dict() for f in self.findings], "findings_dropped": self.dropped}


@dataclass
class FileDiff:
    name: str
    expected: str | None  # hex sha256 in the manifest
    actual: str | None  # hex sha256 on disk

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "expected": _sha(self.expected), "actual": _sha(self.actual)}


def _sha(hexd: str | None) -> str | None:
    return None if hexd is None else f"sha256:{hexd}"


@dataclass
class IntegrityResult:
    sealed: bool
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    workers: int = 1
    root_manifest: str | None = None  # subject digest stated in manifest.json
    root_recomputed: str | None = None  # recomputed over the manifest's resource digests
    root_actual: str | None = None  # computed over the files as they are
    missing: list[FileDiff] = field(default_factory=list)
    extra: list[FileDiff] = field(default_factory=list)
    changed: list[FileDiff] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # actual hex digests (not serialised)

    @property
    def ok(self) -> bool:
        return self.sealed and not (self.missing or self.extra or self.changed) and \
            not any(f.level == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "sealed": self.sealed, "files": self.files, "bytes": self.bytes,
            "seconds": round(self.seconds, 4), "workers": self.workers,
            "root_digest": {"manifest": _sha(self.root_manifest), "recomputed": _sha(self.root_recomputed),
                            "actual": _sha(self.root_actual)},
            "missing": [d.to_dict() for d in self.missing],
            "extra": [d.to_dict() for d in self.extra],
            "changed": [d.to_dict() for d in self.changed],
            "findings": [f.to_dict() for f in self.findings],
        }


# --- reading a bundle safely -------------------------------------------------------------


def _loads(data: bytes, where: str) -> Any:
    return load_json(data, where)


class BundleView(Bundle):
    """The bundle as the checks see it: the reader (provenance.reader.Bundle) of the audited folder,
    with the digests the integrity pass computed and what the seal states."""

    def __init__(self, root: Path, sizes: dict[str, int], digests: dict[str, str],
                 sealed: dict[str, str] | None, subject: str | None, limits: ReadLimits = DEFAULT_LIMITS) -> None:
        super().__init__(root, limits, sizes=sizes)
        self.digests = digests
        self.sealed = sealed
        self.subject = subject


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_hex64(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


# --- the registry of consistency checks --------------------------------------------------

CheckFunc = Callable[[BundleView, CheckResult], None]


@dataclass(frozen=True)
class ConsistencyCheck:
    name: str
    title: str
    func: CheckFunc


_CHECKS: dict[str, ConsistencyCheck] = {}


def register_check(name: str, title: str, func: CheckFunc, *, replace: bool = False) -> CheckFunc:
    """Add a consistency check, run after those already registered.

    `func(view, result)` reads the bundle through `view` and reports with
    `result.error(...)` / `result.warn(...)`, sets `result.summary`, and raises
    SkipCheck("why") when the check does not apply. A BundleFileError it lets
    escape becomes an error naming the file; any other exception fails the check.
    """
    if name in _CHECKS and not replace:
        raise ValueError(f"a consistency check named {name!r} is already registered")
    _CHECKS[name] = ConsistencyCheck(name, title, func)
    return func


def consistency_check(name: str, title: str) -> Callable[[CheckFunc], CheckFunc]:
    """Decorator form of register_check."""

    def deco(func: CheckFunc) -> CheckFunc:
        return register_check(name, title, func)

    return deco


def registered_checks() -> list[ConsistencyCheck]:
    return list(_CHECKS.values())


def run_checks(view: BundleView, checks: list[ConsistencyCheck] | None = None) -> list[CheckResult]:
    results = []
    for chk in checks if checks is not None else registered_checks():
        res = CheckResult(chk.name, chk.title, limit=view.limits.max_findings)
        try:
            chk.func(view, res)
        except SkipCheck as exc:
            res.status, res.summary = "skip", str(exc)
        except BundleFileError as exc:
            res.error(exc.message, file=exc.rel)
        except Exception as exc:  # a bug or an input nobody foresaw: fail loudly, never pass silently
            res.error(f"the check stopped unexpectedly: {type(exc).__name__}: {exc}")
        res.settle()
        results.append(res)
    return results


# --- the built-in checks -------------------------------------------------------------------


@consistency_check("run", "run status and identity")
def check_run(view: BundleView, out: CheckResult) -> None:
    info = view.json(formats.RUN_JSON)
    f = formats.RUN_JSON
    if not isinstance(info, dict):
        raise BundleFileError(f, "not a JSON object")
    if info.get("schema") != formats.BUNDLE_SCHEMA:
        out.error("unknown schema", file=f, expected=formats.BUNDLE_SCHEMA, actual=repr(info.get("schema")))
    status = info.get("status")
    if status is None:
        out.error("does not state the run's status", file=f)
    elif status not in formats.STATUSES:
        out.error(f"status {status!r} is not one of {', '.join(formats.STATUSES)}", file=f)
    elif status == "running":
        out.error("status is 'running': the run had not finished when this was sealed (seal it with `prov seal`)",
                  file=f)
    exit_status = info.get("exit_status")
    if status == "completed" and exit_status != 0:
        out.error("a completed run must have exit status 0", file=f, expected="0", actual=repr(exit_status))
    if status in ("failed", "interrupted"):
        if not _is_int(exit_status) or exit_status == 0:
            out.warn(f"a {status} run should state a non-zero exit status", file=f, actual=repr(exit_status))
        if not isinstance(info.get("error"), dict):
            out.warn(f"a {status} run should record its error", file=f)
    run_id = info.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        out.error("has no run_id", file=f)
    elif view.subject is not None and view.subject != run_id:
        out.warn(f"the seal names the bundle {view.subject!r} but run.json names the run {run_id!r}",
                 file=formats.MANIFEST)
    datasets = info.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        out.error("'datasets' must be a list of names", file=f)
    else:
        for d in datasets:
            if not view.has(f"{formats.DATA_DIR}/{d}/manifest.json"):
                out.error(f"lists dataset {d!r}, but {formats.DATA_DIR}/{d}/manifest.json is missing", file=f)
    docs = info.get("documents", {})
    if docs is not None and (not isinstance(docs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in docs.items())):
        out.error("'documents' must map names to paths or URLs (strings)", file=f)
    lic = info.get("license")
    if lic is not None and not isinstance(lic, str):
        out.error("'license' must be an SPDX expression (a string)", file=f)
    if info.get("reproduces") is not None and not isinstance(info.get("reproduces"), dict):
        out.error("'reproduces' must be an object or null", file=f)
    last = info.get("last_step")
    steps = view.metric_steps() if view.has(formats.METRICS) else []
    if last is not None and steps is not None:
        if not _is_int(last):
            out.error("'last_step' must be an integer or null", file=f)
        elif steps and steps[-1] != last:
            out.error(f"last_step is {last}, but the last step in {formats.METRICS} is {steps[-1]}", file=f,
                      expected=str(steps[-1]), actual=str(last))
        elif not steps and status == "completed":
            out.warn(f"states last_step {last} but {formats.METRICS} has no steps", file=f)
    out.summary = f"{status}" + (f", exit {exit_status}" if exit_status is not None else "") + (
        f", reproduces {info['reproduces'].get('run_id')}" if isinstance(info.get("reproduces"), dict) else "")


@consistency_check("config", "config digest")
def check_config(view: BundleView, out: CheckResult) -> None:
    f = formats.CONFIG_JSON
    cfg = view.json(f)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("config"), dict):
        raise BundleFileError(f, "has no 'config' object")
    stated = cfg.get("digest")
    actual = formats.config_digest(cfg["config"])
    if stated != actual:
        out.error("the config does not match its digest", file=f, expected=str(stated), actual=actual)
    argv = cfg.get("argv")
    if argv is not None and (not isinstance(argv, list) or not all(isinstance(a, str) for a in argv)):
        out.warn("'argv' is not a list of strings", file=f)
    out.summary = f"digest {actual[:19]}... matches" if stated == actual else "digest differs"


@consistency_check("code", "code snapshot")
def check_code(view: BundleView, out: CheckResult) -> None:
    f = formats.CODE_JSON
    code = view.json(f)
    if not isinstance(code, dict) or not isinstance(code.get("files"), dict):
        raise BundleFileError(f, "has no 'files' map of per-file digests")
    expected: dict[str, str] = {}
    for name, d in code["files"].items():
        try:
            algo, hexd = formats.parse_digest(d) if isinstance(d, str) else ("", "")
        except ValueError:
            algo, hexd = "", ""
        if algo != "sha256" or not _is_hex64(hexd):
            out.error(f"the digest of {name!r} is not 'sha256:<hex>'", file=f, actual=repr(d))
            continue
        expected[name] = hexd
    if not view.has(formats.CODE_SNAPSHOT):
        raise BundleFileError(formats.CODE_SNAPSHOT, "missing")
    if not view.has(formats.CODE_DIFF):
        out.warn("missing (the uncommitted changes are not recorded)", file=formats.CODE_DIFF)
    actual: dict[str, str] = {}
    snap = formats.CODE_SNAPSHOT
    try:
        with tarfile.open(view.path(snap), mode="r:", tarinfo=SafeTarInfo) as tar:  # type: ignore[call-arg]
            for n, m in enumerate(tar, 1):
                if n > view.limits.archive.max_members:
                    out.error(f"more than {view.limits.archive.max_members} members", file=snap)
                    break
                if not m.isfile() or m.issparse():
                    out.error(f"member {m.name!r} is not a regular file (a snapshot holds files only)", file=snap)
                    continue
                if m.name in actual:
                    out.error(f"member {m.name!r} appears twice", file=snap)
                    continue
                src = tar.extractfile(m)
                h = hashlib.sha256()
                while src is not None and (chunk := src.read(1 << 20)):
                    h.update(chunk)
                actual[m.name] = h.hexdigest()
    except Exception as exc:  # tarfile raises ValueError & co. on crafted headers, ArchiveError on hostile ones
        raise BundleFileError(snap, f"not a readable tar ({type(exc).__name__}: {exc})") from None
    for name in sorted(set(expected) - set(actual)):
        out.error(f"{name} is listed in code.json but not in the snapshot", file=snap,
                  expected=_sha(expected[name]), actual=None)
    for name in sorted(set(actual) - set(code["files"])):
        out.error(f"{name} is in the snapshot but not listed in code.json", file=snap, actual=_sha(actual[name]))
    for name in sorted(set(expected) & set(actual)):
        if expected[name] != actual[name]:
            out.error(f"{name} in the snapshot does not match code.json", file=snap,
                      expected=_sha(expected[name]), actual=_sha(actual[name]))
    meta = code.get("snapshot")
    count = meta.get("file_count") if isinstance(meta, dict) else None
    if count is not None and count != len(code["files"]):
        out.error("snapshot.file_count disagrees with the files listed", file=f,
                  expected=str(len(code["files"])), actual=str(count))
    out.summary = f"{len(actual)} files match code.json" if not out.errors else f"{len(actual)} files in the snapshot"


def _dataset_names(view: BundleView) -> list[str]:
    names = {rel.split("/")[1] for rel in view.under(formats.DATA_DIR) if rel.count("/") >= 2}
    return sorted(names)


@consistency_check("data", "data manifests")
def check_data(view: BundleView, out: CheckResult) -> None:
    names = _dataset_names(view)
    if not names:
        raise SkipCheck("no datasets in the bundle")
    n_files = 0
    for name in names:
        base = f"{formats.DATA_DIR}/{name}"
        mrel = f"{base}/manifest.json"
        if not view.has(mrel):
            out.error(f"{base}/ holds files but no manifest.json", file=mrel)
            continue
        try:
            m = view.json(mrel)
        except BundleFileError as exc:
            out.error(exc.message, file=mrel)
            continue
        if not isinstance(m, dict) or m.get("schema") != formats.DATA_MANIFEST_SCHEMA:
            out.error("not a data manifest", file=mrel, expected=formats.DATA_MANIFEST_SCHEMA,
                      actual=repr(m.get("schema") if isinstance(m, dict) else type(m).__name__))
            continue
        if m.get("name") != name:
            out.error(f"names the dataset {m.get('name')!r} but lies in {base}/", file=mrel)
        entries = m.get("files")
        if not isinstance(entries, list):
            out.error("has no 'files' list", file=mrel)
            continue
        listed: dict[str, dict[str, Any]] = {}
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("path"), str) or not _is_hex64(e.get("sha256")) \
                    or not _is_int(e.get("size")):
                out.error(f"files[{i}] needs a path, a size and a hex sha256", file=mrel)
                continue
            try:
                p = safe_relpath(e["path"])
            except BundleError:
                out.error(f"files[{i}] path {e['path']!r} escapes the dataset or is malformed; refused", file=mrel)
                continue
            if p in listed:
                out.error(f"file {p} is listed twice", file=mrel)
            listed[p] = e
        bundled = m.get("bundled_files")
        files_dir = f"{base}/files"
        if bundled is not None:
            if bundled != files_dir:
                out.error(f"bundled_files is {bundled!r}; bundled data lives in {files_dir}", file=mrel)
            for p, e in sorted(listed.items()):
                rel = f"{files_dir}/{p}"
                n_files += 1
                if not view.has(rel):
                    out.error(f"{rel} is listed in the manifest but missing", file=rel,
                              expected=_sha(e["sha256"]))
                    continue
                if view.digest(rel) != e["sha256"]:
                    out.error(f"{rel} does not match its data manifest", file=rel, expected=_sha(e["sha256"]),
                              actual=_sha(view.digest(rel)))
                elif view.size(rel) != e["size"]:
                    out.error(f"{rel} has {view.size(rel)} bytes, its manifest says {e['size']}", file=rel)
            for rel in view.under(files_dir):
                if rel[len(files_dir) + 1:] not in listed:
                    out.error(f"{rel} is not listed in {mrel}", file=rel, actual=_sha(view.digest(rel)))
        else:
            for rel in view.under(base):
                if rel not in (mrel, f"{base}/{formats.CROISSANT_NAME}"):
                    out.warn(f"{rel} lies in the dataset's folder but the manifest bundles no files", file=rel)
        samples = m.get("samples")
        if samples is not None:
            if not isinstance(samples, dict) or not _is_int(samples.get("count")) or samples["count"] < 0:
                out.error("'samples' needs a non-negative integer count", file=mrel)
            elif "layout" in samples:  # documents, token-stream: the count follows from the layout and the files
                from provenance.datasets.layouts import manifest_problem

                problem = manifest_problem(m)
                if problem:
                    out.error(problem, file=mrel)
            else:
                entry = listed.get(str(samples.get("file")))
                if entry is None:
                    out.error(f"samples.file {samples.get('file')!r} is not one of the dataset's files", file=mrel)
                elif _is_int(entry.get("records")) and entry["records"] != samples["count"]:
                    out.error(f"samples.count is {samples['count']} but {samples.get('file')} has "
                              f"{entry['records']} records", file=mrel)
    out.summary = f"{len(names)} datasets, {n_files} bundled files match their manifests"


def _sample_count(view: BundleView, dataset: str) -> int | None:
    m = view.try_json(f"{formats.DATA_DIR}/{dataset}/manifest.json")
    samples = m.get("samples") if isinstance(m, dict) else None
    count = samples.get("count") if isinstance(samples, dict) else None
    return count if _is_int(count) else None


@consistency_check("order", "data order")
def check_order(view: BundleView, out: CheckResult) -> None:
    headers: dict[int, str] = {}
    binaries: set[int] = set()
    for rel in view.under(formats.ORDER_DIR):
        mt = re.fullmatch(rf"{formats.ORDER_DIR}/rank(\d+)\.(json|ids\.u32|steps\.bin)", rel)
        if mt is None:
            out.warn("not a data-order file", file=rel)
            continue
        (headers.__setitem__(int(mt[1]), rel) if mt[2] == "json" else binaries.add(int(mt[1])))
    for r in sorted(binaries - set(headers)):
        out.error(f"rank {r} has order data but no header", file=formats.order_paths(r)[0])
    if not headers:
        steps = view.metric_steps()
        if steps:
            out.warn(f"{formats.METRICS} logs {len(steps)} steps but no data order was recorded")
        raise SkipCheck("no data order recorded")
    summaries = []
    for rank, hrel in sorted(headers.items()):
        try:
            hdr = view.json(hrel)
        except BundleFileError as exc:
            out.error(exc.message, file=hrel)
            continue
        if not isinstance(hdr, dict) or hdr.get("schema") != formats.ORDER_SCHEMA:
            out.error("not a data-order header", file=hrel, expected=formats.ORDER_SCHEMA)
            continue
        if hdr.get("rank") != rank:
            out.error(f"states rank {hdr.get('rank')!r} but is named rank{rank}", file=hrel)
        dataset = hdr.get("dataset")
        n_samples: int | None = None
        if not isinstance(dataset, str) or not dataset:
            out.warn("names no dataset: sample ids cannot be bounded", file=hrel)
        elif not view.has(f"{formats.DATA_DIR}/{dataset}/manifest.json"):
            out.error(f"refers to dataset {dataset!r}, which has no data manifest in the bundle", file=hrel)
        else:
            n_samples = _sample_count(view, dataset)
            if n_samples is None:
                out.warn(f"the manifest of {dataset!r} defines no sample count: ids cannot be bounded", file=hrel)
        sampler = hdr.get("sampler")
        declared = sampler.get("n_samples") if isinstance(sampler, dict) else None
        if n_samples is not None and _is_int(declared) and declared != n_samples:
            out.error(f"the sampler draws from {declared} samples, the manifest of {dataset!r} defines {n_samples}",
                      file=hrel, expected=str(n_samples), actual=str(declared))
        _, ids_rel, steps_rel = formats.order_paths(rank)
        steps = _verify_order_stream(view, out, ids_rel, steps_rel, n_samples, dataset)
        if steps is None:
            continue
        if rank == 0:
            _compare_with_metrics(view, out, steps, steps_rel)
        if steps:
            summaries.append(f"rank {rank}: steps {steps[0]}..{steps[-1]}, chain intact"
                             + (f", ids < {n_samples}" if n_samples is not None else ""))
        else:
            summaries.append(f"rank {rank}: no steps")
    out.summary = "; ".join(summaries)


def _verify_order_stream(view: BundleView, out: CheckResult, ids_rel: str, steps_rel: str,
                         n_samples: int | None, dataset: Any) -> list[int] | None:
    """Stream one rank's order: chain, contiguity, id bounds, exact sizes. Returns its steps."""
    if not view.has(steps_rel) and not view.has(ids_rel):
        return []
    for rel in (ids_rel, steps_rel):
        if not view.has(rel):
            out.error("missing", file=rel)
            return None
    rec_size = formats.ORDER_STEP_RECORD.size
    steps_size, ids_size = view.size(steps_rel), view.size(ids_rel)
    if steps_size % rec_size:
        out.error(f"{steps_size} bytes is not a whole number of {rec_size}-byte step records (torn?)",
                  file=steps_rel)
    steps: list[int] = []
    prev_chain = formats.ORDER_CHAIN_SEED
    chain_ok = True
    bad_ids = 0
    consumed = 0
    with open(view.path(steps_rel), "rb") as fs, open(view.path(ids_rel), "rb") as fi:
        while block := fs.read(rec_size * 4096):
            usable = len(block) - len(block) % rec_size
            for step, n, chain in formats.ORDER_STEP_RECORD.iter_unpack(block[:usable]):
                if steps and step != steps[-1] + 1:
                    out.error(f"step {step} follows step {steps[-1]}: the order's steps must be contiguous",
                              file=steps_rel)
                steps.append(step)
                if 4 * n > ids_size - consumed:
                    out.error(f"step {step} claims {n} sample ids but the file ends first (truncated)",
                              file=ids_rel)
                    return steps
                ids_bytes = fi.read(4 * n)
                consumed += len(ids_bytes)
                if chain_ok:
                    expect = formats.chain_next(prev_chain, step, ids_bytes)
                    if expect != chain:
                        out.error(f"the digest chain breaks at step {step}: this step's batch, or an earlier one, "
                                  "was changed", file=steps_rel, expected=expect.hex(), actual=chain.hex())
                        chain_ok = False
                    prev_chain = chain
                if n_samples is not None and n:
                    ids = array.array("I")
                    ids.frombytes(ids_bytes)
                    if sys.byteorder == "big":  # pragma: no cover
                        ids.byteswap()
                    top = max(ids)
                    if top >= n_samples:
                        bad_ids += 1
                        if bad_ids <= 5:
                            out.error(f"step {step} refers to sample id {top}, but the manifest of {dataset!r} "
                                      f"defines {n_samples} samples (ids 0..{n_samples - 1})", file=ids_rel)
    if bad_ids > 5:
        out.error(f"{bad_ids} steps in all refer to sample ids the manifest does not define", file=ids_rel)
    if consumed != ids_size:
        out.error(f"holds {ids_size - consumed} bytes more than its step records claim", file=ids_rel,
                  expected=str(consumed), actual=str(ids_size))
    return steps


def _compare_with_metrics(view: BundleView, out: CheckResult, steps: list[int], steps_rel: str) -> None:
    metric_steps = view.metric_steps()
    if not metric_steps:
        return
    have = set(steps)
    lacking = [s for s in metric_steps if s not in have]
    if lacking:
        out.error(f"{formats.METRICS} logs {len(lacking)} steps with no recorded batch (first: step {lacking[0]})",
                  file=steps_rel)
    beyond = [s for s in steps if s > metric_steps[-1]]
    if beyond and view.run_info.get("status") == "completed":
        out.warn(f"batches recorded for {len(beyond)} steps after the last logged step {metric_steps[-1]}",
                 file=steps_rel)


@consistency_check("metrics", "metrics and evaluations")
def check_metrics(view: BundleView, out: CheckResult) -> None:
    status = view.run_info.get("status")
    if not view.has(formats.METRICS):
        if status == "completed":
            raise BundleFileError(formats.METRICS, "missing: a completed run logs its steps")
        raise SkipCheck(f"no metrics logged (run {status})")
    records, problems = view.jsonl(formats.METRICS)
    for p in problems:
        out.error(p, file=formats.METRICS)
    steps: list[int] = []
    gaps = 0
    for line, rec in records:
        step = rec.get("step")
        if not _is_int(step):
            out.error(f"line {line}: 'step' must be an integer, got {step!r}", file=formats.METRICS)
            continue
        if steps and step != steps[-1] + 1:
            gaps += 1
            if gaps <= 5:
                what = "repeats" if step <= steps[-1] else "skips ahead from"
                out.error(f"line {line}: step {step} {what} step {steps[-1]}: metric steps must be contiguous",
                          file=formats.METRICS, expected=str(steps[-1] + 1), actual=str(step))
        steps.append(step)
    if gaps > 5:
        out.error(f"{gaps} discontinuities in all", file=formats.METRICS)
    if not steps and status == "completed":
        out.warn("a completed run logged no steps", file=formats.METRICS)
    if view.has(formats.EVALS):
        erecs, eproblems = view.jsonl(formats.EVALS)
        for p in eproblems:
            out.error(p, file=formats.EVALS)
        last = steps[-1] if steps else None
        for line, rec in erecs:
            s = rec.get("step")
            if not _is_int(s):
                out.error(f"line {line}: 'step' must be an integer, got {s!r}", file=formats.EVALS)
            elif last is not None and s > last:
                out.error(f"line {line}: an evaluation at step {s}, after the last logged step {last}",
                          file=formats.EVALS)
    out.summary = f"steps {steps[0]}..{steps[-1]}, contiguous" if steps and not gaps else f"{len(steps)} steps"


def _checkpoint_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata() or {})
    if "fullyopen" in meta:
        inner = _loads(meta["fullyopen"].encode(), path.name)
        return inner if isinstance(inner, dict) else {}
    return meta


@consistency_check("checkpoints", "checkpoint index")
def check_checkpoints(view: BundleView, out: CheckResult) -> None:
    idx_rel = formats.CHECKPOINT_INDEX
    on_disk = [f for f in view.under(formats.CHECKPOINT_DIR) if f != idx_rel]
    if not view.has(idx_rel):
        for rel in on_disk:
            out.error(f"{rel} is not in a checkpoint index ({idx_rel} is missing)", file=rel)
        if not on_disk:
            raise SkipCheck("no checkpoints")
        return
    idx = view.json(idx_rel)
    if not isinstance(idx, dict) or idx.get("schema") != formats.CHECKPOINT_INDEX_SCHEMA or \
            not isinstance(idx.get("checkpoints"), list):
        raise BundleFileError(idx_rel, f"not a checkpoint index ({formats.CHECKPOINT_INDEX_SCHEMA})")
    metric_steps = set(view.metric_steps() or [])
    indexed: set[str] = set()
    seen_steps: set[int] = set()
    for i, e in enumerate(idx["checkpoints"]):
        if not isinstance(e, dict) or not _is_int(e.get("step")) or not isinstance(e.get("path"), str) \
                or not _is_hex64(e.get("sha256")):
            out.error(f"checkpoints[{i}] needs a step, a path and a hex sha256", file=idx_rel)
            continue
        step, rel = e["step"], e["path"]
        try:
            path = view.path(rel, where=idx_rel)
        except BundleFileError as exc:  # missing, or a path that escapes the bundle (never opened)
            out.error(f"the checkpoint of step {step}: {exc.message}", file=idx_rel, expected=_sha(e["sha256"]))
            continue
        indexed.add(rel)
        if step in seen_steps:
            out.error(f"step {step} is indexed twice", file=idx_rel)
        seen_steps.add(step)
        if rel != formats.checkpoint_name(step):
            out.warn(f"the checkpoint of step {step} is named {rel}, not {formats.checkpoint_name(step)}", file=rel)
        if view.digest(rel) != e["sha256"]:
            out.error(f"the checkpoint of step {step} does not match its index", file=rel,
                      expected=_sha(e["sha256"]), actual=_sha(view.digest(rel)))
        if _is_int(e.get("size")) and e["size"] != view.size(rel):
            out.error(f"has {view.size(rel)} bytes, the index says {e['size']}", file=rel)
        if metric_steps and step not in metric_steps:
            out.error(f"checkpoint step {step} does not appear in {formats.METRICS}", file=rel)
        elif not metric_steps:
            out.error(f"checkpoint step {step} cannot be matched: {formats.METRICS} has no steps", file=rel)
        try:
            meta = _checkpoint_meta(path)
        except BundleFileError as exc:
            out.error(f"metadata: {exc.message}", file=rel)
            continue
        except Exception as exc:  # safetensors refuses a malformed header
            out.error(f"cannot be read as safetensors ({exc})", file=rel)
            continue
        mstep = meta.get("step")
        if mstep is not None and str(mstep) != str(step):
            out.error(f"the checkpoint's own metadata says step {mstep}, the index says {step}", file=rel,
                      expected=str(step), actual=str(mstep))
    for rel in on_disk:
        if rel not in indexed:
            out.error(f"{rel} is not in the checkpoint index", file=rel, actual=_sha(view.digest(rel)))
    out.summary = f"{len(indexed)} checkpoints, digests and steps agree" if not out.errors \
        else f"{len(indexed)} checkpoints indexed"


# parameter count implied by a model config: model_type -> f(config, stored names) -> (expected, ignored names)
ParamFormula = Callable[[dict[str, Any], dict[str, list[int]]], tuple[int, set[str], list[str]]]
PARAMETER_FORMULAS: dict[str, ParamFormula] = {}


def _positive(cfg: dict[str, Any], key: str) -> int:
    v = cfg.get(key)
    if not _is_int(v) or v <= 0:
        raise BundleFileError(f"{formats.MODEL_DIR}/config.json", f"{key} must be a positive integer, got {v!r}")
    return v


def _gpt2_parameters(cfg: dict[str, Any], shapes: dict[str, list[int]]) -> tuple[int, set[str], list[str]]:
    """GPT-2 (transformers' GPT2LMHeadModel / GPT2Model) as save_pretrained stores it."""
    v, p, e, n_layer = (_positive(cfg, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer"))
    inner = cfg.get("n_inner") if _is_int(cfg.get("n_inner")) and cfg["n_inner"] > 0 else 4 * e
    per_layer = (2 * e  # ln_1
                 + e * 3 * e + 3 * e  # attn.c_attn
                 + e * e + e  # attn.c_proj
                 + 2 * e  # ln_2
                 + e * inner + inner  # mlp.c_fc
                 + inner * e + e)  # mlp.c_proj
    if cfg.get("add_cross_attention"):
        per_layer += (e * e + e) + (e * 2 * e + 2 * e) + (e * e + e) + 2 * e
    total = v * e + p * e + n_layer * per_layer + 2 * e  # wte, wpe, blocks, ln_f
    ignored: set[str] = set()
    notes: list[str] = []
    # causal-mask buffers older transformers versions saved: not parameters
    for name in shapes:
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            ignored.add(name)
    if ignored:
        notes.append(f"{len(ignored)} attention-mask buffers are not counted")
    head = next((n for n in shapes if n == "lm_head.weight" or n.endswith(".lm_head.weight")), None)
    tied = cfg.get("tie_word_embeddings", True) is not False
    if tied:
        if head is not None:
            ignored.add(head)
            notes.append("lm_head.weight is stored although tied to the embeddings: not counted twice")
    else:
        total += v * e
    return total, ignored, notes


PARAMETER_FORMULAS["gpt2"] = _gpt2_parameters

# run config (config.json "config.model") keys -> model/config.json keys, per model type
_RUN_CONFIG_KEYS = {"gpt2": {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd",
                             "block_size": "n_positions", "vocab_size": "vocab_size"}}


@consistency_check("model", "final model")
def check_model(view: BundleView, out: CheckResult) -> None:
    mdir = formats.MODEL_DIR
    files = view.under(mdir)
    status = view.run_info.get("status")
    if not files:
        if status == "completed":
            raise BundleFileError(f"{mdir}/", "missing: a completed run saves its final model")
        raise SkipCheck(f"no final model (run {status})")
    cfg_rel = f"{mdir}/config.json"
    cfg = view.json(cfg_rel)
    if not isinstance(cfg, dict):
        raise BundleFileError(cfg_rel, "not a JSON object")
    index_rel = f"{mdir}/model.safetensors.index.json"
    if view.has(index_rel):
        idx = view.json(index_rel)
        wmap = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wmap, dict) or not wmap:
            raise BundleFileError(index_rel, "has no weight_map")
        shards = sorted({f"{mdir}/{s}" for s in wmap.values() if isinstance(s, str)})
    elif view.has(f"{mdir}/model.safetensors"):
        shards = [f"{mdir}/model.safetensors"]
    else:
        pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
        raise BundleFileError(f"{mdir}/model.safetensors", "missing" + (
            f"; {', '.join(pickles)} is pickle-based and is never loaded by an audit" if pickles else ""))
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for shard in shards:
        path = view.path(shard, where=index_rel if len(shards) > 1 else shard)
        try:
            with safe_open(str(path), framework="numpy") as f:
                for k in f.keys():
                    if k in shapes:
                        out.error(f"tensor {k!r} is stored twice", file=shard)
                    shapes[k] = list(f.get_slice(k).get_shape())
        except Exception as exc:  # SafetensorError: header or offsets malformed
            out.error(f"cannot be read as safetensors ({exc})", file=shard)
            return
    count = 0
    mtype = cfg.get("model_type")
    formula = PARAMETER_FORMULAS.get(mtype) if isinstance(mtype, str) else None
    ignored: set[str] = set()
    notes: list[str] = []
    expected: int | None = None
    if formula is not None:
        expected, ignored, notes = formula(cfg, shapes)
    for k, shape in shapes.items():
        if k in ignored:
            continue
        n = 1
        for d in shape:
            n *= d
        count += n
    if expected is None:
        out.warn(f"no parameter formula for model_type {mtype!r}: counted {count:,} parameters, not compared",
                 file=cfg_rel)
    elif count != expected:
        out.error(f"the weights hold {count:,} parameters; the config ({mtype}) implies {expected:,}",
                  file=shards[0], expected=str(expected), actual=str(count))
    run_cfg = view.try_json(formats.CONFIG_JSON)
    model_section = (run_cfg.get("config") or {}).get("model") if isinstance(run_cfg, dict) else None
    if isinstance(model_section, dict) and isinstance(mtype, str):
        for rk, mk in _RUN_CONFIG_KEYS.get(mtype, {}).items():
            if rk in model_section and mk in cfg and model_section[rk] != cfg[mk]:
                out.error(f"config.json model.{rk} is {model_section[rk]!r} but {cfg_rel} {mk} is {cfg[mk]!r}",
                          file=cfg_rel, expected=repr(model_section[rk]), actual=repr(cfg[mk]))
    out.summary = f"{count:,} parameters in {len(shapes) - len(ignored)} tensors" + (
        f"; the {mtype} config implies {expected:,}" if expected is not None else "") + (
        f" ({'; '.join(notes)})" if notes else "")


@consistency_check("notes", "decision notes")
def check_notes(view: BundleView, out: CheckResult) -> None:
    f = formats.NOTES
    if not view.has(f):
        out.summary = "no notes"
        return
    records, problems = view.jsonl(f)
    for p in problems:
        out.error(p, file=f)
    for line, rec in records:
        bad = []
        if rec.get("schema") != formats.NOTE_SCHEMA:
            bad.append(f"schema is not {formats.NOTE_SCHEMA}")
        if not isinstance(rec.get("text"), str) or not rec["text"].strip():
            bad.append("no text")
        if rec.get("category") not in formats.NOTE_CATEGORIES:
            bad.append(f"category {rec.get('category')!r} is not one of {', '.join(formats.NOTE_CATEGORIES)}")
        if not isinstance(rec.get("time"), str):
            bad.append("no time")
        if not isinstance(rec.get("author"), str):
            bad.append("no author")
        links = rec.get("links", [])
        if not isinstance(links, list) or not all(isinstance(x, str) for x in links):
            bad.append("links must be a list of strings")
        step = rec.get("step")
        if step is not None and (not _is_int(step) or step < 0):
            bad.append(f"step must be a non-negative integer or null, got {step!r}")
        if bad:
            out.error(f"line {line}: {'; '.join(bad)}", file=f)
    out.summary = f"{len(records)} notes" + (", well formed" if not out.errors else "")


@consistency_check("logs", "event and output logs")
def check_logs(view: BundleView, out: CheckResult) -> None:
    logs = [f for f in view.under("logs") if f.endswith(".jsonl") and f not in (formats.METRICS, formats.EVALS)]
    if not logs:
        out.warn(f"no event log ({formats.EVENTS})", file=formats.EVENTS)
    n = 0
    for rel in logs:
        records, problems = view.jsonl(rel)
        for p in problems:
            out.error(p, file=rel)
        if rel.startswith(formats.EVENTS.rsplit(".", 1)[0]):
            for line, rec in records:
                if not isinstance(rec.get("event"), str) or not isinstance(rec.get("time"), str):
                    out.error(f"line {line}: an event needs 'event' and 'time' strings", file=rel)
        n += len(records)
    out.summary = f"{n} records in {len(logs)} logs"


# --- integrity ----------------------------------------------------------------------------


def scan_folder(root: Path, limits: ReadLimits = DEFAULT_LIMITS) -> dict[str, int]:
    """Every regular file under root -> its size. Refuses links, devices, FIFOs and sockets."""
    return _scan_folder(root, limits.max_files)


def _load_manifest(root: Path, sizes: dict[str, int], limits: AuditLimits) -> tuple[str, dict[str, str], str | None]:
    """(root hex, {name: hex}, subject name) of manifest.json; AuditRefused when it is hostile."""
    m = formats.MANIFEST
    if sizes[m] > limits.max_json_bytes:
        raise AuditRefused(f"{m}: {sizes[m]} bytes is larger than the {limits.max_json_bytes}-byte limit; refused")
    with open(root / m, "rb") as f:
        data = f.read(limits.max_json_bytes + 1)
    if len(data) > limits.max_json_bytes:
        raise AuditRefused(f"{m}: larger than the {limits.max_json_bytes}-byte limit; refused")
    try:
        obj = _loads(data, m)
        root_hex, resources = formats.parse_oms_statement(obj)
    except BundleFileError as exc:
        raise AuditRefused(f"{m}: {exc.message}") from None
    except formats.FormatError as exc:
        raise AuditRefused(f"{exc}; refused") from None
    if not _is_hex64(root_hex):
        raise AuditRefused(f"{m}: the subject digest is not a hex sha256; refused")
    for name, d in resources.items():
        try:
            clean = safe_relpath(name)
        except BundleError:
            raise AuditRefused(f"{m}: resource {name!r} escapes the bundle or is malformed; refused") from None
        if clean != name:
            raise AuditRefused(f"{m}: resource {name!r} is not in normal form; refused")
        if not _is_hex64(d):
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
        if any(formats.is_temp_name(p) for p in rel.split("/")):
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
                                    "lists", formats.MANIFEST, _sha(root_hex), _sha(res.root_recomputed)))
    return res


# --- the report ---------------------------------------------------------------------------


@dataclass
class AuditReport:
    target: str
    kind: str  # folder | archive
    integrity: IntegrityResult
    checks: list[CheckResult]
    openness: OpennessReport
    run: dict[str, Any]
    archive_sha256: str | None = None
    seconds: float = 0.0

    @property
    def consistency_ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.integrity.ok and self.consistency_ok and self.openness.requirement_met is not False

    @property
    def exit_status(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def failures(self) -> list[str]:
        """One line per reason the audit fails, each naming the file."""
        out = []
        i = self.integrity
        out += [f"missing: {d.name} (expected sha256:{d.expected})" for d in i.missing]
        out += [f"not covered by the manifest: {d.name} (sha256:{d.actual})" for d in i.extra]
        out += [f"changed: {d.name} (expected sha256:{d.expected}, found sha256:{d.actual})" for d in i.changed]
        out += [f"{f.file}: {f.message}" for f in i.findings if f.level == "error"]
        for c in self.checks:
            out += [f"{c.name}: {(f.file + ': ') if f.file else ''}{f.message}" for f in c.errors]
        if self.openness.requirement_met is False:
            out.append(f"openness: MOF class {self.openness.required_class} required, "
                       f"{self.openness.highest_class or 'no class'} met")
        return out

    def to_dict(self) -> dict[str, Any]:
        from provenance import __version__

        return {
            "schema": AUDIT_SCHEMA,
            "tool": {"name": "fullyopen", "version": __version__},
            "target": {"path": self.target, "kind": self.kind, "archive_sha256": _sha(self.archive_sha256)},
            "run": self.run,
            "ok": self.ok,
            "verdict": "pass" if self.ok else "fail",
            "exit_status": self.exit_status,
            "seconds": round(self.seconds, 4),
            "integrity": self.integrity.to_dict(),
            "consistency": {"ok": self.consistency_ok, "checks": [c.to_dict() for c in self.checks]},
            "openness": self.openness.to_dict(),
            "failures": self.failures(),
        }

    def to_json(self) -> str:
        return _printable(json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False) + "\n")

    def to_text(self, max_findings: int = 20) -> str:
        return render_text(self, max_findings)


def _printable(text: str) -> str:
    """Text that encodes as UTF-8: a lone surrogate read from a hostile bundle becomes a \\u escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def refusal_to_dict(target: str, message: str) -> dict[str, Any]:
    """The --json document of an audit that refused its input."""
    from provenance import __version__

    return {"schema": AUDIT_SCHEMA, "tool": {"name": "fullyopen", "version": __version__},
            "target": {"path": target, "kind": None, "archive_sha256": None}, "ok": False, "verdict": "refused",
            "exit_status": EXIT_REFUSED, "refused": {"message": message}, "failures": [f"refused: {message}"]}


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def render_text(r: AuditReport, max_findings: int = 20) -> str:
    lines: list[str] = []
    add = lines.append
    i = r.integrity
    add(f"prov audit: {r.target} ({r.kind})")
    run = r.run
    add(f"run: {run.get('run_id') or '?'}  name {run.get('name') or '?'}  status {run.get('status') or '?'}"
        + (f"  license {run.get('license')}" if run.get("license") else ""))
    if r.archive_sha256:
        add(f"archive: sha256:{r.archive_sha256}")
    add("")
    rate = f", {_human(i.bytes / i.seconds)}/s" if i.seconds > 0.05 else ""
    add(f"INTEGRITY    {'PASS' if i.ok else 'FAIL'}  {i.files} files, {_human(i.bytes)} hashed in {i.seconds:.2f} s "
        f"({i.workers} threads{rate})")
    if i.root_manifest:
        same = i.root_manifest == i.root_recomputed == i.root_actual
        add(f"  root digest  sha256:{i.root_manifest}  " + ("matches the files" if same else "DOES NOT MATCH"))
        if not same:
            add(f"    recomputed from the manifest  sha256:{i.root_recomputed}")
            add(f"    computed from the files       sha256:{i.root_actual}")
    rows = ([("missing", d.name, f"expected sha256:{d.expected}") for d in i.missing]
            + [("extra", d.name, f"not covered by the manifest; sha256:{d.actual}") for d in i.extra]
            + [("changed", d.name, f"expected sha256:{d.expected}  found sha256:{d.actual}") for d in i.changed]
            + [("error" if f.level == "error" else "warning", f.file or "", f.message) for f in i.findings])
    for kind, name, msg in rows[:max_findings]:
        add(f"  {kind:<8} {name}  {msg}")
    if len(rows) > max_findings:
        add(f"  ... and {len(rows) - max_findings} more (see --json)")
    add("")
    add(f"CONSISTENCY  {'PASS' if r.consistency_ok else 'FAIL'}")
    width = max((len(c.name) for c in r.checks), default=8)
    for c in r.checks:
        add(f"  {c.name:<{width}}  {_MARK.get(c.status, c.status)}  {c.summary}")
        for f in c.findings[:max_findings]:
            mark = "x" if f.level == "error" else "!"
            extra = ""
            if f.expected is not None or f.actual is not None:
                extra = f"  (expected {f.expected}, found {f.actual})"
            add(f"  {'':<{width}}    {mark} {(f.file + ': ') if f.file else ''}{f.message}{extra}")
        more = len(c.findings) - max_findings + c.dropped
        if more > 0:
            add(f"  {'':<{width}}    ... and {more} more (see --json)")
    add("")
    o = r.openness
    add(f"OPENNESS     Model Openness Framework {o.to_dict()['framework']['version']}: "
        f"highest class met: {_class_label(o.highest_class)}")
    add(f"  {'class':<5}  {'component':<32}  {'status':<8}  {'license':<14}  satisfied by / note")
    for c in o.components:
        status = "found" if c.found else "missing"
        if c.found and not c.met and c.license_open is False:
            status = "found*"
        cls = c.mof_class + ("?" if c.optional else "")
        where = ", ".join(c.files + c.links) if c.found else c.note
        if c.found and c.note:
            where = f"{where}  ({c.note})" if where else c.note
        add(f"  {cls:<5}  {c.name:<32}  {status:<8}  {(c.license or '-'):<14}  {where}")
    add("  (? optional; found* a license that is not open, so it does not count)")
    for cls in ("III", "II", "I"):
        miss = o.class_missing(cls)
        add(f"  Class {cls:<3} {CLASS_NAMES[cls]:<13} " + ("met" if not miss else f"missing: {', '.join(miss)}"))
    fo = "  ".join(f"{it.name} {'yes' if it.found else 'NO'}" for it in o.fully_open)
    add(f"  Fully open: {'yes' if o.fully_open_ok else 'no'}  ({fo})")
    add("")
    if r.ok:
        verdict = "PASS  integrity and consistency hold"
    else:
        verdict = "FAIL  " + "; ".join(
            p for p in (("integrity" if not i.ok else ""), ("consistency" if not r.consistency_ok else ""),
                        (f"MOF class {o.required_class} required" if o.requirement_met is False else "")) if p)
    add(f"VERDICT      {verdict}; MOF class {_class_label(o.highest_class)}"
        + (f" (required: {o.required_class})" if o.required_class else "")
        + f"; fully open: {'yes' if o.fully_open_ok else 'no'}")
    return _printable("\n".join(lines) + "\n")


def _class_label(cls: str | None) -> str:
    return f"{cls} ({CLASS_NAMES[cls]})" if cls else "none"


# --- entry point ---------------------------------------------------------------------------


def audit(path: str | os.PathLike[str], require_class: str | None = None, progress: Progress | None = None, *,
          limits: AuditLimits = DEFAULT_LIMITS, tmp_dir: str | os.PathLike[str] | None = None,
          workers: int | None = None) -> AuditReport:
    """Audit a run folder or a release archive (.tar / .tar.gz).

    Raises AuditRefused (naming what it refused) for hostile or unusable input; otherwise
    returns the report, whose `.ok` is the verdict. An archive is unpacked into a temporary
    folder (under tmp_dir) that is removed before this returns.
    """
    if require_class is not None and require_class not in CLASSES:
        raise ValueError(f"require_class must be one of I, II, III, got {require_class!r}")
    t0 = time.perf_counter()
    p = Path(path)
    target = str(path)
    if p.is_dir():
        report = _audit_folder(p, target, "folder", None, None, require_class, progress, limits, workers)
    elif p.is_file():
        kind = detect_archive(p)
        if kind is None:
            raise AuditRefused(f"{path}: not a run folder or a release archive (.tar, .tar.gz)")
        try:
            with unpacked(p, limits.archive, tmp_dir, _bytes_progress(progress, "unpacking", p.stat().st_size)) as u:
                if progress is not None:
                    progress.finish()
                report = _audit_folder(u.root, target, "archive", u.digests, u.archive_sha256, require_class,
                                       progress, limits, workers)
        except ArchiveError as exc:
            raise AuditRefused(str(exc)) from None
        finally:
            if progress is not None:
                progress.finish()
    elif p.exists() or p.is_symlink():
        raise AuditRefused(f"{path}: not a folder or a regular file; refused")
    else:
        raise AuditRefused(f"{path}: no such file or folder")
    report.seconds = time.perf_counter() - t0
    return report


def _bytes_progress(progress: Progress | None, label: str, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    progress.start(label, total)
    return progress.advance


def _audit_folder(root: Path, target: str, kind: str, known: dict[str, str] | None, archive_sha: str | None,
                  require_class: str | None, progress: Progress | None, limits: AuditLimits,
                  workers: int | None) -> AuditReport:
    sizes = scan_folder(root, limits)
    if formats.RUN_JSON not in sizes and formats.MANIFEST not in sizes:
        raise AuditRefused(f"{target}: not a run bundle (neither {formats.RUN_JSON} nor {formats.MANIFEST} is there)")
    manifest = _load_manifest(root, sizes, limits) if formats.MANIFEST in sizes else None
    integrity = check_integrity(root, sizes, manifest, known, progress, workers)
    view = BundleView(root, sizes, integrity.digests, manifest[1] if manifest else None,
                      manifest[2] if manifest else None, limits)
    checks = run_checks(view)
    openness = assess(view, require_class)
    info = view.run_info
    run = {k: info.get(k) for k in ("run_id", "name", "status", "exit_status", "license")}
    run["reproduces"] = info.get("reproduces") if isinstance(info.get("reproduces"), dict) else None
    return AuditReport(target=target, kind=kind, integrity=integrity, checks=checks, openness=openness, run=run,
                       archive_sha256=archive_sha)

