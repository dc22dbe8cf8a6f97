"""The audit's terminal report. Every line is escaped: nothing a bundle names reaches the terminal
with a control character (a resource named "x\\nINTEGRITY    PASS" cannot forge a line)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from provenance.openness import CLASS_NAMES, CLASSES
from provenance.untrusted import escape

if TYPE_CHECKING:
    from provenance.audit.report import AuditReport


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
    if run.get("command"):  # what `prov reproduce` re-runs (its interpreter, the recorded config in its place)
        add(f"command: {shlex.join(run['command'])}  (recorded; `prov reproduce` runs it, executing the bundle's "
            "code)")
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
    below = "" if o.highest_class else f" (class {CLASSES[0]} lacks {', '.join(o.class_missing(CLASSES[0]))})"
    add(f"VERDICT      {verdict}; MOF class {_class_label(o.highest_class)}{below}"
        + (f" (required: {o.required_class})" if o.required_class else "")
        + f"; fully open: {'yes' if o.fully_open_ok else 'no'}")
    return "\n".join(escape(line) for line in lines) + "\n"


def _class_label(cls: str | None) -> str:
    return f"{cls} ({CLASS_NAMES[cls]})" if cls else "none"
